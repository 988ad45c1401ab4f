import { eq } from 'drizzle-orm'
import type { FastifyInstance } from 'fastify'
import t from 'tap'
import { webhookDeliveries } from '../../src/db/schema/index.js'
import { buildTestApp } from '../helper.js'
import { type Account, account, assertProblem, callAs, type Method, type Test, walkPages } from '../auth/support.js'
import { type ReceivedDelivery, Receiver, verifyDelivery } from './receiver.js'
import { eventually, FAST } from './support.js'

// What happens to an outbound delivery after the receiver answers: the retry schedule and its
// jitter, Retry-After, redirects, 410, timeouts, endpoints disabled for failing, retries by hand
// and the delivery log. Each group of tests shares one app configured with short durations.

interface Attempt {
  id: string
  deliveryId: string
  eventId: string
  eventType: string
  attempt: number
  attemptedAt: string
  succeeded: boolean
  statusCode: number | null
  latencyMs: number
  responseBody: string | null
  error: string | null
  nextRetryAt: string | null
  deliveryStatus: 'pending' | 'succeeded' | 'failed'
}

interface Endpoint {
  id: string
  orgId: string
  url: string
  enabled: boolean
  disabledReason: string | null
  updatedAt: string
}

interface Queued {
  deliveryId: string
  eventId: string
}

/** How much later than its scheduled time an attempt may come: a job poll (500 ms) and slow machines. */
const LATE_MS = 2000

/** The milliseconds between two ISO timestamps. */
const between = (from: string, to: string) => Date.parse(to) - Date.parse(from)

/** The env of an app delivering on this schedule (private targets allowed: receivers are local). */
const envWith = (settings: Record<string, string>) => ({
  ...FAST,
  WEBHOOK_ALLOW_PRIVATE_TARGETS: 'true',
  JOBS_MAINTENANCE_INTERVAL_SECONDS: '1',
  ...settings,
})

/** Calls and readings against one app. */
function harness(app: FastifyInstance) {
  const call = (who: Pick<Account, 'headers'>, method: Method, url: string, payload?: Record<string, unknown>) =>
    callAs(app, who, method, url, payload)

  /** The whole delivery log of an endpoint (newest first), read page by page. */
  async function log(t: Test, who: Account, endpointId: string): Promise<Attempt[]> {
    const { items } = await walkPages<Attempt>(t, (cursor) =>
      call(who, 'GET', `/webhook-endpoints/${endpointId}/deliveries?limit=5${cursor ? `&cursor=${cursor}` : ''}`),
    )
    return items
  }

  return {
    call,

    async createEndpoint(who: Account, url: string, events: string[]) {
      const response = await call(who, 'POST', '/webhook-endpoints', { url, events })
      if (response.statusCode !== 201)
        throw new Error(`create endpoint answered ${response.statusCode}: ${response.body}`)
      return response.json() as Endpoint & { secret: string }
    },

    async endpoint(who: Account, id: string): Promise<Endpoint> {
      const response = await call(who, 'GET', `/webhook-endpoints/${id}`)
      if (response.statusCode !== 200) throw new Error(`get endpoint answered ${response.statusCode}: ${response.body}`)
      return response.json()
    },

    /** POST /test: a webhook.test event queued for this endpoint only. */
    async sendTest(who: Account, endpointId: string): Promise<Queued> {
      const response = await call(who, 'POST', `/webhook-endpoints/${endpointId}/test`)
      if (response.statusCode !== 202) throw new Error(`test answered ${response.statusCode}: ${response.body}`)
      return response.json()
    },

    async createProject(who: Account, name: string) {
      const response = await call(who, 'POST', '/projects', { orgId: who.personalOrgId, name })
      if (response.statusCode !== 201)
        throw new Error(`create project answered ${response.statusCode}: ${response.body}`)
      return response.json() as { id: string }
    },

    log,

    /** The logged attempts of one delivery, first attempt first. */
    async attemptsOf(t: Test, who: Account, endpointId: string, deliveryId: string): Promise<Attempt[]> {
      const items = await log(t, who, endpointId)
      return items.filter((entry) => entry.deliveryId === deliveryId).sort((a, b) => a.attempt - b.attempt)
    },
  }
}

