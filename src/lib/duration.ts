const UNIT_MS = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 } as const

/** One duration as configured: a number with a unit (`250ms`, `5s`, `30m`, `2h`, `5d`); bare numbers are seconds. */
export const DURATION_PATTERN = '^\\s*\\d+(\\.\\d+)?(ms|s|m|h|d)?\\s*$'
/** A comma-separated list of durations. */
export const DURATION_LIST_PATTERN = '^\\s*\\d+(\\.\\d+)?(ms|s|m|h|d)?\\s*(,\\s*\\d+(\\.\\d+)?(ms|s|m|h|d)?\\s*)*$'

/** Milliseconds of a duration matching DURATION_PATTERN. */
export function durationMs(text: string): number {
  const match = /^\s*(\d+(?:\.\d+)?)(ms|s|m|h|d)?\s*$/.exec(text)
  if (!match) throw new Error(`not a duration: ${text}`)
  const [, amount, unit] = match
  return Math.round(Number(amount) * UNIT_MS[(unit ?? 's') as keyof typeof UNIT_MS])
}

export function durationListMs(text: string): number[] {
  return text.split(',').map(durationMs)
}
