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
  /**
   * Receives NOTIFY payloads of a channel until the returned function is called. `onListening`
   * reports false whenever notifications may have been missed (the listening connection broke;
   * it is re-established in the background) and true once they flow again.
   */
  listen(channel: string, handlers: NotificationHandlers): Promise<() => Promise<void>>
  /** Engine-specific client, for libraries that need one (the migrator, the job queue). */
  readonly client: PGlite | pg.Pool
}

export interface NotificationHandlers {
  onMessage(payload: string): void
  onListening(listening: boolean): void
}

const CHANNEL_NAME = /^[a-z_][a-z0-9_]*$/

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
    async listen(channel: string, handlers: NotificationHandlers) {
      // One in-process connection: a commit's notifications arrive before its query returns.
      const unlisten = await client.listen(channel, handlers.onMessage)
      handlers.onListening(true)
      return async () => {
        if (!closed) await unlisten()
      }
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
  // The pool listens to its clients only while they are idle. A client held between the statements
  // of a transaction when the server goes away would crash the process with its 'error'; the
  // transaction itself fails on its next statement, so the event needs no handling of its own.
  pool.on('connect', (client) => client.on('error', () => {}))
  const db = drizzleNodePostgres({ client: pool, schema, casing: 'snake_case' }) as unknown as Database
  const notifications = notificationConnection(url)
  let closed = false
  return {
    db,
    engine: 'postgres',
    client: pool,
    async ping(timeoutMs = 2000) {
      await withTimeout(db.execute(sql`select 1`), timeoutMs)
    },
    listen: (channel: string, handlers: NotificationHandlers) => notifications.listen(channel, handlers),
    async close() {
      if (closed) return
      closed = true
      await notifications.close()
      await pool.end()
    },
  }
}

/**
 * Every LISTEN of an instance shares one connection of its own (a pooled one would be handed to
 * other queries). A broken connection is replaced with capped exponential backoff and listens to
 * every channel again; meanwhile the listeners hear that they may be missing notifications.
 */
function notificationConnection(url: string) {
  const channels = new Map<string, Set<NotificationHandlers>>()
  let current: pg.Client | null = null
  let connecting: Promise<void> | null = null
  let retry: NodeJS.Timeout | undefined
  let heartbeat: NodeJS.Timeout | undefined
  let closed = false

  const everyone = () => [...channels.values()].flatMap((handlers) => [...handlers])
  const tell = (listening: boolean, who = everyone()) => {
    for (const handlers of who) handlers.onListening(listening)
  }

  const schedule = (attempt: number) => {
    if (closed || channels.size === 0) return
    retry = setTimeout(() => void connect(attempt), Math.min(30_000, 250 * 2 ** attempt)).unref()
  }

  function connect(attempt: number): Promise<void> {
    connecting = (async () => {
      const client = new pg.Client({
        connectionString: url,
        application_name: 'backplane-listener',
        connectionTimeoutMillis: 5000,
        keepAlive: true,
        keepAliveInitialDelayMillis: 10_000,
      })
      // Errors surface as 'end' below; an unhandled 'error' event would crash the process.
      client.on('error', () => {})
      client.on('notification', (message) => {
        if (message.payload === undefined) return
        for (const handlers of channels.get(message.channel) ?? []) handlers.onMessage(message.payload)
      })
      client.on('end', () => {
        if (current !== client) return
        current = null
        tell(false)
        schedule(0)
      })
      try {
        await client.connect()
        for (const channel of channels.keys()) await client.query(`LISTEN ${channel}`)
      } catch {
        await client.end().catch(() => {})
        tell(false)
        schedule(attempt + 1)
        return
      }
      if (closed || channels.size === 0) {
        await client.end().catch(() => {})
        return
      }
      current = client
      tell(true)
    })().finally(() => {
      connecting = null
    })
    return connecting
  }

  return {
    async listen(channel: string, handlers: NotificationHandlers): Promise<() => Promise<void>> {
      if (!CHANNEL_NAME.test(channel)) throw new Error(`invalid channel name: ${channel}`)
      const known = channels.has(channel)
      const set = channels.get(channel) ?? new Set()
      set.add(handlers)
      channels.set(channel, set)
      // A connection dropped silently (a NAT, a failover) ends no socket for a long time and
      // delivers nothing: a query that does not answer in time ends it, and 'end' reconnects.
      heartbeat ??= setInterval(() => {
        const client = current
        if (!client) return
        withTimeout(client.query('select 1'), 5000).catch(() => client.end().catch(() => {}))
      }, 15_000).unref()
      if (connecting) await connecting
      if (current && !known) {
        try {
          await current.query(`LISTEN ${channel}`)
          handlers.onListening(true)
        } catch {
          // The connection broke: 'end' reconnects and listens to every channel again.
          handlers.onListening(false)
        }
      } else if (current) {
        handlers.onListening(true)
      } else if (!retry || connecting === null) {
        await connect(0)
      }
      return async () => {
        set.delete(handlers)
        if (set.size > 0) return
        channels.delete(channel)
        await current?.query(`UNLISTEN ${channel}`).catch(() => {})
        if (channels.size === 0) await this.close(false)
      }
    },

    /** Ends the connection; `final` also stops it from ever connecting again. */
    async close(final = true) {
      if (final) closed = true
      clearInterval(heartbeat)
      heartbeat = undefined
      clearTimeout(retry)
      retry = undefined
      const client = current
      current = null
      await client?.end().catch(() => {})
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