/**
 * Each request came after the one before by at least ~its step of the schedule (jitter is ±10%,
 * counted from the failure) and not much later: `stepsMs[i]` is the delay before request `i`.
 */
function checkGaps(t: Test, received: ReceivedDelivery[], stepsMs: number[]) {
  for (let i = 1; i < received.length; i++) {
    const gap = (received[i]?.receivedAt ?? 0) - (received[i - 1]?.receivedAt ?? 0)
    const step = stepsMs[i] ?? 0
    t.ok(gap >= 0.85 * step, `attempt ${i + 1} came ${gap} ms after the one before: at least ${0.85 * step} ms`)
    t.ok(gap <= 1.1 * step + LATE_MS, `attempt ${i + 1} came ${gap} ms after the one before: not wildly later`)
  }
}

/**
 * Each logged retry time is the attempt's step from its failure, jitter included, and the next
 * attempt was not made before it.
 */
function checkLoggedRetries(t: Test, attempts: Attempt[], stepsMs: number[], firstStep = 1) {
  for (const [i, entry] of attempts.entries()) {
    if (entry.nextRetryAt === null) continue
    const step = stepsMs[firstStep + i] ?? 0
    const delay = between(entry.attemptedAt, entry.nextRetryAt)
    t.ok(delay >= 0.9 * step - 1, `attempt ${entry.attempt} retried ${delay} ms later: at least ${0.9 * step} ms`)
    t.ok(
      delay <= 1.1 * step + entry.latencyMs + 100,
      `attempt ${entry.attempt} retried ${delay} ms later: at most ${1.1 * step} ms after its answer`,
    )
    const next = attempts[i + 1]
    if (next) {
      t.ok(
        Date.parse(next.attemptedAt) >= Date.parse(entry.nextRetryAt) - 2,
        `attempt ${next.attempt} was not made before its retry time`,
      )
    }
  }
}

// ---------------------------------------------------------------------------------------------------

const SCHEDULE_MS = [0, 300, 600]

