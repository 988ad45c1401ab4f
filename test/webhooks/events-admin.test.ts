import { spawn } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { isDeepStrictEqual } from 'node:util'
import { sql } from 'drizzle-orm'
import type { FastifyInstance } from 'fastify'
import t from 'tap'
import { buildApp } from '../../src/app.js'
import { openPglite } from '../../src/db/client.js'
import { buildTestApp, engine, postgresAdminUrl, TEST_ENCRYPTION_KEY, testConfig } from '../helper.js'
import {
  type Account,
  account,
  assertProblem,
  bearer,
  createApiKey,
  type Test,
  uniqueAddress,
  uniqueEmail,
  walkPages,
} from '../auth/support.js'
import { withDatabase } from '../support/databases.js'
import { isToolNoise, ROOT } from '../support/server-process.js'
import {
  counterDelta,
  deliverMeta,
  deliverSignedForm,
  deliverSignedMeta,
  deliverTwilio,
  eventually,
  FAST,
  formBody,
  inboundSms,
  jobsFor,
  META_SECRET,
  messengerBatch,
  PUBLIC_URL,
  RecordingHandlers,
  sid,
  statusCallback,
  statusOf,
  storedEvent,
  storedEvents,
  TWILIO_TOKEN,
  webhookCounters,
} from './support.js'

const EVENTS = '/api/v1/webhooks/events'
const WEBHOOK_ENV = { ...FAST, PUBLIC_URL, TWILIO_AUTH_TOKEN: TWILIO_TOKEN, META_APP_SECRET: META_SECRET }

interface ListedEvent {
  id: string
  provider: string
  providerEventId: string
  type: string
  status: string
  attempts: number
  lastError: string | null
  receivedAt: string
  processedAt: string | null
}

const EVENT_FIELDS = [
  'attempts',
  'id',
  'lastError',
  'processedAt',
  'provider',
  'providerEventId',
  'receivedAt',
  'status',
  'type',
]

// One working app for the listing, replay and metrics tests, which run one after the other and
// wait for their own events to settle. Message status callbacks ("sent") fail while `broken` holds.
let broken = true
const handlers = new RecordingHandlers()
const smsCalls = handlers.on('twilio', 'message.received')
const sentCalls = handlers.on('twilio', 'message.sent', () => broken)
const app = await buildTestApp(t, { env: WEBHOOK_ENV, extend: handlers.extend })
const operator = await account(app)
await app.authService.setPlatformAdmin(operator.email, true)

function listEvents(query: Record<string, string | number> = {}, who: { authorization?: string } = operator.headers) {
  return app.inject({
    method: 'GET',
    url: EVENTS,
    query: stringify(query),
    headers: who,
    remoteAddress: uniqueAddress(),
  })
}

function replay(id: string, who: { authorization?: string } = operator.headers) {
  return app.inject({
    method: 'POST',
    url: `${EVENTS}/${encodeURIComponent(id)}/replay`,
    headers: who,
    remoteAddress: uniqueAddress(),
  })
}

const stringify = (query: Record<string, string | number>) =>
  Object.fromEntries(Object.entries(query).map(([key, value]) => [key, String(value)]))

async function readiness(target: FastifyInstance) {
  const response = await target.inject({ method: 'GET', url: '/ready' })
  const body = response.json() as {
    status: string
    services: { jobs?: { status: string; queued?: number; dead?: number; message?: string } }
  }
  return { statusCode: response.statusCode, status: body.status, jobs: body.services.jobs }
}

/** Waits until webhook_events_total moved by exactly `expected` since `before`, then asserts it. */
async function assertCounted(t: Test, before: Record<string, number>, expected: Record<string, number>, label: string) {
  await eventually(async () => isDeepStrictEqual(counterDelta(before, await webhookCounters(app)), expected))
  t.same(counterDelta(before, await webhookCounters(app)), expected, label)
}

