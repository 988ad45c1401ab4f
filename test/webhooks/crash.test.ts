import { randomUUID } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { type SQL, sql } from 'drizzle-orm'
import Stripe from 'stripe'
import t, { type Test } from 'tap'
import { type Database, openDatabase } from '../../src/db/client.js'
import { engine, eventually, postgresForTest, TEST_ENCRYPTION_KEY } from '../helper.js'
import { createPostgresDatabase } from '../support/databases.js'
import { freePort } from '../support/postgres-cluster.js'
import { exitWithin, type NodeProcess, runNodeScript } from '../support/server-process.js'

// The crash test of inbound webhooks: while a burst of signed Stripe events is delivered, the
// server is killed with SIGKILL at random moments and restarted on the same database; the sender
// resends whatever was not acknowledged with a 2xx, as Stripe does. At the end every acknowledged
// event must have been processed exactly once, with exactly one handler side effect.

const EVENTS = 1000
/** Deliveries in flight at once. */
const CONCURRENCY = 32
/** SIGKILLs, each at a random point of its own slice of the burst (the last slice runs undisturbed). */
const KILLS = 4
const SECRET = 'whsec_crash_test_secret'
const EVENT_TYPE = 'crash.test'

const SERVER_ENV = {
  NODE_ENV: 'test',
  LOG_LEVEL: 'warn',
  HOST: '127.0.0.1',
  ENCRYPTION_KEY: TEST_ENCRYPTION_KEY,
  STRIPE_WEBHOOK_SECRET: SECRET,
  REDIS_URL: undefined,
  // A job attempt left running by a killed process is expired and retried 3 s later.
  INBOUND_WEBHOOK_TIMEOUT_SECONDS: '3',
  JOBS_MAINTENANCE_INTERVAL_SECONDS: '1',
  JOBS_POLL_INTERVAL_MS: '500',
  INBOUND_WEBHOOK_RETRY_DELAY_SECONDS: '1',
  INBOUND_WEBHOOK_RETRY_LIMIT: '10',
}

/** A Stripe event body as Stripe sends it; every delivery attempt sends the same bytes. */
function stripeEvent(id: string) {
  return JSON.stringify({
    id,
    object: 'event',
    api_version: '2025-01-27',
    created: Math.floor(Date.now() / 1000),
    type: EVENT_TYPE,
    data: { object: { id: `cus_${randomUUID().slice(0, 8)}`, object: 'customer' } },
    livemode: false,
    pending_webhooks: 1,
    request: { id: null, idempotency_key: null },
  })
}

interface Delivery {
  id: string
  payload: string
  acknowledged: boolean
}

async function rows<T>(db: Database, query: SQL): Promise<T[]> {
  return ((await db.execute(query)) as unknown as { rows: T[] }).rows
}

/** Asserts that `found` is empty, naming a few of its items rather than all of them. */
function none(t: Test, found: unknown[], message: string) {
  t.equal(found.length, 0, message, { examples: found.slice(0, 5) })
}

const ids = (deliveries: Delivery[]) => deliveries.map((delivery) => delivery.id)

function groupBy<T>(items: T[], key: (item: T) => string): Map<string, T[]> {
  const groups = new Map<string, T[]>()
  for (const item of items) groups.set(key(item), [...(groups.get(key(item)) ?? []), item])
  return groups
}

