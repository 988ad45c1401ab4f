import { and, eq, isNotNull } from 'drizzle-orm'
import type { PgColumn, PgTable } from 'drizzle-orm/pg-core'
import type { CryptoBox } from '../lib/crypto-box.js'
import type { Executor } from './client.js'

/** A column of values sealed with the instance key, one per row, bound to their row by `aad`. */
export interface SealedColumn {
  name: string
  table: PgTable
  id: PgColumn
  column: PgColumn
  /** The column's property name in the Drizzle table (what `set` takes). */
  key: string
  aad(id: string): string
}

/**
 * Re-seals a column's values under the box's current key. Each row is replaced only if it still
 * holds the value read, so a value written meanwhile (already under the current key) wins.
 * Returns how many values were re-sealed.
 */
export async function resealColumn(db: Executor, cryptoBox: CryptoBox, spec: SealedColumn): Promise<number> {
  const rows = (await db
    .select({ id: spec.id, sealed: spec.column })
    .from(spec.table)
    .where(isNotNull(spec.column))) as { id: string; sealed: string }[]
  let resealed = 0
  for (const row of rows) {
    if (row.sealed.split('.')[1] === cryptoBox.currentKeyId) continue
    const aad = spec.aad(row.id)
    const value = cryptoBox.seal(cryptoBox.open(row.sealed, aad), aad)
    await db
      .update(spec.table)
      .set({ [spec.key]: value } as never)
      .where(and(eq(spec.id, row.id), eq(spec.column, row.sealed)))
    resealed++
  }
  return resealed
}
