import { createHash, timingSafeEqual } from 'node:crypto'

/** The delivery is not signed by the provider (missing, wrong, stale or malformed signature). */
export class SignatureError extends Error {}

/** Signed correctly, but not an event this server can store (no id or type, not JSON). */
export class EventShapeError extends Error {}

/**
 * Secrets from a configuration value: the current one, then during a rotation the previous one
 * ("new,previous"), so deliveries signed with either verify while the provider switches over.
 */
export function secretList(value: string | undefined): string[] {
  return (value ?? '')
    .split(',')
    .map((secret) => secret.trim())
    .filter((secret) => secret !== '')
}

/**
 * Constant-time string comparison. Both sides are hashed first, so neither the content nor the
 * length of the expected value leaks through timing.
 */
export function safeEqual(received: string, expected: string): boolean {
  const digest = (value: string) => createHash('sha256').update(value, 'utf8').digest()
  return timingSafeEqual(digest(received), digest(expected))
}

/** A stable id for a delivery that carries none of its own: the hash of what was signed. */
export function contentId(...parts: (string | Buffer)[]): string {
  const hash = createHash('sha256')
  for (const part of parts) hash.update(part)
  return `sha256:${hash.digest('hex')}`
}