t.test('listing and replaying events is for platform administrators signed in as users', async (t) => {
  const admin = await account(app)
  const user = await account(app)
  t.ok(await app.authService.setPlatformAdmin(admin.email, true), 'granted')
  const key = await createApiKey(app, admin, admin.personalOrgId, ['webhooks:read', 'webhooks:write'])
  const unknown = 'wev_00000000-0000-7000-8000-000000000000'

  assertProblem(t, await listEvents({}, {}), 401, 'UNAUTHORIZED', 'anonymous list')
  assertProblem(t, await replay(unknown, {}), 401, 'UNAUTHORIZED', 'anonymous replay')
  assertProblem(t, await listEvents({}, bearer('not-a-token')), 401, 'INVALID_TOKEN', 'a bad token')
  assertProblem(t, await listEvents({}, user.headers), 403, 'PLATFORM_ADMIN_REQUIRED', 'an ordinary user lists')
  // Refused before the id is looked up: nobody else learns which events exist.
  assertProblem(t, await replay(unknown, user.headers), 403, 'PLATFORM_ADMIN_REQUIRED', 'an ordinary user replays')
  assertProblem(t, await listEvents({}, bearer(key.key)), 403, 'USER_SESSION_REQUIRED', "an admin's API key lists")
  assertProblem(t, await replay(unknown, bearer(key.key)), 403, 'USER_SESSION_REQUIRED', "an admin's API key replays")

  const allowed = await listEvents({}, admin.headers)
  t.equal(allowed.statusCode, 200, 'the administrator lists')
  t.same(allowed.json(), { data: [], nextCursor: null }, 'nothing stored yet: this test runs first')
  assertProblem(t, await replay(unknown, admin.headers), 404, 'WEBHOOK_EVENT_NOT_FOUND', 'the administrator replays')

  t.ok(await app.authService.setPlatformAdmin(admin.email, false), 'revoked')
  assertProblem(
    t,
    await listEvents({}, admin.headers),
    403,
    'PLATFORM_ADMIN_REQUIRED',
    'the next request after revoking',
  )
  assertProblem(t, await replay(unknown, admin.headers), 403, 'PLATFORM_ADMIN_REQUIRED', 'replay after revoking')
  t.notOk(await app.authService.setPlatformAdmin(uniqueEmail('nobody'), true), 'an unknown email grants nothing')
})