// Timeouts are generous next to the receivers' instant answers: a busy machine must not turn a 500 into a timeout.
t.test('schedule 0,300ms,600ms, timeout 1s', async (t) => {
  const app = await buildTestApp(t, {
    env: envWith({ WEBHOOK_RETRY_SCHEDULE: '0,300ms,600ms', WEBHOOK_DELIVERY_TIMEOUT: '1s' }),
  })
  const h = harness(app)

  t.test('a receiver failing every time gets each attempt of the schedule, then the delivery fails', async (t) => {
    const owner = await account(app)
    const receiver = await Receiver.start(t)
    receiver.answer = () => ({ status: 500, body: 'nope' })
    const endpoint = await h.createEndpoint(owner, receiver.url, ['*'])
    const sent = await h.sendTest(owner, endpoint.id)

    let attempts: Attempt[] = []
    t.ok(
      await eventually(async () => {
        attempts = await h.attemptsOf(t, owner, endpoint.id, sent.deliveryId)
        return attempts.length === 3 && attempts.every((entry) => entry.deliveryStatus === 'failed')
      }),
      'three attempts logged and the delivery failed',
    )
    t.equal(receiver.received.length, 3, 'one request per attempt')
    t.same(
      attempts.map((entry) => entry.attempt),
      [1, 2, 3],
    )
    for (const entry of attempts) {
      t.match(entry, {
        deliveryId: sent.deliveryId,
        eventId: sent.eventId,
        eventType: 'webhook.test',
        succeeded: false,
        statusCode: 500,
        responseBody: 'nope',
        error: null,
      })
    }
    t.not(attempts[0]?.nextRetryAt, null, 'attempt 1 has a next retry')
    t.not(attempts[1]?.nextRetryAt, null, 'attempt 2 has a next retry')
    t.equal(attempts[2]?.nextRetryAt, null, 'the last attempt has none')
    checkGaps(t, receiver.received, SCHEDULE_MS)
    checkLoggedRetries(t, attempts, SCHEDULE_MS)

    for (const delivery of receiver.received) {
      t.equal(delivery.headers['webhook-id'], sent.eventId, 'the same webhook-id on every attempt')
      t.match(verifyDelivery(delivery, endpoint.secret), { id: sent.eventId, type: 'webhook.test' }, 'verifies')
    }
    t.equal(new Set(receiver.received.map((delivery) => delivery.body)).size, 1, 'the same body on every attempt')

    // Nothing after the last attempt.
    await new Promise((resolve) => setTimeout(resolve, 700))
    t.equal(receiver.received.length, 3, 'no attempt after the last one of the schedule')
  })

  t.test('a failure then a success: the retry succeeds and both attempts are logged', async (t) => {
    const owner = await account(app)
    const receiver = await Receiver.start(t)
    receiver.answer = (_delivery, index) => (index === 0 ? { status: 500 } : { status: 200, body: 'thanks' })
    const endpoint = await h.createEndpoint(owner, receiver.url, ['*'])
    const sent = await h.sendTest(owner, endpoint.id)

    let attempts: Attempt[] = []
    t.ok(
      await eventually(async () => {
        attempts = await h.attemptsOf(t, owner, endpoint.id, sent.deliveryId)
        return attempts.length === 2
      }),
      'two attempts logged',
    )
    const [first, second] = attempts
    t.match(first, { attempt: 1, statusCode: 500, succeeded: false, deliveryStatus: 'succeeded' })
    t.not(first?.nextRetryAt, null)
    t.match(second, {
      attempt: 2,
      statusCode: 200,
      succeeded: true,
      responseBody: 'thanks',
      error: null,
      nextRetryAt: null,
      deliveryStatus: 'succeeded',
    })
    t.equal(receiver.received.length, 2)
    checkGaps(t, receiver.received, SCHEDULE_MS)
    checkLoggedRetries(t, attempts, SCHEDULE_MS)
    t.equal(receiver.nth(1).headers['webhook-id'], receiver.nth(0).headers['webhook-id'])
  })

  t.test('a redirect is a failure, never followed, and retried on schedule', async (t) => {
    const owner = await account(app)
    const canary = await Receiver.start(t)
    const receiver = await Receiver.start(t)
    receiver.answer = () => ({ status: 302, headers: { location: canary.url } })
    const endpoint = await h.createEndpoint(owner, receiver.url, ['*'])
    const sent = await h.sendTest(owner, endpoint.id)

    let attempts: Attempt[] = []
    t.ok(
      await eventually(async () => {
        attempts = await h.attemptsOf(t, owner, endpoint.id, sent.deliveryId)
        return attempts.length === 3 && attempts.every((entry) => entry.deliveryStatus === 'failed')
      }),
      'every attempt of the schedule made, then the delivery failed',
    )
    for (const entry of attempts) {
      t.match(entry, { statusCode: 302, succeeded: false, error: 'redirect not followed' })
    }
    t.equal(attempts[2]?.nextRetryAt, null)
    t.equal(receiver.received.length, 3)
    checkGaps(t, receiver.received, SCHEDULE_MS)
    checkLoggedRetries(t, attempts, SCHEDULE_MS)
    t.equal(canary.received.length, 0, 'the Location was never requested')
  })

  t.test('no answer within the delivery timeout is logged as timed out and retried', async (t) => {
    const owner = await account(app)
    const receiver = await Receiver.start(t)
    receiver.answer = (_delivery, index) => (index === 0 ? { status: 200, delayMs: 4000 } : { status: 200 })
    const endpoint = await h.createEndpoint(owner, receiver.url, ['*'])
    const sent = await h.sendTest(owner, endpoint.id)

    let attempts: Attempt[] = []
    t.ok(
      await eventually(async () => {
        attempts = await h.attemptsOf(t, owner, endpoint.id, sent.deliveryId)
        return attempts.length === 2
      }),
      'two attempts logged',
    )
    const [first, second] = attempts
    t.match(first, { attempt: 1, statusCode: null, responseBody: null, error: 'timed out', succeeded: false })
    t.not(first?.nextRetryAt, null, 'retried')
    const latency = first?.latencyMs ?? 0
    t.ok(latency >= 900 && latency < 3000, `gave up after the 1 s timeout (${latency} ms), not the 4 s answer`)
    t.match(second, { attempt: 2, statusCode: 200, succeeded: true, deliveryStatus: 'succeeded' })
    checkLoggedRetries(t, attempts, SCHEDULE_MS)
  })

  t.test('a failed delivery is retried by hand: attempts continue and the schedule starts over', async (t) => {
    const owner = await account(app)
    const receiver = await Receiver.start(t)
    receiver.answer = () => ({ status: 503 })
    const endpoint = await h.createEndpoint(owner, receiver.url, ['*'])
    const sent = await h.sendTest(owner, endpoint.id)
    const retryUrl = `/webhook-endpoints/${endpoint.id}/deliveries/${sent.deliveryId}/retry`

    let attempts: Attempt[] = []
    t.ok(
      await eventually(async () => {
        attempts = await h.attemptsOf(t, owner, endpoint.id, sent.deliveryId)
        return attempts.length >= 1
      }),
    )
    t.equal(attempts[0]?.deliveryStatus, 'pending', 'after its first attempt the delivery is pending')
    assertProblem(t, await h.call(owner, 'POST', retryUrl), 409, 'WEBHOOK_DELIVERY_NOT_FAILED', 'pending')

    t.ok(
      await eventually(async () => {
        attempts = await h.attemptsOf(t, owner, endpoint.id, sent.deliveryId)
        return attempts.length === 3 && attempts.every((entry) => entry.deliveryStatus === 'failed')
      }),
      'out of attempts',
    )
    // The 4th request fails once more, the 5th succeeds.
    receiver.answer = (_delivery, index) => (index === 3 ? { status: 500 } : { status: 200 })
    const retried = await h.call(owner, 'POST', retryUrl)
    t.equal(retried.statusCode, 202)
    t.same(retried.json(), { deliveryId: sent.deliveryId, eventId: sent.eventId, status: 'pending' })

    t.ok(
      await eventually(async () => {
        attempts = await h.attemptsOf(t, owner, endpoint.id, sent.deliveryId)
        return attempts.length === 5
      }),
      'two more attempts',
    )
    t.same(
      attempts.map((entry) => [entry.attempt, entry.statusCode]),
      [
        [1, 503],
        [2, 503],
        [3, 503],
        [4, 500],
        [5, 200],
      ],
    )
    const fourth = attempts[3]
    t.not(fourth?.nextRetryAt, null, 'the schedule started over: a failure after the retry is retried again')
    if (fourth?.nextRetryAt) {
      const delay = between(fourth.attemptedAt, fourth.nextRetryAt)
      t.ok(delay < 0.9 * (SCHEDULE_MS[2] ?? 0), `from its first step (${delay} ms)`)
    }
    checkLoggedRetries(t, attempts.slice(3), SCHEDULE_MS)
    t.equal(attempts[4]?.deliveryStatus, 'succeeded')
    t.equal(receiver.received.length, 5)
    for (const delivery of receiver.received) {
      t.equal(delivery.headers['webhook-id'], sent.eventId)
      verifyDelivery(delivery, endpoint.secret)
    }
    assertProblem(t, await h.call(owner, 'POST', retryUrl), 409, 'WEBHOOK_DELIVERY_NOT_FAILED', 'succeeded')
  })

  t.test('the log keeps exactly the first 1024 bytes of an answer', async (t) => {
    const owner = await account(app)
    const receiver = await Receiver.start(t)
    const body = Array.from({ length: 5000 }, (_, i) => String.fromCharCode(65 + (i % 26))).join('')
    receiver.answer = (_delivery, index) => (index === 0 ? { status: 500, body } : { status: 200, body: 'ok' })
    const endpoint = await h.createEndpoint(owner, receiver.url, ['*'])
    const sent = await h.sendTest(owner, endpoint.id)

    let attempts: Attempt[] = []
    t.ok(
      await eventually(async () => {
        attempts = await h.attemptsOf(t, owner, endpoint.id, sent.deliveryId)
        return attempts.length === 2
      }),
    )
    t.equal(attempts[0]?.responseBody?.length, 1024)
    t.equal(attempts[0]?.responseBody, body.slice(0, 1024))
    t.equal(attempts[1]?.responseBody, 'ok')
  })
})

