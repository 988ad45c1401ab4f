import type { PGlite } from '@electric-sql/pglite'
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import type { Pool } from 'pg'
import PgBoss from 'pg-boss'
import type { Config } from '../config.js'
import type { DatabaseHandle, Executor } from '../db/client.js'
import { resultRows } from '../db/results.js'
import { sqlWithParams } from '../db/sql-text.js'

declare module 'fastify' {
  interface FastifyInstance {
    /** The durable job queue (pg-boss on this app's database). */
    jobs: Jobs
  }
}

export interface JobContext {
  id: string
  /** 0 on the first attempt. */
  retryCount: number
}

export interface JobDefinition<Data> {
  /** Queue name: lowercase words separated by dots, e.g. `webhooks.process`. */
  name: string
  handler: (data: Data, job: JobContext) => Promise<void>
  /** Attempts after the first (default 8), spaced by an exponential backoff from `retryDelaySeconds`. */
  retryLimit?: number
  /** First retry delay (default 5 s); pg-boss doubles it on each attempt, with jitter. */
  retryDelaySeconds?: number
  /** A run taking longer than this counts as failed and is retried (default 5 min). */
  expireInSeconds?: number
  /** Jobs of this queue one process runs at the same time (default 1). */
  concurrency?: number
}

export interface SendOptions {
  /** Enqueue inside this transaction: the job exists exactly when the transaction commits. */
  tx?: Executor
  /** Run no earlier than this. */
  startAfter?: Date
}

export interface QueueCounts {
  /** Jobs waiting or being retried, every queue together. */
  queued: number
  /** Jobs that exhausted their retries and wait in a dead-letter queue. */
  dead: number
}

export interface Jobs {
  define<Data>(definition: JobDefinition<Data>): Promise<void>
  send<Data extends object>(name: string, data: Data, options?: SendOptions): Promise<string>
  /** Enqueues several jobs in one statement (inside `tx` when given). */
  sendMany<Data extends object>(name: string, data: Data[], options?: Pick<SendOptions, 'tx'>): Promise<void>
  counts(): Promise<QueueCounts>
  /** Makes this process's idle workers of `name` look for jobs now rather than at their next poll. */
  poke(name: string): void
  /**
   * Removes the dead-lettered jobs of `name` whose data has `field` equal to `value`, once the
   * caller has dealt with them (replayed their work), so readiness stops reporting them.
   */
  clearDead(name: string, field: string, value: string, options?: Pick<SendOptions, 'tx'>): Promise<number>
  /** Whether this process runs jobs (`WORKERS`). */
  readonly working: boolean
}

const QUEUE_NAME = /^[a-z][a-z0-9]*(\.[a-z][a-z0-9-]*)*$/
export const deadLetterQueue = (name: string) => `${name}.dead`
const SCHEMA = 'pgboss'

/**
 * pg-boss speaks to the database through this adapter: statements without parameters may hold
 * several commands (pg-boss's schema migrations), which PGlite runs only through `exec`.
 */
function bossDb(database: DatabaseHandle): PgBoss.Db {
  return {
    async executeSql(text, values) {
      if (database.engine === 'postgres') return (database.client as Pool).query(text, values)
      const client = database.client as PGlite
      if (values && values.length > 0) return client.query(text, values)
      const results = await client.exec(text)
      return { rows: results.at(-1)?.rows ?? [] }
    },
  }
}

/** The caller's Drizzle transaction as a pg-boss connection, so a job commits with the change. */
function transactionDb(tx: Executor): PgBoss.Db {
  return {
    async executeSql(text, values) {
      return { rows: resultRows(await tx.execute(sqlWithParams(text, values ?? []))) }
    },
  }
}

/**
 * The job queue every module uses: pg-boss 10 on the app's own database (PostgreSQL or PGlite),
 * so enqueueing can share a transaction with the change that causes it. Failed jobs retry with
 * exponential backoff, then move to the queue's dead-letter queue (`<name>.dead`). With
 * `WORKERS=false` this process only enqueues; `npm run worker` runs the same handlers elsewhere.
 */