t.test('the list is newest first, filters by provider and status, and pages with cursors', async (t) => {
  // Single-event deliveries one after the other: each is received strictly after the previous.
  const labels = new Map<string, string>()
  const sms = async (label: string) => {
    const params = inboundSms()
    t.equal((await deliverSignedForm(app, params)).statusCode, 200, label)
    labels.set(`${params.MessageSid}:received`, label)
  }
  const messenger = async (label: string) => {
    t.equal((await deliverSignedMeta(app, messengerBatch([label]))).statusCode, 200, label)
    const row = (await storedEvents(app)).find((stored) => JSON.stringify(stored.payload).includes(`"${label}"`))
    labels.set(row?.providerEventId ?? label, label)
  }
  await sms('sms 1')
  await messenger('page 1')
  await sms('sms 2')
  await sms('sms 3')
  await messenger('page 2')
  await sms('sms 4')
  await messenger('page 3')
  t.equal((await storedEvents(app)).length, 7, 'only these events are stored')
  t.ok(
    await eventually(async () =>
      (await storedEvents(app)).every((row) => ['processed', 'ignored'].includes(row.status)),
    ),
    'all settled',
  )
  const label = (event: ListedEvent) => labels.get(event.providerEventId) ?? `unknown ${event.providerEventId}`
  const names = (response: { json(): unknown }) => (response.json() as { data: ListedEvent[] }).data.map(label)

  const all = await listEvents()
  t.equal(all.statusCode, 200)
  const body = all.json() as { data: ListedEvent[]; nextCursor: string | null }
  t.same(body.data.map(label), ['page 3', 'sms 4', 'page 2', 'sms 3', 'sms 2', 'page 1', 'sms 1'], 'newest first')
  t.equal(body.nextCursor, null, 'one page')
  t.same(Object.keys(body.data[0] ?? {}).sort(), EVENT_FIELDS, 'the stored event without its payload')
  const sms4 = body.data[1]
  t.match(sms4, { provider: 'twilio', type: 'message.received', status: 'processed', attempts: 1, lastError: null })
  t.ok(
    sms4 && sms4.processedAt && Date.parse(sms4.processedAt) >= Date.parse(sms4.receivedAt),
    'processed after received',
  )

  t.same(names(await listEvents({ provider: 'twilio' })), ['sms 4', 'sms 3', 'sms 2', 'sms 1'], 'provider twilio')
  t.same(names(await listEvents({ provider: 'meta' })), ['page 3', 'page 2', 'page 1'], 'provider meta')
  t.same(names(await listEvents({ provider: 'stripe' })), [], 'provider stripe')
  t.same(names(await listEvents({ status: 'ignored' })), ['page 3', 'page 2', 'page 1'], 'status ignored')
  t.same(names(await listEvents({ status: 'processed' })), ['sms 4', 'sms 3', 'sms 2', 'sms 1'], 'status processed')
  t.same(names(await listEvents({ provider: 'meta', status: 'processed' })), [], 'both filters')
  t.same(names(await listEvents({ status: 'dead' })), [], 'status dead')

  const walked = await walkPages<ListedEvent>(t, (cursor) => listEvents({ limit: 2, ...(cursor ? { cursor } : {}) }))
  t.same(
    walked.pages.map((page) => page.length),
    [2, 2, 2, 1],
    'pages of two',
  )
  t.same(walked.items.map(label), body.data.map(label), 'every event once, in order')
  t.equal(new Set(walked.items.map((item) => item.id)).size, 7, 'no duplicates')

  const twilioWalk = await walkPages<ListedEvent>(t, (cursor) =>
    listEvents({ provider: 'twilio', limit: 3, ...(cursor ? { cursor } : {}) }),
  )
  t.same(twilioWalk.items.map(label), ['sms 4', 'sms 3', 'sms 2', 'sms 1'], 'a filtered listing pages too')

  const firstTwilio = (await listEvents({ provider: 'twilio', limit: 1 })).json() as { nextCursor: string }
  const cursor = firstTwilio.nextCursor
  t.ok(cursor, 'a next cursor')
  t.same(names(await listEvents({ provider: 'twilio', limit: 1, cursor })), ['sms 3'], 'it continues its listing')
  const otherListings: Record<string, string>[] = [
    {},
    { provider: 'meta' },
    { provider: 'twilio', status: 'processed' },
    { status: 'processed' },
  ]
  for (const query of otherListings) {
    const response = await listEvents({ ...query, cursor })
    assertProblem(t, response, 400, 'INVALID_CURSOR', `the cursor with ${JSON.stringify(query)}`)
  }
  const forged = (parts: unknown[]) => Buffer.from(JSON.stringify(parts)).toString('base64url')
  const badCursors: [string, string][] = [
    ['garbage', 'not-a-cursor'],
    ['not JSON', Buffer.from('{').toString('base64url')],
    ['an edited sort key', forged(['yesterday', sms4?.id, '|'])],
    ['an impossible date', forged(['2025-02-30 10:00:00+00', sms4?.id, '|'])],
    ['a NUL in the id', forged(['2025-01-01 10:00:00+00', 'wev\u0000', '|'])],
  ]
  for (const [name, value] of badCursors) {
    assertProblem(t, await listEvents({ cursor: value }), 400, 'INVALID_CURSOR', name)
  }

  const invalid: [string, Record<string, string | number>][] = [
    ['an unknown status', { status: 'exploded' }],
    ['limit 0', { limit: 0 }],
    ['limit 101', { limit: 101 }],
    ['a limit that is not a number', { limit: 'ten' }],
    ['an empty provider', { provider: '' }],
    ['an unknown parameter', { order: 'asc' }],
  ]
  for (const [name, query] of invalid) {
    assertProblem(t, await listEvents(query), 400, 'VALIDATION_FAILED', name)
  }
  t.equal((await listEvents({ limit: 100 })).statusCode, 200, 'limit 100')
  t.same(names(await listEvents({ limit: 1 })), ['page 3'], 'limit 1')
})

