import { mkdirSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { PGlite } from '@electric-sql/pglite'
import { vector } from '@electric-sql/pglite-pgvector'
import { sql } from 'drizzle-orm'
import { drizzle as drizzleNodePostgres } from 'drizzle-orm/node-postgres'
import type { PgDatabase, PgQueryResultHKT } from 'drizzle-orm/pg-core'
import { drizzle as drizzlePglite } from 'drizzle-orm/pglite'
import pg from 'pg'
import type { Config } from '../config.js'
import * as schema from './schema/index.js'

export type Schema = typeof schema
/** The Drizzle handle repositories use; identical API on both engines. */
export type Database = PgDatabase<PgQueryResultHKT, Schema>
/** What a repository accepts: the database or an open transaction on it. */
export type Executor = Pick<Database, 'select' | 'insert' | 'update' | 'delete' | 'execute' | 'transaction'>

export type Engine = 'pglite' | 'postgres'

export interface DatabaseHandle {
  readonly db: Database
  readonly engine: Engine
  /** Round-trips one trivial query; rejects on failure or after `timeoutMs`. */
  ping(timeoutMs?: number): Promise<void>
  close(): Promise<void>
  /** Engine-specific client, for libraries that need one (the migrator, the job queue). */
  readonly client: PGlite | pg.Pool
}

type DatabaseConfig = Pick<Config, 'DATABASE_URL' | 'DATA_DIR' | 'DATABASE_POOL_MAX'>

export interface OpenDatabaseOptions {
  /** Receives errors of idle pooled connections, which would otherwise crash the process. */
  onPoolError?: (error: Error) => void
  /** Start PGlite from a dumped data directory (used to clone a migrated template quickly). */
  pgliteDataDirArchive?: Blob | File
}

export async function openDatabase(config: DatabaseConfig, options: OpenDatabaseOptions = {}): Promise<DatabaseHandle> {
  if (config.DATABASE_URL?.startsWith('postgres')) return openPostgres(config.DATABASE_URL, config, options)
  const dataDir = config.DATABASE_URL === 'memory://' ? undefined : resolve(join(config.DATA_DIR, 'pglite'))
  return openPglite(dataDir, options)
}

export async function openPglite(dataDir: string | undefined, options: OpenDatabaseOptions = {}) {
  if (dataDir) mkdirSync(dataDir, { recursive: true })
  const client = await PGlite.create({
    ...(dataDir ? { dataDir } : {}),
    ...(options.pgliteDataDirArchive ? { loadDataDir: options.pgliteDataDirArchive } : {}),
    extensions: { vector },
    // Without relaxed durability every commit is flushed to disk before it is acknowledged.
    relaxedDurability: false,
  })
  const db = drizzlePglite({ client, schema, casing: 'snake_case' }) as unknown as Database
  let closed = false
  return {
    db,
    engine: 'pglite' as const,
    client,
    async ping(timeoutMs = 2000) {
      await withTimeout(client.query('select 1'), timeoutMs)
    },
    async close() {
      if (closed) return
      closed = true
      await client.close()
    },
  } satisfies DatabaseHandle
}

function openPostgres(url: string, config: DatabaseConfig, options: OpenDatabaseOptions): DatabaseHandle {
  const pool = new pg.Pool({
    connectionString: url,
    max: config.DATABASE_POOL_MAX,
    connectionTimeoutMillis: 5000,
    idleTimeoutMillis: 30_000,
    // A transaction left open by a crashed request must not hold locks forever.
    idle_in_transaction_session_timeout: 60_000,
    application_name: 'backplane',
  })
  // pg emits 'error' for idle clients whose server went away; unhandled, that kills the process.
  pool.on('error', (error) => options.onPoolError?.(error))
  const db = drizzleNodePostgres({ client: pool, schema, casing: 'snake_case' }) as unknown as Database
  let closed = false
  return {
    db,
    engine: 'postgres',
    client: pool,
    async ping(timeoutMs = 2000) {
      await withTimeout(db.execute(sql`select 1`), timeoutMs)
    },
    async close() {
      if (closed) return
      closed = true
      await pool.end()
    },
  }
}

function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms`)), ms)
  })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}