async function jobsPlugin(app: FastifyInstance, { config }: { config: Config }) {
  const working = config.WORKERS
  const queueDb = bossDb(app.database)
  const boss = new PgBoss({
    db: queueDb,
    schema: SCHEMA,
    // Maintenance (expiring, archiving, retention) runs where jobs run.
    supervise: working,
    schedule: working,
    // Also how soon a job whose worker died (it stays active) is expired and retried.
    maintenanceIntervalSeconds: config.JOBS_MAINTENANCE_INTERVAL_SECONDS,
    migrate: true,
  })
  boss.on('error', (error) => app.log.warn({ err: error }, 'job queue error'))
  await boss.start()
  const pollingIntervalSeconds = Math.max(0.5, config.JOBS_POLL_INTERVAL_MS / 1000)
  const defined = new Set<string>()
  let ready = false
  const pendingWorkers: (() => Promise<void>)[] = []
  const workerIds = new Map<string, string[]>()
  app.addHook('onReady', async () => {
    ready = true
    for (const start of pendingWorkers.splice(0)) await start()
  })

  async function startWorker<Data>(definition: JobDefinition<Data>) {
    // The first job may arrive before work() returns the worker's id.
    const worker: { id?: string } = {}
    worker.id = await boss.work<Data>(
      definition.name,
      { pollingIntervalSeconds, batchSize: 1, includeMetadata: true },
      async ([job]) => {
        if (!job) return
        try {
          await definition.handler(job.data, { id: job.id, retryCount: job.retryCount })
        } finally {
          // On PGlite a query never gives timers or sockets a turn, so a worker draining a
          // backlog would starve HTTP: yield once per job.
          await new Promise((resolve) => setImmediate(resolve))
          // A job was there, so more may be: fetch again now instead of after a polling interval.
          if (worker.id) boss.notifyWorker(worker.id)
        }
      },
    )
    workerIds.set(definition.name, [...(workerIds.get(definition.name) ?? []), worker.id])
  }

  const jobs: Jobs = {
    working,

    async define<Data>(definition: JobDefinition<Data>) {
      if (!QUEUE_NAME.test(definition.name)) throw new Error(`invalid queue name: ${definition.name}`)
      if (defined.has(definition.name)) throw new Error(`queue defined twice: ${definition.name}`)
      defined.add(definition.name)
      const dead = deadLetterQueue(definition.name)
      // Dead jobs are kept for two weeks, for inspection and replay.
      await boss.createQueue(dead, { name: dead, retentionMinutes: 14 * 24 * 60 })
      const policy = {
        name: definition.name,
        retryLimit: definition.retryLimit ?? 8,
        retryDelay: definition.retryDelaySeconds ?? 5,
        retryBackoff: true,
        expireInSeconds: definition.expireInSeconds ?? 300,
        deadLetter: dead,
      }
      // createQueue leaves an existing queue as it was; the update applies changed settings.
      await boss.createQueue(definition.name, policy)
      await boss.updateQueue(definition.name, policy)
      if (!working) return
      const start = async () => {
        for (let i = 0; i < (definition.concurrency ?? 1); i++) await startWorker(definition)
      }
      // Jobs must not run before every module has registered what they need (webhook handlers
      // are added after the queue is defined): workers start once the app is ready.
      if (ready) await start()
      else pendingWorkers.push(start)
    },

    async send(name, data, options = {}) {
      if (!defined.has(name)) throw new Error(`unknown queue: ${name}`)
      const id = await boss.send(name, data, {
        ...(options.tx ? { db: transactionDb(options.tx) } : {}),
        ...(options.startAfter ? { startAfter: options.startAfter } : {}),
      })
      if (!id) throw new Error(`the job was not enqueued on ${name}`)
      return id
    },

    async sendMany(name, data, options = {}) {
      if (!defined.has(name)) throw new Error(`unknown queue: ${name}`)
      if (data.length === 0) return
      await boss.insert(
        data.map((item) => ({ name, data: item })),
        options.tx ? { db: transactionDb(options.tx) } : {},
      )
    },

    async clearDead(name, field, value, options = {}) {
      if (!defined.has(name)) throw new Error(`unknown queue: ${name}`)
      const db = options.tx ? transactionDb(options.tx) : queueDb
      const { rows } = await db.executeSql(
        `DELETE FROM ${SCHEMA}.job WHERE name = $1 AND data ->> $2 = $3 RETURNING id`,
        [deadLetterQueue(name), field, value],
      )
      return rows.length
    },

    poke(name) {
      for (const id of workerIds.get(name) ?? []) boss.notifyWorker(id)
    },

    async counts() {
      let queued = 0
      let dead = 0
      for (const name of defined) {
        queued += await boss.getQueueSize(name)
        dead += await boss.getQueueSize(deadLetterQueue(name))
      }
      return { queued, dead }
    },
  }
  app.decorate('jobs', jobs)

  app.addHook('onClose', async () => {
    // Running jobs may finish; what does not finish in time is retried after its expiry.
    await boss.stop({ graceful: true, wait: true, timeout: config.SHUTDOWN_TIMEOUT_MS })
  })
}

export default fp(jobsPlugin, { name: 'jobs', fastify: '5.x', dependencies: ['db'] })
