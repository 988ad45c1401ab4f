import { Writable } from 'node:stream'
import { setTimeout as sleep } from 'node:timers/promises'
import type { FastifyInstance } from 'fastify'
import type { Redis } from 'ioredis'
import { type AppOverrides, buildApp } from '../src/app.js'
import { type Config, loadConfig } from '../src/config.js'
import { createPostgresDatabase, freshPglite } from './support/databases.js'
import { startCluster } from './support/postgres-cluster.js'
import { startRedis } from './support/redis-server.js'

export type Engine = 'pglite' | 'postgres'

/** Which engine this pass of the suite runs on (the runner runs every file once per engine). */
export const engine: Engine = process.env.TEST_ENGINE === 'postgres' ? 'postgres' : 'pglite'
export const postgresAdminUrl = process.env.TEST_POSTGRES_URL
export const redisUrl = process.env.TEST_REDIS_URL

interface Teardown {
  teardown(fn: () => unknown): void
}

/**
 * The suite's Redis, or (when a file runs on its own, outside the runner) a throwaway
 * redis-server for this file. Without either, the test fails: it never passes by skipping.
 */
export async function redisForTest(t: Teardown): Promise<string> {
  if (redisUrl) return redisUrl
  const server = await startRedis()
  t.teardown(() => server.stop())
  return server.url
}

/** The suite's PostgreSQL admin URL, or a throwaway cluster from local binaries for this file. */
export async function postgresForTest(t: Teardown): Promise<string> {
  if (postgresAdminUrl) return postgresAdminUrl
  const cluster = await startCluster()
  t.teardown(() => cluster.destroy())
  return cluster.url
}

/** A fixed key, so no test writes a generated key file into the working directory. */
export const TEST_ENCRYPTION_KEY = Buffer.alloc(32, 7).toString('base64')

/** Config as the server would load it from this environment, with test defaults. */
export function testConfig(env: Record<string, string> = {}): Config {
  return loadConfig({
    env: { NODE_ENV: 'test', LOG_LEVEL: 'silent', ENCRYPTION_KEY: TEST_ENCRYPTION_KEY, ...env },
    envFile: false,
  })
}

/** Collects the app's log lines as parsed objects. */
export class LogCapture extends Writable {
  readonly lines: Record<string, unknown>[] = []
  readonly raw: string[] = []
  override _write(chunk: Buffer, _encoding: string, callback: () => void) {
    for (const line of chunk.toString().split('\n')) {
      if (!line) continue
      this.raw.push(line)
      this.lines.push(JSON.parse(line))
    }
    callback()
  }
}

export interface TestAppOptions {
  env?: Record<string, string>
  redis?: Redis | null
  logs?: LogCapture
  /** Register extra routes or plugins before the app is ready. */
  extend?: (app: FastifyInstance) => Promise<void> | void
}

/**
 * Builds the production app on a fresh database of the current engine: a copy of a migrated PGlite
 * template, or a new PostgreSQL database cloned from a migrated template. Closed after the test.
 */
export async function buildTestApp(t: Teardown, options: TestAppOptions = {}): Promise<FastifyInstance> {
  const overrides: AppOverrides = {}
  if (options.redis !== undefined) overrides.redis = options.redis
  const env: Record<string, string> = { ...(options.logs ? { LOG_LEVEL: 'debug' } : {}), ...options.env }
  if (options.logs) overrides.logStream = options.logs

  if (engine === 'postgres') {
    if (!postgresAdminUrl) throw new Error('TEST_ENGINE=postgres needs TEST_POSTGRES_URL (run the suite with npm test)')
    const database = await createPostgresDatabase(postgresAdminUrl)
    t.teardown(() => database.drop())
    env.DATABASE_URL = database.url
  } else {
    overrides.database = await freshPglite()
  }

  const app = await buildApp(testConfig(env), overrides)
  t.teardown(() => app.close())
  await options.extend?.(app)
  await app.ready()
  return app
}

/** Polls until `check` holds or `ms` pass; returns whether it held (for work done in the background). */
export async function eventually(check: () => boolean | Promise<boolean>, ms = 15_000): Promise<boolean> {
  const deadline = Date.now() + ms
  while (Date.now() < deadline) {
    if (await check()) return true
    await sleep(25)
  }
  return check()
}
