import { randomUUID } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { type SQL, sql } from 'drizzle-orm'
import t, { type Test } from 'tap'
import { type Database, openDatabase } from '../../src/db/client.js'
import { engine, eventually, postgresForTest, TEST_ENCRYPTION_KEY } from '../helper.js'
import { createPostgresDatabase } from '../support/databases.js'
import { freePort } from '../support/postgres-cluster.js'
import { exitWithin, type NodeProcess, runNodeScript } from '../support/server-process.js'
import { type ReceivedDelivery, Receiver, verifyDelivery } from './receiver.js'

// The crash test of outbound webhooks: while a stream of project changes is committed over HTTP
// and delivered to a local receiver, the server is killed with SIGKILL and restarted on the same
// database: at a random moment of the stream, once while a delivery is in flight (sent, its answer
// held back by the receiver, so its outcome is never recorded), and once at a random moment while
// the backlog the stream left is delivered. At the end every committed event must have reached the
// receiver at least once, signed, and every delivery must be `succeeded`. Duplicates are allowed
// (at least once) and counted.

/** Project changes (creations and updates) acknowledged by the API. */
const OPERATIONS = 200
/** Client requests in flight at once. */
const CONCURRENCY = 4
/** SIGKILLs, each at a random point of its own slice of the stream (the last slice runs undisturbed). */
const STREAM_KILLS = 2
/** Which of them lands while a delivery waits for the receiver's answer. */
const IN_FLIGHT_KILL = 1
/** The stream kills and the one while the backlog is delivered. */
const KILLS = STREAM_KILLS + 1
/** How long the receiver holds that answer: below the delivery timeout, far above the time a kill takes. */
const HOLD_MS = 300

const SERVER_ENV = {
  NODE_ENV: 'test',
  LOG_LEVEL: 'warn',
  HOST: '127.0.0.1',
  ENCRYPTION_KEY: TEST_ENCRYPTION_KEY,
  REDIS_URL: undefined,
  RATE_LIMIT_MAX: '100000',
  WEBHOOK_ALLOW_PRIVATE_TARGETS: 'true',
  // The lease of a killed worker runs out after 4 timeouts (2 s); the sweep then wakes the endpoint.
  WEBHOOK_DELIVERY_TIMEOUT: '500ms',
  WEBHOOK_RETRY_SCHEDULE: '0,200ms,500ms,1s,1s,1s,1s,1s,1s,1s',
  JOBS_MAINTENANCE_INTERVAL_SECONDS: '1',
  JOBS_POLL_INTERVAL_MS: '500',
}

interface Attempt {
  eventId: string
  attempt: number
  succeeded: boolean
  statusCode: number | null
  error: string | null
  deliveryStatus: 'pending' | 'succeeded' | 'failed'
}

interface Envelope {
  id: string
  type: string
  data: { id?: string; version?: number }
}

async function rows<T>(db: Database, query: SQL): Promise<T[]> {
  return ((await db.execute(query)) as unknown as { rows: T[] }).rows
}

/** Asserts that `found` is empty, naming a few of its items rather than all of them. */
function none(t: Test, found: unknown[], message: string) {
  t.equal(found.length, 0, message, { examples: found.slice(0, 5) })
}

const webhookId = (delivery: ReceivedDelivery) => String(delivery.headers['webhook-id'])
/** A project change as `<project id>:<version>`: what the API acknowledged, the outbox holds and the receiver got. */
const changeKey = (projectId: unknown, version: unknown) => `${String(projectId)}:${String(version)}`