t.test('SIGKILLed mid-burst and restarted, the server processes every acknowledged event exactly once', async (t) => {
  t.setTimeout(120_000)
  const began = Date.now()

  // One database for the whole test, surviving every restart.
  const dataDir = mkdtempSync(join(tmpdir(), 'backplane-crash-'))
  t.teardown(() => rmSync(dataDir, { recursive: true, force: true }))
  let databaseUrl: string | undefined
  if (engine === 'postgres') {
    const database = await createPostgresDatabase(await postgresForTest(t), { empty: true })
    t.teardown(() => database.drop())
    databaseUrl = database.url
  }
  const port = await freePort()
  const env = {
    ...SERVER_ENV,
    PORT: String(port),
    DATA_DIR: dataDir,
    DATABASE_URL: databaseUrl,
    MIGRATE_ON_START: databaseUrl ? 'true' : undefined,
  }
  const url = `http://127.0.0.1:${port}`

  const start = async () => {
    const server = runNodeScript(t, 'test/webhooks/support/crash-server.ts', env)
    await server.waitForStdout(/^listening \d+$/, 60_000)
    return server
  }

  // The sender: every event until it is acknowledged with a 2xx, re-signed on each attempt.
  const run = randomUUID().replaceAll('-', '').slice(0, 12)
  const deliveries: Delivery[] = Array.from({ length: EVENTS }, (_, n) => {
    const id = `evt_crash_${run}_${String(n).padStart(4, '0')}`
    return { id, payload: stripeEvent(id), acknowledged: false }
  })
  const waiting = deliveries.map((_, index) => index)
  let acknowledged = 0
  let inFlight = 0
  let requests = 0
  let connectionErrors = 0
  let duplicates = 0
  const refusals = new Map<number, number>()
  const unexpectedBodies: string[] = []

  const deliver = async (delivery: Delivery): Promise<boolean> => {
    requests++
    inFlight++
    try {
      const response = await fetch(`${url}/api/v1/webhooks/stripe`, {
        method: 'POST',
        headers: {
          'content-type': 'application/json',
          'stripe-signature': Stripe.webhooks.generateTestHeaderString({ payload: delivery.payload, secret: SECRET }),
        },
        body: delivery.payload,
        signal: AbortSignal.timeout(15_000),
      })
      const body = await response.text()
      if (response.status < 200 || response.status > 299) {
        refusals.set(response.status, (refusals.get(response.status) ?? 0) + 1)
        return false
      }
      // Stripe reads only the status; the body is checked here as the API promises it.
      let answer: { received?: unknown; duplicate?: unknown } = {}
      try {
        answer = JSON.parse(body) as typeof answer
      } catch {
        // reported below
      }
      if (answer.received !== true || typeof answer.duplicate !== 'boolean') unexpectedBodies.push(body)
      if (answer.duplicate === true) duplicates++
      return true
    } catch {
      // Refused, reset or cut off mid-answer: not acknowledged, so Stripe would send it again.
      connectionErrors++
      return false
    } finally {
      inFlight--
    }
  }

  let stopSending = false
  t.teardown(() => {
    stopSending = true
  })
  const sendLoop = async () => {
    let failuresInARow = 0
    while (acknowledged < EVENTS && !stopSending) {
      const index = waiting.shift()
      const delivery = index === undefined ? undefined : deliveries[index]
      if (index === undefined || !delivery) {
        await sleep(5)
        continue
      }
      if (await deliver(delivery)) {
        delivery.acknowledged = true
        acknowledged++
        failuresInARow = 0
      } else {
        // Sent again later; Stripe backs off for hours, this sender for at most 250 ms, so that
        // the test stays short without hammering a server that is down.
        waiting.push(index)
        await sleep(Math.min(250, 10 * 2 ** failuresInARow++))
      }
    }
  }

  // The killer: one SIGKILL at a random point of each slice of the burst, then a restart.
  const slice = EVENTS / (KILLS + 1)
  const killPoints = Array.from({ length: KILLS }, (_, k) => Math.floor((k + Math.random()) * slice))
  let kills = 0
  let killsWithRequestsInFlight = 0
  const killLog: string[] = []

  let server: NodeProcess = await start()
  const firstStart = Date.now()
  const sending = Promise.all(Array.from({ length: CONCURRENCY }, sendLoop))
  for (const point of killPoints) {
    // Past the point, and this server has answered since it started and has requests to answer.
    const before = acknowledged
    const reached = await eventually(() => acknowledged >= point && acknowledged > before && inFlight > 0, 60_000)
    t.ok(reached, `the burst reaches ${point} acknowledgements`)
    const pending = inFlight
    server.child.kill('SIGKILL')
    const exit = await server.exited
    t.equal(exit.signal, 'SIGKILL', 'the server died of SIGKILL')
    kills++
    if (pending > 0) killsWithRequestsInFlight++
    killLog.push(`${acknowledged}/${EVENTS} acknowledged, ${pending} in flight`)
    server = await start()
  }
  await sending
  const burstMs = Date.now() - firstStart

  // The last server runs on, undisturbed, until every event is processed.
  let progress: { statuses: Record<string, number>; effects: number } = { statuses: {}, effects: 0 }
  const done = await eventually(async () => {
    const response = await fetch(`${url}/crash/progress`).catch(() => null)
    if (response?.status === 200) progress = (await response.json()) as typeof progress
    return progress.statuses.processed === EVENTS
  }, 60_000)
  t.ok(done, `every stored event is processed (statuses: ${JSON.stringify(progress.statuses)})`)
  const processedMs = Date.now() - firstStart

  // Stopped gracefully, so that the embedded data directory can be opened here.
  server.child.kill('SIGTERM')
  const exit = await exitWithin(server, 20_000)
  t.same(exit, { code: 0, signal: null }, `the last server stops cleanly (stderr: ${server.stderr().slice(-500)})`)

  const database = await openDatabase({ DATABASE_URL: databaseUrl, DATA_DIR: dataDir, DATABASE_POOL_MAX: 2 })
  let stored: { id: string; provider_event_id: string; status: string; attempts: number }[]
  let effects: { event_id: string; stripe_event_id: string }[]
  try {
    stored = await rows(
      database.db,
      sql`select id, provider_event_id, status, attempts from webhook_events where provider = 'stripe'`,
    )
    effects = await rows(database.db, sql`select event_id, stripe_event_id from crash_effects`)
  } finally {
    await database.close()
  }

  const storedById = groupBy(stored, (row) => row.provider_event_id)
  const effectsById = groupBy(effects, (row) => row.stripe_event_id)

  const acked = deliveries.filter((delivery) => delivery.acknowledged)
  const lost = acked.filter((delivery) => !storedById.get(delivery.id)?.some((row) => row.status === 'processed'))
  const storedTwice = acked.filter((delivery) => (storedById.get(delivery.id)?.length ?? 0) > 1)
  const duplicated = acked.filter((delivery) => (effectsById.get(delivery.id)?.length ?? 0) > 1)
  const missingEffects = acked.filter((delivery) => !effectsById.has(delivery.id))
  const sent = new Set(deliveries.map((delivery) => delivery.id))
  const strayRows = stored.filter((row) => !sent.has(row.provider_event_id))
  const strayEffects = effects.filter((row) => !sent.has(row.stripe_event_id))
  const misattributed = effects.filter(
    (row) => !storedById.get(row.stripe_event_id)?.some((e) => e.id === row.event_id),
  )
  const retried = stored.filter((row) => row.attempts > 1).length

  const figures = {
    engine,
    events: EVENTS,
    acknowledged: acked.length,
    kills,
    killsWithRequestsInFlight,
    requests,
    resends: requests - EVENTS,
    connectionErrors,
    refusals: Object.fromEntries(refusals),
    acknowledgedAsDuplicate: duplicates,
    stored: stored.length,
    lost: lost.length,
    duplicated: duplicated.length,
    storedTwice: storedTwice.length,
    missingEffects: missingEffects.length,
    handlerEffects: effects.length,
    processedOnARetry: retried,
    burstMs,
    processedMs,
    totalMs: Date.now() - began,
  }
  t.comment(`crash test figures: ${JSON.stringify(figures)}`)
  t.comment(`kills at: ${killLog.join('; ')}`)

  t.equal(acked.length, EVENTS, 'every event was eventually acknowledged')
  t.equal(kills, KILLS, `${KILLS} kill rounds`)
  t.ok(
    killsWithRequestsInFlight >= 4,
    `at least 4 kills landed while requests were in flight (${killsWithRequestsInFlight})`,
  )
  t.same(
    [...refusals.keys()].filter((status) => status < 500),
    [],
    'no valid delivery was refused with a 4xx',
  )
  t.same(unexpectedBodies, [], 'every 2xx answer is {received: true, duplicate}')
  none(t, ids(lost), 'lost: no acknowledged event is missing or unprocessed')
  none(t, ids(storedTwice), 'each acknowledged event is stored once')
  none(t, ids(duplicated), 'duplicated: no handler side effect happened twice')
  none(t, ids(missingEffects), 'every acknowledged event has its side effect')
  t.equal(effects.length, EVENTS, 'one side effect per event')
  none(t, strayRows, 'nothing else was stored')
  none(t, strayEffects, 'no side effect of an unknown event')
  none(t, misattributed, 'each side effect belongs to the stored event it was made for')
})
