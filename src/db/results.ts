/**
 * The rows of a raw `execute` result: node-postgres answers `{rows}`, PGlite through Drizzle an
 * array or `{rows}` depending on the statement.
 */
export function resultRows<T>(result: unknown): T[] {
  return (Array.isArray(result) ? result : ((result as { rows?: unknown[] } | null)?.rows ?? [])) as T[]
}

/** The SQLSTATE of a failed statement, whichever driver raised it and whether Drizzle wrapped it. */
export function sqlStateOf(error: unknown): string | undefined {
  const value = error as { code?: unknown; cause?: { code?: unknown } } | null
  const code = typeof value?.code === 'string' ? value.code : value?.cause?.code
  return typeof code === 'string' ? code : undefined
}

/** unique_violation */
export const isUniqueViolation = (error: unknown) => sqlStateOf(error) === '23505'

/** foreign_key_violation: the referenced row is gone. */
export const isForeignKeyViolation = (error: unknown) => sqlStateOf(error) === '23503'