t.test('SIGKILLed mid-stream and restarted, the server delivers every committed event at least once', async (t) => {
  t.setTimeout(120_000)
  const began = Date.now()

  // One database for the whole test, surviving every restart.
  const dataDir = mkdtempSync(join(tmpdir(), 'backplane-delivery-crash-'))
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
  const base = `http://127.0.0.1:${port}`
  const startTimes: number[] = []

  const start = async () => {
    const startedAt = Date.now()
    const server = runNodeScript(t, 'src/server.ts', env)
    let exited = false
    void server.exited.then(() => {
      exited = true
    })
    const up = await eventually(async () => {
      if (exited) return true
      const response = await fetch(`${base}/health`, { signal: AbortSignal.timeout(2000) }).catch(() => null)
      if (response?.status === 200) return true
      await sleep(50)
      return false
    }, 60_000)
    if (!up || exited) throw new Error(`the server did not start (stderr: ${server.stderr().slice(-2000)})`)
    startTimes.push(Date.now() - startedAt)
    return server
  }

  // The receiver: answers 200 at once, except the one request it is told to hold.
  const receiver = await Receiver.start(t)
  let holdNext = false
  let held: { id: string; at: number } | undefined
  receiver.answer = (delivery) => {
    if (!holdNext) return { status: 200 }
    holdNext = false
    held = { id: String(delivery.headers['webhook-id']), at: Date.now() }
    return { status: 200, delayMs: HOLD_MS }
  }

  let server: NodeProcess = await start()

  // An account and an endpoint subscribed to everything its org emits.
  const signup = await fetch(`${base}/api/v1/auth/signup`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ email: `crash-${randomUUID()}@example.com`, password: 'correct horse battery staple 42' }),
  })
  t.equal(signup.status, 201, 'signed up')
  const { accessToken } = (await signup.json()) as { accessToken: string }
  const headers = { 'content-type': 'application/json', authorization: `Bearer ${accessToken}` }
  const created = await fetch(`${base}/api/v1/webhook-endpoints`, {
    method: 'POST',
    headers,
    body: JSON.stringify({ url: receiver.url, events: ['*'] }),
  })
  t.equal(created.status, 201, 'endpoint created')
  const endpoint = (await created.json()) as { id: string; secret: string }

  // The client: project creations and updates, each sent once; one cut off by a kill is not
  // acknowledged, whether or not it committed (the outbox says which did).
  const acknowledged = new Set<string>()
  const projects: string[] = []
  let inFlight = 0
  let requests = 0
  let failures = 0
  let edits = 0
  const change = async (): Promise<boolean> => {
    const project = projects[Math.floor(Math.random() * projects.length)]
    const create = project === undefined || projects.length < 10 || Math.random() < 0.25
    requests++
    inFlight++
    try {
      const response = await fetch(create ? `${base}/api/v1/projects` : `${base}/api/v1/projects/${project}`, {
        method: create ? 'POST' : 'PATCH',
        headers,
        body: JSON.stringify(create ? { name: `Crash ${requests}` } : { description: `edit ${++edits}` }),
        signal: AbortSignal.timeout(10_000),
      })
      if (response.status !== (create ? 201 : 200)) return false
      const body = (await response.json()) as { id: string; version: number }
      acknowledged.add(changeKey(body.id, body.version))
      if (create) projects.push(body.id)
      return true
    } catch {
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
    while (acknowledged.size < OPERATIONS && !stopSending) {
      if (await change()) failuresInARow = 0
      else {
        failures++
        await sleep(Math.min(250, 10 * 2 ** failuresInARow++))
      }
    }
  }

  // The killer: one SIGKILL at a random point of each slice of the stream (one of them while a
  // delivery waits for its answer), one while the backlog left by the stream is being delivered,
  // each followed by a restart.
  const slice = OPERATIONS / (STREAM_KILLS + 1)
  const killPoints = Array.from({ length: STREAM_KILLS }, (_, k) => Math.floor((k + Math.random()) * slice))
  const killLog: string[] = []
  let kills = 0
  let heldKilledAfterMs: number | undefined
  let upSince = Date.now()
  const kill = async (note: string) => {
    const pending = inFlight
    server.child.kill('SIGKILL')
    const exit = await server.exited
    t.equal(exit.signal, 'SIGKILL', 'the server died of SIGKILL')
    kills++
    killLog.push(
      `${acknowledged.size}/${OPERATIONS} acknowledged, ${pending} requests in flight, ` +
        `${receiver.received.length} received, up ${Date.now() - upSince} ms${note}`,
    )
    server = await start()
    upSince = Date.now()
  }

  const firstStart = Date.now()
  const sending = Promise.all(Array.from({ length: CONCURRENCY }, sendLoop))
  for (const [k, point] of killPoints.entries()) {
    const before = acknowledged.size
    const reached = await eventually(
      () => acknowledged.size >= point && acknowledged.size > before && inFlight > 0,
      30_000,
    )
    t.ok(reached, `the stream reaches ${point} acknowledged changes`)
    if (k !== IN_FLIGHT_KILL) {
      await kill('')
      continue
    }
    held = undefined
    holdNext = true
    t.ok(await eventually(() => held !== undefined, 20_000), 'a delivery arrives and the receiver holds its answer')
    // Set by the receiver meanwhile (TypeScript cannot see that).
    const caught = held as { id: string; at: number } | undefined
    heldKilledAfterMs = Date.now() - (caught?.at ?? 0)
    await kill(`, delivery of ${caught?.id} held for ${heldKilledAfterMs} ms`)
  }
  await sending

  // The backlog: killed after a random share of it arrived (at a random moment if there is none).
  const backlog = acknowledged.size - new Set(receiver.received.map(webhookId)).size
  const arrived = receiver.received.length
  if (backlog >= 10) {
    const share = 1 + Math.floor(Math.random() * (backlog - 5))
    t.ok(
      await eventually(() => receiver.received.length >= arrived + share, 30_000),
      `${share} deliveries of the backlog of ${backlog} arrive`,
    )
  } else await sleep(Math.random() * 500)
  await kill(`, draining a backlog of ${backlog}: ${receiver.received.length - arrived} arrived`)
  const streamMs = Date.now() - firstStart

  // What the API says was committed: every version of every project (each version is one event).
  const get = async <T>(path: string): Promise<T> => {
    const response = await fetch(`${base}/api/v1${path}`, { headers, signal: AbortSignal.timeout(10_000) })
    if (response.status !== 200) throw new Error(`GET ${path} answered ${response.status}`)
    return (await response.json()) as T
  }
  const walk = async <T>(path: string): Promise<T[]> => {
    const items: T[] = []
    let cursor: string | null = null
    do {
      const page: { data: T[]; nextCursor: string | null } = await get(
        `${path}?limit=100${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`,
      )
      items.push(...page.data)
      cursor = page.nextCursor
    } while (cursor)
    return items
  }
  const committedChanges = async () => {
    const keys = new Set<string>()
    for (const project of await walk<{ id: string; version: number }>('/projects')) {
      for (let version = 1; version <= project.version; version++) keys.add(changeKey(project.id, version))
    }
    return keys
  }
  const receivedChanges = () => new Set(receiver.events<Envelope>().map((e) => changeKey(e.data.id, e.data.version)))

  // The last server runs on, undisturbed, until every committed change was received and every
  // delivery in the log has succeeded.
  let progress = { committed: 0, missing: -1, logged: 0, notSucceeded: -1 }
  let log: Attempt[] = []
  const done = await eventually(async () => {
    try {
      const committed = await committedChanges()
      const received = receivedChanges()
      log = await walk<Attempt>(`/webhook-endpoints/${endpoint.id}/deliveries`)
      const succeeded = new Set(log.filter((entry) => entry.succeeded).map((entry) => entry.eventId))
      progress = {
        committed: committed.size,
        missing: [...committed].filter((key) => !received.has(key)).length,
        logged: log.length,
        notSucceeded:
          log.filter((entry) => entry.deliveryStatus !== 'succeeded').length +
          receiver.received.filter((delivery) => !succeeded.has(webhookId(delivery))).length,
      }
      if (progress.missing === 0 && progress.notSucceeded === 0) return true
    } catch {
      // The server is still catching up; asked again below.
    }
    await sleep(250)
    return false
  }, 60_000)
  t.ok(done, `every committed change is received and its delivery succeeded (${JSON.stringify(progress)})`)
  const deliveredMs = Date.now() - firstStart
  none(
    t,
    log.filter((entry) => entry.deliveryStatus !== 'succeeded'),
    'the delivery log shows every delivery succeeded',
  )

  // Stopped gracefully, so that the embedded data directory can be opened here.
  server.child.kill('SIGTERM')
  const exit = await exitWithin(server, 20_000)
  t.same(exit, { code: 0, signal: null }, `the last server stops cleanly (stderr: ${server.stderr().slice(-500)})`)

  const database = await openDatabase({ DATABASE_URL: databaseUrl, DATA_DIR: dataDir, DATABASE_POOL_MAX: 2 })
  let outbox: { id: string; type: string; project: string | null; version: number | null; dispatched: boolean }[]
  let deliveries: {
    id: string
    message_id: string
    status: string
    attempts: number
    logged: number
    succeeded: number
  }[]
  try {
    outbox = await rows(
      database.db,
      sql`select id, type, data->>'id' as project, (data->>'version')::int as version,
                 dispatched_at is not null as dispatched
            from outbox_events`,
    )
    deliveries = await rows(
      database.db,
      sql`select d.id, d.message_id, d.status, d.attempts,
                 (select count(*)::int from webhook_delivery_attempts a where a.delivery_id = d.id) as logged,
                 (select count(*)::int from webhook_delivery_attempts a
                   where a.delivery_id = d.id and a.succeeded) as succeeded
            from webhook_deliveries d
           where d.endpoint_id = ${endpoint.id}`,
    )
  } finally {
    await database.close()
  }

  const outboxIds = new Set(outbox.map((event) => event.id))
  const outboxChanges = new Set(outbox.map((event) => changeKey(event.project, event.version)))
  const receivedIds = receiver.received.map(webhookId)
  const receivedSet = new Set(receivedIds)
  const copies = new Map<string, number>()
  for (const id of receivedIds) copies.set(id, (copies.get(id) ?? 0) + 1)
  const deliveryOf = new Map(deliveries.map((delivery) => [delivery.message_id, delivery]))
  const unverified: string[] = []
  for (const delivery of receiver.received) {
    try {
      const verified = verifyDelivery(delivery, endpoint.secret) as { id?: string }
      if (verified.id !== webhookId(delivery)) unverified.push(`${webhookId(delivery)}: body id ${verified.id}`)
    } catch (error) {
      unverified.push(`${webhookId(delivery)}: ${String(error)}`)
    }
  }
  const heldDelivery = held ? deliveryOf.get(held.id) : undefined

  const figures = {
    engine,
    acknowledged: acknowledged.size,
    requests,
    failedRequests: failures,
    committedEvents: outbox.length,
    committedUnacknowledged: outbox.length - acknowledged.size,
    kills,
    received: receivedIds.length,
    distinctReceived: receivedSet.size,
    duplicates: receivedIds.length - receivedSet.size,
    eventsReceivedTwiceOrMore: [...copies.values()].filter((count) => count > 1).length,
    attemptsLogged: log.length,
    heldEvent: held?.id,
    heldEventCopies: held ? copies.get(held.id) : undefined,
    heldKilledAfterMs,
    startMs: startTimes,
    streamMs,
    deliveredMs,
    totalMs: Date.now() - began,
  }
  t.comment(`delivery crash test figures: ${JSON.stringify(figures)}`)
  t.comment(`kills at: ${killLog.join('; ')}`)
  // Why an event arrived more than once: an attempt the kill cut off leaves no log entry.
  const repeated = [...copies].filter(([, count]) => count > 1).slice(0, 5)
  for (const [id, count] of repeated) {
    const entries = log.filter((entry) => entry.eventId === id).map((e) => `#${e.attempt} ${e.statusCode ?? e.error}`)
    t.comment(`${id}${id === held?.id ? ' (held)' : ''}: received ${count} times, logged ${entries.join(', ')}`)
  }

  t.ok(acknowledged.size >= OPERATIONS, `${OPERATIONS} changes or more were acknowledged (${acknowledged.size})`)
  t.equal(kills, KILLS, `${KILLS} kill rounds`)
  none(
    t,
    [...acknowledged].filter((key) => !outboxChanges.has(key)),
    'every acknowledged change has its event in the outbox',
  )
  t.ok(
    outbox.every((event) => event.type === 'project.created' || event.type === 'project.updated'),
    'the outbox holds project events only',
  )
  none(
    t,
    outbox.filter((event) => !event.dispatched),
    'every committed event was dispatched',
  )
  t.equal(deliveries.length, outbox.length, 'one delivery per committed event')
  none(
    t,
    outbox.filter((event) => !deliveryOf.has(event.id)).map((event) => event.id),
    'every committed event has its delivery',
  )
  none(
    t,
    deliveries.filter((delivery) => delivery.status !== 'succeeded'),
    'every delivery succeeded',
  )
  none(
    t,
    deliveries.filter((delivery) => delivery.succeeded !== 1),
    'each delivery has exactly one successful attempt in the log',
  )
  none(
    t,
    deliveries.filter((delivery) => delivery.attempts !== delivery.logged),
    "each delivery's attempt count matches its log",
  )
  none(
    t,
    [...outboxIds].filter((id) => !receivedSet.has(id)),
    'lost: every committed event was received at least once',
  )
  none(
    t,
    [...receivedSet].filter((id) => !outboxIds.has(id)),
    'nothing but committed events was received',
  )
  none(t, unverified, 'every received delivery verifies with the endpoint secret')

  t.ok(held, 'a delivery was held when the server was killed')
  t.ok(
    heldKilledAfterMs !== undefined && heldKilledAfterMs < HOLD_MS,
    `the server was killed before the held answer went out (${heldKilledAfterMs} ms < ${HOLD_MS} ms)`,
  )
  t.ok((held ? (copies.get(held.id) ?? 0) : 0) >= 2, 'the delivery in flight at the kill was sent again')
  t.ok(
    heldDelivery !== undefined && (copies.get(heldDelivery.message_id) ?? 0) > heldDelivery.logged,
    'its attempt cut off by the kill left no outcome in the log',
  )
})