t.test('an event that dies shows in readiness and metrics, and is processed once replayed after a fix', async (t) => {
  const healthy = await readiness(app)
  t.equal(healthy.statusCode, 200)
  t.equal(healthy.jobs?.dead, 0, 'no dead jobs before')
  t.equal(healthy.jobs?.status, 'healthy')
  t.equal(healthy.status, 'healthy')
  const before = await webhookCounters(app)

  const messageSid = sid('SM')
  t.equal((await deliverSignedForm(app, statusCallback(messageSid, 'sent'))).statusCode, 200)
  const row = await storedEvent(app, 'twilio', `${messageSid}:sent`)
  const id = row?.id ?? ''
  t.ok(await eventually(async () => (await statusOf(app, id)) === 'dead', 40_000), 'dead after its retries')
  t.equal(sentCalls.filter((call) => call.id === id).length, 3, 'the first attempt and two retries')

  const dead = (await listEvents({ status: 'dead' })).json() as { data: ListedEvent[] }
  t.same(
    dead.data.map((event) => event.id),
    [id],
    'listed as dead',
  )
  t.match(dead.data[0], { attempts: 3, lastError: 'handler failure 3', processedAt: null })

  t.ok(await eventually(async () => (await readiness(app)).jobs?.dead === 1), 'the dead-letter count rises')
  const degraded = await readiness(app)
  t.equal(degraded.statusCode, 200, 'still ready: a dead job does not take the instance out')
  t.equal(degraded.jobs?.status, 'degraded')
  t.equal(degraded.status, 'degraded')
  t.match(degraded.jobs?.message, /dead/)
  await assertCounted(
    t,
    before,
    { 'twilio/received': 1, 'twilio/failed': 2, 'twilio/dead': 1 },
    'received, failed twice, then dead',
  )

  broken = false
  const replayed = await replay(id)
  t.equal(replayed.statusCode, 202)
  const answer = replayed.json() as ListedEvent
  t.same(Object.keys(answer).sort(), EVENT_FIELDS, 'the event without its payload')
  t.match(answer, { id, provider: 'twilio', type: 'message.sent', providerEventId: `${messageSid}:sent`, attempts: 3 })
  t.equal(answer.status, 'received', 'queued again')
  t.equal(answer.lastError, null, 'the answer shows the event as it now is: its failure cleared')
  t.equal(answer.processedAt, null)

  t.ok(await eventually(async () => (await statusOf(app, id)) === 'processed'), 'processed after the replay')
  const calls = sentCalls.filter((call) => call.id === id)
  t.equal(calls.length, 4, 'the handler ran once more')
  t.equal(calls.at(-1)?.attempt, 4, 'as the fourth attempt')
  const [listed] = (
    (await listEvents({ provider: 'twilio', status: 'processed', limit: 1 })).json() as {
      data: ListedEvent[]
    }
  ).data
  t.match(listed, { id, status: 'processed', attempts: 4, lastError: null }, 'the failure is cleared')
  t.ok(listed?.processedAt, 'processedAt is set')
  const ready = await readiness(app)
  t.match(ready.jobs, { status: 'healthy', dead: 0 }, 'its dead-lettered job is cleared by the replay')
  await assertCounted(
    t,
    before,
    { 'twilio/received': 1, 'twilio/failed': 2, 'twilio/dead': 1, 'twilio/processed': 1 },
    'and processed',
  )
})

t.test('replaying a processed event runs its handler again; unknown ids are 404', async (t) => {
  const params = inboundSms()
  t.equal((await deliverSignedForm(app, params)).statusCode, 200)
  const row = await storedEvent(app, 'twilio', `${params.MessageSid}:received`)
  const id = row?.id ?? ''
  t.ok(await eventually(async () => (await statusOf(app, id)) === 'processed'), 'processed')

  const replayed = await replay(id)
  t.equal(replayed.statusCode, 202)
  t.match(replayed.json(), { id, status: 'received' })
  t.notOk('payload' in replayed.json(), 'no payload in the answer')
  t.ok(
    await eventually(
      async () => (await statusOf(app, id)) === 'processed' && smsCalls.filter((call) => call.id === id).length === 2,
    ),
    'processed again',
  )
  const calls = smsCalls.filter((call) => call.id === id)
  t.same(
    calls.map((call) => call.id),
    [id, id],
    'the handler ran twice, with the same event id both times (its key for idempotency)',
  )
  t.same(
    calls.map((call) => call.attempt),
    [1, 2],
  )
  t.equal(await jobsFor(app, id), 2, 'one job for the delivery, one for the replay')

  assertProblem(t, await replay('wev_does-not-exist'), 404, 'WEBHOOK_EVENT_NOT_FOUND')
  assertProblem(t, await replay('x'.repeat(101)), 400, 'VALIDATION_FAILED', 'an over-long id')
})