// ---------------------------------------------------------------------------------------------------

// Retry-After up to the longest step (3 s) is honoured; an endpoint failing for 1 s is disabled.
t.test('schedule 0,1200ms,3s, disabled after failing for 1 s', async (t) => {
  const app = await buildTestApp(t, {
    env: envWith({
      WEBHOOK_RETRY_SCHEDULE: '0,1200ms,3s',
      WEBHOOK_DELIVERY_TIMEOUT: '2s',
      WEBHOOK_DISABLE_AFTER_FAILING: '1s',
    }),
  })
  const h = harness(app)

  t.test('429 with Retry-After: the retry waits, and so does every other delivery to that endpoint', async (t) => {
    const owner = await account(app)
    const receiver = await Receiver.start(t)
    receiver.answer = (_delivery, index) =>
      index === 0 ? { status: 429, headers: { 'retry-after': '2' } } : { status: 200 }
    const endpoint = await h.createEndpoint(owner, receiver.url, ['*'])
    const sent = await h.sendTest(owner, endpoint.id)

    let attempts: Attempt[] = []
    t.ok(
      await eventually(async () => {
        attempts = await h.attemptsOf(t, owner, endpoint.id, sent.deliveryId)
        return attempts.length === 1
      }),
    )
    const [first] = attempts
    t.match(first, { attempt: 1, statusCode: 429, succeeded: false, deliveryStatus: 'pending' })
    const asked = first?.nextRetryAt ? between(first.attemptedAt, first.nextRetryAt) : 0
    t.ok(asked >= 2000, `the retry is set ${asked} ms later, as asked, not after the 200 ms step`)

    // A new event while the receiver asked to be left alone.
    await h.createProject(owner, 'During the pause')
    const committedAt = Date.now()
    const askedUntil = receiver.nth(0).receivedAt + 2000
    t.ok(committedAt < askedUntil - 1000, 'the project was committed well within the pause')

    t.ok(await eventually(() => receiver.received.length === 3), 'the retry and the project arrived')
    t.same(
      receiver.events().map((event) => event.type),
      ['webhook.test', 'webhook.test', 'project.created'],
      'the retried delivery first, then the held-back one',
    )
    for (const [index, delivery] of receiver.received.entries()) {
      if (index === 0) continue
      const after = delivery.receivedAt - receiver.nth(0).receivedAt
      t.ok(after >= 1950, `request ${index + 1} came ${after} ms after the 429: not before Retry-After`)
      t.ok(after <= 2000 + LATE_MS, `request ${index + 1} came ${after} ms after the 429: not wildly later`)
    }
    attempts = await h.attemptsOf(t, owner, endpoint.id, sent.deliveryId)
    t.match(attempts[1], { attempt: 2, statusCode: 200, deliveryStatus: 'succeeded' })
  })

  t.test('503 with Retry-After: the endpoint waits as asked, capped at the longest step', async (t) => {
    const owner = await account(app)
    const receiver = await Receiver.start(t)
    // The test event: 503 asking for 2 s, then 200. The project: 503 asking for an hour.
    receiver.answer = (_delivery, index) =>
      index === 0
        ? { status: 503, headers: { 'retry-after': '2' } }
        : index === 1
          ? { status: 200 }
          : { status: 503, headers: { 'retry-after': '3600' } }
    const endpoint = await h.createEndpoint(owner, receiver.url, ['*'])
    const sent = await h.sendTest(owner, endpoint.id)
    t.ok(await eventually(() => receiver.received.length === 1))
    await h.createProject(owner, 'During the wait')
    t.ok(Date.now() < receiver.nth(0).receivedAt + 1000, 'the project was committed well within the time asked for')

    t.ok(await eventually(() => receiver.received.length === 3), 'the retry and the project arrived')
    t.same(
      receiver.events().map((event) => event.type),
      ['webhook.test', 'webhook.test', 'project.created'],
    )
    for (const [index, delivery] of receiver.received.entries()) {
      if (index === 0) continue
      const after = delivery.receivedAt - receiver.nth(0).receivedAt
      t.ok(after >= 1950, `request ${index + 1} came ${after} ms after the 503: not before Retry-After`)
      t.ok(after <= 2000 + LATE_MS, `request ${index + 1} came ${after} ms after the 503: not wildly later`)
    }
    const attempts = await h.attemptsOf(t, owner, endpoint.id, sent.deliveryId)
    t.match(attempts, [
      { attempt: 1, statusCode: 503, succeeded: false },
      { attempt: 2, statusCode: 200, succeeded: true, deliveryStatus: 'succeeded' },
    ])
    const [first] = attempts
    const asked = first?.nextRetryAt ? between(first.attemptedAt, first.nextRetryAt) : 0
    t.ok(asked >= 2000 && asked <= 2000 + (first?.latencyMs ?? 0) + 100, `retry set ${asked} ms later`)

    // An hour is asked for: the wait is the longest step of the schedule (3 s), jitter included.
    let project: Attempt | undefined
    t.ok(
      await eventually(async () => {
        project = (await h.log(t, owner, endpoint.id)).find((entry) => entry.eventType === 'project.created')
        return project !== undefined
      }),
    )
    t.match(project, { attempt: 1, statusCode: 503, deliveryStatus: 'pending' })
    const capped = project?.nextRetryAt ? between(project.attemptedAt, project.nextRetryAt) : 0
    t.ok(capped >= 3000 - 1, `retry set ${capped} ms later: at least the 3 s step`)
    t.ok(capped <= 3300 + (project?.latencyMs ?? 0) + 100, `retry set ${capped} ms later: not the hour asked for`)

    // Not waiting 3 s for the last attempt: the endpoint goes, and its deliveries with it.
    t.equal((await h.call(owner, 'DELETE', `/webhook-endpoints/${endpoint.id}`)).statusCode, 204)
  })

  t.test('410 disables the endpoint and tells the org; enabling it again resumes deliveries', async (t) => {
    const owner = await account(app)
    const gone = await Receiver.start(t)
    // A 500 with Retry-After first: the endpoint is left alone until the retry 2 s later, so the
    // second project waits behind it; the retry is answered 410.
    gone.answer = (_delivery, index) =>
      index === 0 ? { status: 500, headers: { 'retry-after': '2' } } : { status: 410, body: 'gone for good' }
    const watching = await Receiver.start(t)
    const endpoint = await h.createEndpoint(owner, gone.url, ['project.created'])
    const watcher = await h.createEndpoint(owner, watching.url, ['*'])

    await h.createProject(owner, 'First')
    t.ok(await eventually(() => gone.received.length === 1), 'the first attempt was answered 500')
    await h.createProject(owner, 'Held')
    t.ok(await eventually(() => watching.received.length >= 3), 'the watcher got both projects and the disabling')
    t.equal(gone.received.length, 2, 'the retry was answered 410; nothing else was sent')
    t.same(
      gone.events().map((event) => event.data.name),
      ['First', 'First'],
    )
    const disabled = await h.endpoint(owner, endpoint.id)
    t.match(disabled, { enabled: false, disabledReason: 'gone' })

    const events = watching.events()
    t.same(
      events.map((event) => event.type),
      ['project.created', 'project.created', 'webhook.endpoint.disabled'],
    )
    const notice = events[2]
    t.same(
      notice?.data,
      { endpointId: endpoint.id, url: gone.url, reason: 'gone', disabledAt: disabled.updatedAt },
      'the event names the endpoint, its URL, why and when',
    )
    t.equal(notice?.orgId, owner.personalOrgId)
    verifyDelivery(watching.nth(2), watcher.secret)

    const log = (await h.log(t, owner, endpoint.id)).sort((a, b) => a.attempt - b.attempt)
    t.same(
      log.map((entry) => [entry.attempt, entry.statusCode, entry.deliveryStatus]),
      [
        [1, 500, 'failed'],
        [2, 410, 'failed'],
      ],
      '410 is not retried',
    )
    t.match(log[1], {
      succeeded: false,
      responseBody: 'gone for good',
      nextRetryAt: null,
      eventType: 'project.created',
    })
    const deliveries = await app.db
      .select({ id: webhookDeliveries.id, status: webhookDeliveries.status, attempts: webhookDeliveries.attempts })
      .from(webhookDeliveries)
      .where(eq(webhookDeliveries.endpointId, endpoint.id))
    const held = deliveries.find((delivery) => delivery.id !== log[0]?.deliveryId)
    t.equal(deliveries.length, 2)
    t.match(held, { status: 'failed', attempts: 0 }, 'the delivery waiting behind it failed without an attempt')
    const heldRetryUrl = `/webhook-endpoints/${endpoint.id}/deliveries/${held?.id}/retry`

    // Disabled: new events are not delivered to it, and it cannot be sent tests or retries.
    gone.answer = () => ({ status: 200 })
    await h.createProject(owner, 'Second')
    t.ok(await eventually(() => watching.received.length >= 4), 'the watcher got the next project')
    assertProblem(
      t,
      await h.call(owner, 'POST', `/webhook-endpoints/${endpoint.id}/test`),
      409,
      'WEBHOOK_ENDPOINT_DISABLED',
    )
    assertProblem(t, await h.call(owner, 'POST', heldRetryUrl), 409, 'WEBHOOK_ENDPOINT_DISABLED')
    await new Promise((resolve) => setTimeout(resolve, 500))
    t.equal(gone.received.length, 2, 'nothing more reached the disabled endpoint')

    const enabled = await h.call(owner, 'PATCH', `/webhook-endpoints/${endpoint.id}`, { enabled: true })
    t.equal(enabled.statusCode, 200)
    t.match(enabled.json(), { enabled: true, disabledReason: null })
    t.match(await h.endpoint(owner, endpoint.id), { enabled: true, disabledReason: null })
    await h.createProject(owner, 'Third')
    t.ok(await eventually(() => gone.received.length === 3), 'new events reach it again')
    t.match(gone.events()[2]?.data, { name: 'Third' }, 'not the project created while it was disabled')
    verifyDelivery(gone.nth(2), endpoint.secret)

    // What failed when it was disabled goes out when retried by hand.
    t.equal((await h.call(owner, 'POST', heldRetryUrl)).statusCode, 202)
    t.ok(await eventually(() => gone.received.length === 4))
    t.match(gone.events()[3]?.data, { name: 'Held' })
    t.equal(
      watching.events().filter((event) => event.type === 'webhook.endpoint.disabled').length,
      1,
      'one disabled event',
    )
  })

  /** An endpoint answering 500 until it is disabled for failing, and a watcher of its org. */
  async function failingEndpoint(t: Test) {
    const owner = await account(app)
    const receiver = await Receiver.start(t)
    receiver.answer = () => ({ status: 500 })
    const watching = await Receiver.start(t)
    const endpoint = await h.createEndpoint(owner, receiver.url, ['*'])
    await h.createEndpoint(owner, watching.url, ['webhook.endpoint.disabled'])
    const sent = await h.sendTest(owner, endpoint.id)
    let current = await h.endpoint(owner, endpoint.id)
    t.ok(
      await eventually(async () => {
        current = await h.endpoint(owner, endpoint.id)
        return !current.enabled
      }),
      'the endpoint was disabled',
    )
    return { owner, receiver, watching, endpoint, sent, disabled: current }
  }

  t.test('an endpoint failing for WEBHOOK_DISABLE_AFTER_FAILING is disabled, and the org told', async (t) => {
    const { owner, receiver, watching, endpoint, sent, disabled } = await failingEndpoint(t)
    t.equal(disabled.disabledReason, 'failing')
    const attempts = await h.attemptsOf(t, owner, endpoint.id, sent.deliveryId)
    t.same(
      attempts.map((entry) => [entry.attempt, entry.statusCode, entry.deliveryStatus]),
      [
        [1, 500, 'failed'],
        [2, 500, 'failed'],
      ],
      'the first failure did not disable it; the one a second later did',
    )
    const failedFor = between(attempts[0]?.attemptedAt ?? '', attempts[1]?.attemptedAt ?? '')
    t.ok(failedFor >= 1000, `disabled after failing for ${failedFor} ms`)
    t.equal(receiver.received.length, 2)

    t.ok(await eventually(() => watching.received.length === 1), 'the watcher was told')
    t.same(watching.events()[0]?.data, {
      endpointId: endpoint.id,
      url: receiver.url,
      reason: 'failing',
      disabledAt: disabled.updatedAt,
    })
    t.equal(watching.events()[0]?.type, 'webhook.endpoint.disabled')
  })

  t.test('a success ends the failing streak', async (t) => {
    const owner = await account(app)
    const receiver = await Receiver.start(t)
    // First event: fails, then succeeds on its retry. Second event, well after the first failure:
    // fails once, then succeeds.
    receiver.answer = (_delivery, index) => (index % 2 === 0 ? { status: 500 } : { status: 200 })
    const endpoint = await h.createEndpoint(owner, receiver.url, ['*'])
    const first = await h.sendTest(owner, endpoint.id)
    t.ok(await eventually(() => receiver.received.length === 2))
    t.ok(
      await eventually(
        async () => (await h.attemptsOf(t, owner, endpoint.id, first.deliveryId))[1]?.deliveryStatus === 'succeeded',
      ),
    )
    const second = await h.sendTest(owner, endpoint.id)
    let attempts: Attempt[] = []
    t.ok(
      await eventually(async () => {
        attempts = await h.attemptsOf(t, owner, endpoint.id, second.deliveryId)
        return attempts.length === 2
      }),
      'the second event was retried after its failure',
    )
    t.same(
      attempts.map((entry) => [entry.statusCode, entry.deliveryStatus]),
      [
        [500, 'succeeded'],
        [200, 'succeeded'],
      ],
    )
    const sinceFirstFailure = receiver.nth(2).receivedAt - receiver.nth(0).receivedAt
    t.ok(sinceFirstFailure >= 1000, `the later failure came ${sinceFirstFailure} ms after the first one`)
    t.match(await h.endpoint(owner, endpoint.id), { enabled: true, disabledReason: null })
  })

  t.test('an endpoint enabled again gets a fresh failing streak', async (t) => {
    const { owner, receiver, watching, endpoint } = await failingEndpoint(t)
    t.ok(await eventually(() => watching.received.length === 1))
    // The receiver is back, with one more hiccup.
    const failed = receiver.received.length
    receiver.answer = (_delivery, index) => (index === failed ? { status: 500 } : { status: 200 })
    const enabled = await h.call(owner, 'PATCH', `/webhook-endpoints/${endpoint.id}`, { enabled: true })
    t.match(enabled.json(), { enabled: true, disabledReason: null })
    const sent = await h.sendTest(owner, endpoint.id)

    t.ok(
      await eventually(async () => (await h.attemptsOf(t, owner, endpoint.id, sent.deliveryId)).length >= 1),
      'the new event was attempted',
    )
    const after = await h.endpoint(owner, endpoint.id)
    t.match(
      after,
      { enabled: true, disabledReason: null },
      'one failure right after being enabled again does not disable it',
    )
    if (!after.enabled) return
    t.ok(
      await eventually(
        async () => (await h.attemptsOf(t, owner, endpoint.id, sent.deliveryId))[1]?.deliveryStatus === 'succeeded',
      ),
      'its retry succeeded',
    )
    t.equal(watching.received.length, 1, 'disabled once only')
  })
})
