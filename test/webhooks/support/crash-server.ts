/**
 * Child process of the inbound webhook crash test: the production app, configured from the
 * environment as src/server.ts does, plus a handler for `crash.test` events whose side effect is
 * one row in `crash_effects` per handler run, written through the handler's transaction. The table
 * has no unique constraint, so a side effect committed twice would show as two rows.
 *
 * Prints `listening <port>` once it accepts requests. `GET /crash/progress` reports how far
 * processing got, so the test can wait without opening the database (an embedded data directory
 * belongs to one process). SIGTERM shuts down gracefully; the test also kills it with SIGKILL.
 */
import { setTimeout as sleep } from 'node:timers/promises'
import closeWithGrace from 'close-with-grace'
import { type SQL, sql } from 'drizzle-orm'
import { buildApp } from '../../../src/app.js'
import { loadConfig } from '../../../src/config.js'

const config = loadConfig()
const app = await buildApp(config)

app.webhookHandlers.register('stripe', 'crash.test', async (event, tx) => {
  // Long enough for kills to land in the middle of a handler, short enough for a 1,000 event burst.
  await sleep(Math.random() * 20)
  await tx.execute(
    sql`insert into crash_effects (event_id, stripe_event_id) values (${event.id}, ${event.providerEventId})`,
  )
})

await app.db.execute(sql`
  create table if not exists crash_effects (
    event_id text not null,
    stripe_event_id text not null,
    at timestamptz not null default clock_timestamp()
  )
`)

app.get('/crash/progress', { schema: { hide: true }, config: { rateLimit: false } }, async () => {
  const statuses = await rows<{ status: string; count: number }>(
    sql`select status, count(*)::int as count from webhook_events group by status`,
  )
  const [effects] = await rows<{ count: number }>(sql`select count(*)::int as count from crash_effects`)
  return {
    statuses: Object.fromEntries(statuses.map((row) => [row.status, row.count])),
    effects: effects?.count ?? 0,
  }
})

async function rows<T>(query: SQL): Promise<T[]> {
  return ((await app.db.execute(query)) as unknown as { rows: T[] }).rows
}

closeWithGrace({ delay: config.SHUTDOWN_TIMEOUT_MS, logger: app.log }, async ({ err }) => {
  if (err) app.log.error({ err }, 'crash server: unexpected error')
  await app.close()
})

await app.listen({ host: config.HOST, port: config.PORT })
const address = app.server.address()
process.stdout.write(`listening ${typeof address === 'object' && address ? address.port : config.PORT}\n`)
