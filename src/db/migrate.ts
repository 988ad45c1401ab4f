import { fileURLToPath } from 'node:url'
import type { PGlite } from '@electric-sql/pglite'
import { sql } from 'drizzle-orm'
import { readMigrationFiles } from 'drizzle-orm/migrator'
import { drizzle as drizzleNodePostgres } from 'drizzle-orm/node-postgres'
import { migrate as migrateNodePostgres } from 'drizzle-orm/node-postgres/migrator'
import { drizzle as drizzlePglite } from 'drizzle-orm/pglite'
import { migrate as migratePglite } from 'drizzle-orm/pglite/migrator'
import type pg from 'pg'
import type { DatabaseHandle } from './client.js'

// Resolves to <root>/migrations from both src/db (tsx) and dist/db (compiled).
export const MIGRATIONS_FOLDER = fileURLToPath(new URL('../../migrations', import.meta.url))

// Any constant works; it only has to be the same for every Backplane process on one database.
const MIGRATION_LOCK_ID = 7_243_911_001

export class MigrationError extends Error {
  override name = 'MigrationError'
}

/**
 * Applies pending migrations. On PostgreSQL an advisory lock serialises instances that start at
 * the same time with MIGRATE_ON_START, so only one of them applies each migration.
 */
export async function runMigrations(handle: DatabaseHandle): Promise<void> {
  try {
    if (handle.engine === 'pglite') {
      await migratePglite(drizzlePglite({ client: handle.client as PGlite }), { migrationsFolder: MIGRATIONS_FOLDER })
      return
    }
    const connection = await (handle.client as pg.Pool).connect()
    try {
      await connection.query('select pg_advisory_lock($1)', [MIGRATION_LOCK_ID])
      await migrateNodePostgres(drizzleNodePostgres({ client: connection }), { migrationsFolder: MIGRATIONS_FOLDER })
    } finally {
      await connection.query('select pg_advisory_unlock($1)', [MIGRATION_LOCK_ID]).catch(() => {})
      connection.release()
    }
  } catch (error) {
    throw explainMigrationFailure(error)
  }
}

/**
 * How many of this release's migrations the database lacks. Drizzle applies every migration newer
 * than the last one recorded, so that is what counts as pending.
 */
export async function pendingMigrations(handle: DatabaseHandle): Promise<number> {
  const migrations = readMigrationFiles({ migrationsFolder: MIGRATIONS_FOLDER })
  const rows = async (query: ReturnType<typeof sql>) =>
    ((await handle.db.execute(query)) as unknown as { rows: Record<string, unknown>[] }).rows
  const [journal] = await rows(sql`select to_regclass('drizzle.__drizzle_migrations') is not null as present`)
  if (!journal?.present) return migrations.length
  const [last] = await rows(sql`select max(created_at)::text as applied from drizzle.__drizzle_migrations`)
  const applied = last?.applied == null ? Number.NEGATIVE_INFINITY : Number(last.applied)
  return migrations.filter((migration) => migration.folderMillis > applied).length
}

function explainMigrationFailure(error: unknown): Error {
  const text = String((error as { cause?: unknown })?.cause ?? error)
  if (/extension "vector"|vector\.control/.test(text)) {
    return new MigrationError(
      'PostgreSQL lacks the pgvector extension: install it on the server (package postgresql-<version>-pgvector or build pgvector) and retry',
      { cause: error },
    )
  }
  return new MigrationError(`Applying migrations failed: ${error instanceof Error ? error.message : text}`, {
    cause: error,
  })
}
