import { type SQL, sql } from 'drizzle-orm'

/**
 * A statement written for the `pg` driver (`$1`, `$2` placeholders) as a Drizzle SQL object, so a
 * library that brings its own SQL (the job queue) can run inside a Drizzle transaction. A
 * placeholder used twice becomes two parameters of the same value.
 */
export function sqlWithParams(text: string, values: readonly unknown[]): SQL {
  const chunks: SQL[] = []
  let last = 0
  for (const match of text.matchAll(/\$(\d+)/g)) {
    const index = Number(match[1]) - 1
    if (index < 0 || index >= values.length) throw new Error(`statement refers to missing parameter $${index + 1}`)
    // `pg` sends undefined as NULL; Drizzle would drop an undefined chunk altogether.
    chunks.push(sql.raw(text.slice(last, match.index)), sql`${values[index] ?? null}`)
    last = match.index + match[0].length
  }
  chunks.push(sql.raw(text.slice(last)))
  return sql.join(chunks)
}