t.test('webhook_events_total counts deliveries and their outcomes per provider', async (t) => {
  const before = await webhookCounters(app)
  const params = inboundSms()
  t.equal((await deliverSignedForm(app, params)).statusCode, 200, 'twilio: new')
  t.equal((await deliverSignedForm(app, params)).statusCode, 200, 'twilio: redelivered')
  const forged = await deliverSignedForm(app, inboundSms(), 'not_the_auth_token')
  t.equal(forged.statusCode, 400, 'twilio: forged')
  const missing = await deliverTwilio(app, { body: formBody(inboundSms()) })
  t.equal(missing.statusCode, 400, 'twilio: unsigned')

  const batch = messengerBatch(['counted one', 'counted two'])
  t.same((await deliverSignedMeta(app, batch)).json(), { received: true, duplicate: false }, 'meta: new batch')
  t.same((await deliverSignedMeta(app, batch)).json(), { received: true, duplicate: true }, 'meta: redelivered')
  t.equal((await deliverMeta(app, batch, `sha256=${'0'.repeat(64)}`)).statusCode, 400, 'meta: bad signature')
  t.equal((await deliverSignedMeta(app, 'not json')).statusCode, 400, 'meta: not an event')

  await assertCounted(
    t,
    before,
    {
      'twilio/received': 1,
      'twilio/duplicate': 1,
      'twilio/rejected': 2,
      'twilio/processed': 1,
      'meta/received': 2,
      'meta/duplicate': 2,
      'meta/rejected': 2,
      'meta/ignored': 2,
    },
    'each delivery and outcome counted once',
  )
})

t.test('readiness reports the queue depth while nothing works the queue', async (t) => {
  const idle = await buildTestApp(t, { env: { ...WEBHOOK_ENV, WORKERS: 'false' } })
  const before = await readiness(idle)
  t.equal(before.statusCode, 200)
  t.match(before.jobs, { status: 'healthy', dead: 0 })
  const queued = before.jobs?.queued ?? -1
  t.ok(queued >= 0, 'the depth is reported')
  for (let i = 0; i < 3; i++) t.equal((await deliverSignedForm(idle, inboundSms())).statusCode, 200)
  const after = await readiness(idle)
  t.match(after.jobs, { status: 'healthy', dead: 0, queued: queued + 3 }, 'three more jobs wait')
  t.same(
    (await storedEvents(idle)).map((row) => row.status),
    ['received', 'received', 'received'],
    'stored, not processed',
  )
})

// ---------------------------------------------------------------------------------------------------
// `npm run admin:grant`

interface CliResult {
  code: number | null
  stdout: string
  stderr: string
}

/** Runs the admin:grant CLI (through npm, or directly with node) against `env`'s database. */
function runGrantCli(t: Test, args: string[], env: Record<string, string | undefined>, viaNpm = false) {
  const command = viaNpm ? 'npm' : process.execPath
  const argv = viaNpm
    ? ['run', '--silent', 'admin:grant', '--', ...args]
    : ['--import', 'tsx', 'src/modules/auth/admin-grant-cli.ts', ...args]
  const child = spawn(command, argv, {
    cwd: ROOT,
    env: { ...process.env, NODE_ENV: 'test', LOG_LEVEL: 'silent', ENCRYPTION_KEY: TEST_ENCRYPTION_KEY, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let stdout = ''
  let stderr = ''
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk))
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk))
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
  })
  return new Promise<CliResult>((resolve) => {
    child.once('close', (code) => {
      const own = (text: string) =>
        text
          .split('\n')
          .filter((line) => line.trim() !== '' && !isToolNoise(line))
          .join('\n')
      resolve({ code, stdout: own(stdout), stderr: own(stderr) })
    })
  })
}

/**
 * The database the CLI and an app share. On PostgreSQL the app stays up while the CLI changes its
 * database; the embedded engine belongs to one process at a time, so there the app is closed
 * while the CLI runs and reopened on the same data directory afterwards.
 */
interface SharedDatabase {
  cliEnv: Record<string, string | undefined>
  /** Whether the CLI needs the database to itself (no app open, one CLI at a time). */
  exclusive: boolean
  open(): Promise<FastifyInstance>
  close(): Promise<void>
}

async function sharedDatabase(t: Test): Promise<SharedDatabase> {
  if (engine === 'postgres') {
    const running = await buildTestApp(t)
    const result = (await running.db.execute(sql`select current_database() as name`)) as unknown as {
      rows: { name: string }[]
    }
    const name = result.rows[0]?.name ?? ''
    return {
      cliEnv: { DATABASE_URL: withDatabase(postgresAdminUrl ?? '', name), DATA_DIR: undefined },
      exclusive: false,
      open: async () => running,
      close: async () => {},
    }
  }
  const dataDir = mkdtempSync(join(tmpdir(), 'backplane-admin-grant-'))
  let opened: FastifyInstance | null = null
  let seeded = false
  t.teardown(async () => {
    await opened?.close()
    rmSync(dataDir, { recursive: true, force: true })
  })
  return {
    cliEnv: { DATA_DIR: dataDir, DATABASE_URL: undefined },
    exclusive: true,
    async open() {
      // The first start copies the suite's migrated template into the data directory when there is one.
      const template = process.env.TEST_PGLITE_TEMPLATE
      const database =
        !seeded && template
          ? await openPglite(join(dataDir, 'pglite'), { pgliteDataDirArchive: new Blob([readFileSync(template)]) })
          : undefined
      seeded = true
      opened = await buildApp(testConfig({ DATA_DIR: dataDir }), database ? { database } : {})
      await opened.ready()
      return opened
    },
    async close() {
      await opened?.close()
      opened = null
    },
  }
}

t.test('npm run admin:grant grants and revokes the platform-admin flag', async (t) => {
  const shared = await sharedDatabase(t)
  let target = await shared.open()
  const admin: Account = await account(target)
  const user = await account(target)
  const listAs = (who: Account) =>
    target.inject({ method: 'GET', url: EVENTS, headers: who.headers, remoteAddress: uniqueAddress() })
  assertProblem(t, await listAs(admin), 403, 'PLATFORM_ADMIN_REQUIRED', 'before the grant')
  await shared.close()

  // The email as an operator might type it: normalised like at signup. Usage errors need no
  // database, so they run alongside; so does the unknown email where the database is shared.
  const nobody = uniqueEmail('nobody')
  const unknownEmail = () => runGrantCli(t, [nobody], shared.cliEnv)
  const [granted, usage, unknownEarly] = await Promise.all([
    runGrantCli(t, [` ${admin.email.toUpperCase()} `], shared.cliEnv, true),
    runGrantCli(t, [], shared.cliEnv),
    shared.exclusive ? null : unknownEmail(),
  ])
  t.equal(granted.code, 0, `granted (stderr: ${granted.stderr})`)
  t.equal(granted.stdout, `${admin.email} is now a platform administrator.`)
  t.equal(usage.code, 1, 'no email: exit code 1')
  t.equal(usage.stderr, 'Usage: npm run admin:grant -- [--revoke] <email>', 'no email: the usage')
  t.equal(usage.stdout, '', 'no email: nothing else')

  target = await shared.open()
  t.equal((await listAs(admin)).statusCode, 200, 'the granted account lists events')
  assertProblem(t, await listAs(user), 403, 'PLATFORM_ADMIN_REQUIRED', 'another account still cannot')
  await shared.close()

  const revoked = await runGrantCli(t, ['--revoke', admin.email], shared.cliEnv)
  const unknown = unknownEarly ?? (await unknownEmail())
  t.equal(revoked.code, 0, `revoked (stderr: ${revoked.stderr})`)
  t.equal(revoked.stdout, `${admin.email} is no longer a platform administrator.`)
  t.equal(unknown.code, 1, 'an unknown email: exit code 1')
  t.equal(unknown.stderr, `No account has the email ${nobody}; sign up first.`, 'an unknown email: says so')
  t.equal(unknown.stdout, '')

  target = await shared.open()
  assertProblem(t, await listAs(admin), 403, 'PLATFORM_ADMIN_REQUIRED', 'after the revoke, on the next request')
  await shared.close()
})
