import { setTimeout as sleep } from 'node:timers/promises'
import OpenAI from 'openai'
import { RateLimiterMemory } from 'rate-limiter-flexible'
import Stripe from 'stripe'
import t from 'tap'
import {
  type AttemptReport,
  type BreakerState,
  type Bucket,
  type CallOptions,
  createServicePolicy,
  type PolicySettings,
  ServiceUnavailableError,
} from '../../src/lib/resilience.js'
import { eventually } from '../helper.js'
import { startFakeOpenAI } from '../fakes/openai.js'
import { type FakeStripe, startFakeStripe } from '../fakes/stripe.js'

/**
 * The resilience policy of one third-party service (createServicePolicy) wrapped around the real
 * SDKs, with their own retries off, talking to the fake Stripe and OpenAI servers: which failures
 * are retried and after how long, the per-attempt timeout, the circuit breaker's life cycle, the
 * token bucket and the caller's signal. What the fakes record is the proof of what went out.
 */

type SettingsOverrides = Partial<Omit<PolicySettings, 'breaker'>> & { breaker?: Partial<PolicySettings['breaker']> }

/**
 * Generous timeouts and a breaker that never trips unless a test asks for it, so each test sees
 * only the mechanism it is about.
 */
function settings(overrides: SettingsOverrides = {}): PolicySettings {
  return {
    timeoutMs: 5000,
    maxRetries: 2,
    baseDelayMs: 10,
    maxDelayMs: 2000,
    ...overrides,
    breaker: { threshold: 0.5, minimumCalls: 1000, windowMs: 10_000, halfOpenAfterMs: 400, ...overrides.breaker },
  }
}

interface RetryReport {
  operation: string
  attempt: number
  delayMs: number
}

/** A policy whose every report is kept for the test to read. */
function observed(
  service: string,
  policySettings: PolicySettings,
  extra: { bucket?: Bucket; random?: () => number; onRetry?: (report: RetryReport) => void } = {},
) {
  const attempts: AttemptReport[] = []
  const retries: RetryReport[] = []
  const states: BreakerState[] = []
  const policy = createServicePolicy({
    service,
    settings: policySettings,
    bucket: extra.bucket,
    ...(extra.random ? { random: extra.random } : {}),
    onAttempt: (report) => attempts.push(report),
    onRetry: (report) => {
      retries.push(report)
      extra.onRetry?.(report)
    },
    onStateChange: (state) => states.push(state),
  })
  return { policy, attempts, retries, states, outcomes: () => attempts.map((a) => a.outcome) }
}

/** The rejection of a promise (fails the test if it resolves). */
async function rejection(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise
  } catch (error) {
    return error
  }
  throw new Error('expected the call to fail')
}

/** Milliseconds between consecutive requests the fake Stripe received. */
const gaps = (fake: FakeStripe) =>
  fake.requests.slice(1).map((r, i) => r.receivedAt - (fake.requests[i]?.receivedAt ?? 0))

const READ = { operation: 'balance.retrieve', idempotent: true } satisfies CallOptions
const CREATE = { operation: 'customers.create', idempotent: false } satisfies CallOptions

const openai = await startFakeOpenAI(t)
const openaiClient = new OpenAI({ apiKey: 'sk-test-resilience', baseURL: openai.baseURL, maxRetries: 0 })
const MESSAGES = [{ role: 'user' as const, content: 'hello' }]
/** A whole (not streamed) chat completion: a non-streaming call the policy may time out. */
const complete = (signal: AbortSignal) =>
  openaiClient.chat.completions.create({ model: 'gpt-4o-mini', messages: MESSAGES }, { signal })

t.afterEach(() => {
  openai.control.clear()
  openai.default = {}
})

t.test('retries follow idempotency', async (t) => {
  t.test('a non-idempotent call failing 500 is attempted once', async (t) => {
    const fake = await startFakeStripe(t)
    const stripe = fake.client()
    const { policy, attempts, retries } = observed('stripe', settings({ maxRetries: 3 }))
    fake.failNext({ status: 500, times: 3, path: '/v1/customers' })

    const error = await rejection(policy.call(CREATE, () => stripe.customers.create({ email: 'ada@example.test' })))
    t.type(error, Stripe.errors.StripeAPIError, "the service's own error reaches the caller")
    t.match(error, { statusCode: 500 })
    t.equal(fake.requestsTo('/v1/customers', 'POST').length, 1, 'one request: it may have been processed')
    t.same(retries, [], 'no retry scheduled')
    t.match(attempts, [{ operation: 'customers.create', attempt: 1, outcome: 'server_error', status: 500 }])
    t.equal(attempts.length, 1)
    t.equal(fake.customers.size, 0)
    const status = policy.status()
    t.ok(status.lastFailureAt instanceof Date, 'a 500 is a failure of the service')
    t.equal(status.lastSuccessAt, null)
    t.equal(status.recentCalls, 1)
    t.equal(status.recentErrorRate, 1)
  })

  t.test('the same call marked idempotent is retried and succeeds once the service recovers', async (t) => {
    const fake = await startFakeStripe(t)
    const stripe = fake.client()
    const { policy, attempts, retries } = observed('stripe', settings({ maxRetries: 2 }))
    fake.failNext({ status: 500, times: 2, path: '/v1/customers' })

    const customer = await policy.call({ ...CREATE, idempotent: true }, () =>
      stripe.customers.create({ email: 'ada@example.test' }, { idempotencyKey: 'signup-ada' }),
    )
    t.match(customer.id, /^cus_/)
    const sent = fake.requestsTo('/v1/customers', 'POST')
    t.equal(sent.length, 3, 'two failures, then the retry that succeeds')
    t.same(
      sent.map((r) => r.status),
      [500, 500, 200],
    )
    t.ok(
      sent.every((r) => r.idempotencyKey === 'signup-ada'),
      'every attempt carries the same idempotency key',
    )
    t.equal(fake.customers.size, 1, 'one customer for three attempts')
    t.same(
      attempts.map((a) => [a.attempt, a.outcome]),
      [
        [1, 'server_error'],
        [2, 'server_error'],
        [3, 'success'],
      ],
    )
    t.same(
      retries.map((r) => r.attempt),
      [1, 2],
      'a retry scheduled after each failure',
    )
    const status = policy.status()
    t.ok(status.lastSuccessAt instanceof Date)
    t.ok(status.lastFailureAt instanceof Date)
    t.equal(status.recentCalls, 3)
    t.equal(status.recentErrorRate, 0.667)
  })

  t.test('an idempotent call gives up after maxRetries retries', async (t) => {
    const fake = await startFakeStripe(t)
    const stripe = fake.client()
    const { policy, attempts } = observed('stripe', settings({ maxRetries: 2 }))
    fake.failNext({ status: 503, times: 10, path: '/v1/balance' })

    const error = await rejection(policy.call(READ, () => stripe.balance.retrieve()))
    t.match(error, { statusCode: 503 }, 'the last failure reaches the caller')
    t.equal(fake.requests.length, 3, 'the first attempt and two retries')
    t.equal(attempts.length, 3)

    const fewer = await rejection(policy.call({ ...READ, maxRetries: 0 }, () => stripe.balance.retrieve()))
    t.match(fewer, { statusCode: 503 })
    t.equal(fake.requests.length, 4, 'a call may ask for its own number of retries')
  })

  t.test('a connection error is retried only for an idempotent call, and is a failure of the service', async (t) => {
    const fake = await startFakeStripe(t)
    await fake.close()
    // The port is free now: every request is refused before anything is sent.
    const stripe = fake.client()
    const { policy, attempts } = observed('stripe', settings({ maxRetries: 2 }))

    const write = await rejection(policy.call(CREATE, () => stripe.customers.create({ email: 'x@example.test' })))
    t.type(write, Stripe.errors.StripeConnectionError)
    t.same(
      attempts.map((a) => a.outcome),
      ['connection_error'],
      'non-idempotent: not retried (the request may have been sent)',
    )

    const read = await rejection(policy.call(READ, () => stripe.balance.retrieve()))
    t.type(read, Stripe.errors.StripeConnectionError)
    t.same(
      attempts.slice(1).map((a) => a.outcome),
      ['connection_error', 'connection_error', 'connection_error'],
      'idempotent: retried',
    )
    t.ok(policy.status().lastFailureAt instanceof Date)
    t.equal(policy.status().recentErrorRate, 1)
  })
})

t.test('rate limits and Retry-After', async (t) => {
  t.test('a 429 with Retry-After: 1 is retried after about a second, even for a non-idempotent call', async (t) => {
    const fake = await startFakeStripe(t)
    const stripe = fake.client()
    // Any random value would give a much shorter backoff: the wait must be the service's.
    const { policy, attempts, retries } = observed('stripe', settings({ maxRetries: 2, baseDelayMs: 10 }), {
      random: () => 0.5,
    })
    fake.failNext({ status: 429, retryAfterSeconds: 1, path: '/v1/customers' })

    const customer = await policy.call(CREATE, () => stripe.customers.create({ email: 'ada@example.test' }))
    t.match(customer.id, /^cus_/)
    t.equal(fake.requests.length, 2, 'a 429 was not processed: repeating it is safe')
    t.same(
      retries.map((r) => r.delayMs),
      [1000],
      'the wait is what Retry-After asked',
    )
    const [gap] = gaps(fake)
    t.ok(gap !== undefined && gap >= 900 && gap < 5000, `the retry came about a second later (${gap} ms)`)
    t.match(attempts, [
      { attempt: 1, outcome: 'rate_limited', status: 429 },
      { attempt: 2, outcome: 'success' },
    ])
    t.equal(fake.customers.size, 1)
    t.ok(policy.status().lastFailureAt instanceof Date, 'a 429 is recorded as a failure')
  })

  t.test('retry-after-ms is preferred to Retry-After', async (t) => {
    const { policy, retries } = observed('openai', settings({ maxRetries: 1 }))
    const before = openai.requests.length
    openai.next({ failBeforeFirstToken: { status: 429, retryAfterMs: 60, retryAfterSeconds: 30 } })

    const started = performance.now()
    const completion = await policy.call({ operation: 'chat.create', idempotent: true }, complete)
    t.equal(completion.object, 'chat.completion')
    t.same(
      retries.map((r) => r.delayMs),
      [60],
    )
    t.ok(performance.now() - started < 5000, 'not the 30 s of Retry-After')
    t.equal(openai.requests.length, before + 2)
  })

  t.test('a Retry-After longer than maxDelayMs fails at once, without a retry', async (t) => {
    const fake = await startFakeStripe(t)
    const stripe = fake.client()
    const { policy, attempts, retries } = observed('stripe', settings({ maxRetries: 3, maxDelayMs: 500 }))
    fake.failNext({ status: 429, retryAfterSeconds: 5, times: 2 })

    for (const options of [CREATE, { ...CREATE, idempotent: true }]) {
      const started = performance.now()
      const error = await rejection(policy.call(options, () => stripe.customers.create({ email: 'a@example.test' })))
      const elapsed = performance.now() - started
      t.type(error, Stripe.errors.StripeRateLimitError, `idempotent: ${options.idempotent}`)
      t.ok(elapsed < 2500, `failed at once (${Math.round(elapsed)} ms), without waiting 5 s`)
    }
    t.equal(fake.requests.length, 2, 'one request per call')
    t.same(retries, [])
    t.same(
      attempts.map((a) => a.outcome),
      ['rate_limited', 'rate_limited'],
    )
  })
})

t.test("the service's own verdict on retrying wins", async (t) => {
  t.test('Stripe-Should-Retry: false stops the retry of an idempotent call', async (t) => {
    const fake = await startFakeStripe(t)
    const stripe = fake.client()
    const { policy, retries } = observed('stripe', settings({ maxRetries: 3 }))
    fake.failNext({ status: 503, shouldRetry: false, times: 3 })

    const error = await rejection(policy.call(READ, () => stripe.balance.retrieve()))
    t.match(error, { statusCode: 503 })
    t.equal(fake.requests.length, 1, 'not retried')
    t.same(retries, [])
  })

  t.test('x-should-retry: false stops the retry of an idempotent call', async (t) => {
    const { policy, retries } = observed('openai', settings({ maxRetries: 3 }))
    const before = openai.requests.length
    openai.next({ failBeforeFirstToken: { status: 500, shouldRetry: false } })
    openai.next({ failBeforeFirstToken: { status: 500, shouldRetry: false } })

    const error = await rejection(policy.call({ operation: 'chat.create', idempotent: true }, complete))
    t.type(error, OpenAI.APIError)
    t.match(error, { status: 500 })
    t.equal(openai.requests.length, before + 1, 'not retried')
    t.same(retries, [])
  })

  t.test('Stripe-Should-Retry: true allows the retry of a non-idempotent call', async (t) => {
    const fake = await startFakeStripe(t)
    const stripe = fake.client()
    const { policy, attempts } = observed('stripe', settings({ maxRetries: 2 }))
    // Stripe's lock_timeout: the request was refused before it was processed, and Stripe says so.
    fake.failNext({ status: 409, shouldRetry: true, path: '/v1/customers' })

    const customer = await policy.call(CREATE, () => stripe.customers.create({ email: 'ada@example.test' }))
    t.match(customer.id, /^cus_/)
    t.equal(fake.requests.length, 2)
    t.same(
      attempts.map((a) => a.outcome),
      ['client_error', 'success'],
    )
    t.equal(policy.status().lastFailureAt, null, 'a 409 is not a failure of the service')
  })
})

t.test('backoff has full jitter: random * min(max, base * 2^(n-1)) before retry n', async (t) => {
  const fake = await startFakeStripe(t)
  const stripe = fake.client()
  const draws = [0.5, 0.75, 0.9, 0.3, 0]
  let drawn = 0
  const { policy, retries } = observed('stripe', settings({ maxRetries: 5, baseDelayMs: 40, maxDelayMs: 100 }), {
    random: () => draws[drawn++] ?? 1,
  })
  fake.failNext({ status: 500, times: 5, path: '/v1/balance' })

  const balance = await policy.call(READ, () => stripe.balance.retrieve())
  t.equal(balance.object, 'balance')
  // Ceilings 40, 80, 100 (160 capped), 100 (320 capped), 100.
  t.same(
    retries.map((r) => r.delayMs),
    [20, 60, 90, 30, 0],
  )
  t.same(
    retries.map((r) => r.attempt),
    [1, 2, 3, 4, 5],
  )
  t.equal(drawn, 5, 'one random draw per retry')
  t.equal(fake.requests.length, 6)
  const observedGaps = gaps(fake)
  for (const [i, retry] of retries.entries()) {
    const gap = observedGaps[i] ?? 0
    // Date.now() is coarser than the timer: a millisecond of slack.
    t.ok(gap >= retry.delayMs - 1, `retry ${retry.attempt} waited its ${retry.delayMs} ms (${gap} ms apart)`)
  }
})

t.test('the per-attempt timeout', async (t) => {
  t.test('rejects with ServiceUnavailableError timeout and counts as a failure for the breaker', async (t) => {
    const fake = await startFakeStripe(t)
    const stripe = fake.client()
    const { policy, attempts, states } = observed(
      'stripe',
      settings({ timeoutMs: 100, maxRetries: 0, breaker: { minimumCalls: 2 } }),
    )
    fake.hangNext({ ms: 3000, times: 2, path: '/v1/balance' })

    const started = performance.now()
    const error = await rejection(policy.call(READ, () => stripe.balance.retrieve()))
    const elapsed = performance.now() - started
    t.type(error, ServiceUnavailableError)
    t.match(error, { service: 'stripe', reason: 'timeout', name: 'ServiceUnavailableError' })
    t.ok(elapsed >= 90 && elapsed < 2500, `rejected after the timeout, not the answer (${Math.round(elapsed)} ms)`)
    t.match(attempts, [{ attempt: 1, outcome: 'timeout', status: undefined }])
    t.ok((attempts[0]?.latencyMs ?? 0) >= 90, 'the attempt lasted until the timeout')
    t.ok(policy.status().lastFailureAt instanceof Date)
    t.equal(policy.status().state, 'closed', 'one attempt is below the minimum')

    await rejection(policy.call(READ, () => stripe.balance.retrieve()))
    t.equal(policy.status().state, 'open', 'two timeouts of two attempts open the circuit')
    t.same(states, ['open'])

    const before = fake.requests.length
    const refused = await rejection(policy.call(READ, () => stripe.balance.retrieve()))
    t.match(refused, { reason: 'circuit-open' })
    t.equal(fake.requests.length, before, 'the open circuit sends nothing')
  })

  t.test('an idempotent call that timed out is retried', async (t) => {
    const fake = await startFakeStripe(t)
    const stripe = fake.client()
    const { policy, attempts } = observed('stripe', settings({ timeoutMs: 150, maxRetries: 2 }))
    fake.hangNext({ ms: 2000, path: '/v1/balance' })

    const balance = await policy.call(READ, () => stripe.balance.retrieve())
    t.equal(balance.object, 'balance')
    t.same(
      attempts.map((a) => a.outcome),
      ['timeout', 'success'],
    )
    t.equal(fake.requests.length, 2)
  })

  t.test('aborts the request it gave up on', async (t) => {
    const { policy } = observed('openai', settings({ timeoutMs: 150, maxRetries: 0 }))
    openai.next({ hang: true })
    const index = openai.requests.length

    const error = await rejection(policy.call({ operation: 'chat.create', idempotent: true }, complete))
    t.match(error, { reason: 'timeout', service: 'openai' })
    const closed = await openai.waitForClose(index, 3000)
    t.equal(closed.status, undefined, 'the fake never answered; the client closed the connection')
  })

  t.test('a non-idempotent call that timed out is not retried: it may have been processed', async (t) => {
    const fake = await startFakeStripe(t)
    const stripe = fake.client()
    const { policy, attempts } = observed('stripe', settings({ timeoutMs: 100, maxRetries: 2 }))
    // Stripe does the work, then answers late (what hangNext does): a repeat would do it again.
    fake.hangNext({ ms: 600, times: 3, path: '/v1/customers' })

    const error = await rejection(policy.call(CREATE, () => stripe.customers.create({ email: 'ada@example.test' })))
    t.type(error, ServiceUnavailableError)
    t.match(error, { reason: 'timeout' })
    t.equal(attempts[0]?.outcome, 'timeout')
    t.ok(await eventually(() => fake.requests.every((r) => r.status !== undefined), 5000), 'every answer was sent')
    t.equal(fake.requestsTo('/v1/customers', 'POST').length, 1, 'one request')
    t.equal(fake.customers.size, 1, 'one customer, not one per attempt')
  })

  t.test('for a stream, covers the start of the answer only: the body may take longer', async (t) => {
    const { policy } = observed('openai', settings({ timeoutMs: 150, maxRetries: 0 }))
    openai.next({ tokens: 5, tokenDelayMs: 80 })

    const response = await policy.call({ operation: 'chat.stream', idempotent: true, stream: true }, (signal) =>
      openaiClient.chat.completions
        .create({ model: 'gpt-4o-mini', messages: MESSAGES, stream: true }, { signal })
        .asResponse(),
    )
    const started = performance.now()
    const body = await response.text()
    t.ok(performance.now() - started >= 150, 'the body took longer than the per-attempt timeout')
    for (let i = 0; i < 5; i++) t.match(body, `tok${i} `)
    t.match(body, 'data: [DONE]', 'read to its end')
  })
})

t.test('the circuit breaker', async (t) => {
  t.test('opens over the threshold, fails fast, half-opens after halfOpenAfterMs, closes on success', async (t) => {
    const fake = await startFakeStripe(t)
    const stripe = fake.client()
    const { policy, attempts, retries, states } = observed(
      'stripe',
      settings({ maxRetries: 0, breaker: { threshold: 0.5, minimumCalls: 4, halfOpenAfterMs: 600 } }),
    )
    const balance = (options: Partial<CallOptions> = {}) =>
      policy.call({ ...READ, ...options }, () => stripe.balance.retrieve())

    await balance()
    await balance()
    fake.failNext({ status: 500, times: 3, path: '/v1/balance' })
    await rejection(balance())
    await rejection(balance())
    t.equal(policy.status().state, 'closed', 'two failures of four attempts: not over the threshold')
    t.same(states, [])

    const opening = await rejection(balance())
    t.match(opening, { statusCode: 500 }, "the attempt that opens it fails with the service's error")
    t.equal(policy.status().state, 'open', 'three failures of five attempts')
    t.same(states, ['open'])
    const open = policy.status()
    t.equal(open.recentCalls, 5)
    t.equal(open.recentErrorRate, 0.6)
    const { lastSuccessAt, lastFailureAt } = open
    if (!lastSuccessAt || !lastFailureAt) throw new Error('both a success and a failure were recorded')
    t.ok(lastFailureAt >= lastSuccessAt)

    const before = fake.requests.length
    const started = performance.now()
    const refused = await rejection(balance({ maxRetries: 3 }))
    t.type(refused, ServiceUnavailableError)
    t.match(refused, { service: 'stripe', reason: 'circuit-open' })
    t.ok(performance.now() - started < 500, 'fails fast')
    t.equal(fake.requests.length, before, 'no request reaches the service')
    t.equal(attempts.at(-1)?.outcome, 'circuit_open')
    t.same(retries, [], 'an open circuit is not retried, whatever maxRetries')
    t.equal(policy.status().recentCalls, 5, 'a refusal is not an attempt on the service')

    await sleep(650)
    fake.hangNext({ ms: 300, path: '/v1/balance' })
    const probe = balance()
    t.ok(await eventually(() => policy.status().state === 'half-open', 3000), 'half-open while the probe is in flight')
    t.match(await probe, { object: 'balance' })
    t.equal(policy.status().state, 'closed', 'the successful probe closes it')
    t.same(states, ['open', 'half-open', 'closed'])
    const closed = policy.status()
    t.ok(closed.lastSuccessAt && closed.lastSuccessAt > lastFailureAt, 'lastSuccessAt moved past the failures')
    t.equal(closed.lastFailureAt, lastFailureAt)
    t.equal(closed.recentCalls, 6)
    t.equal(closed.recentErrorRate, 0.5)

    await balance()
    t.equal(policy.status().state, 'closed')
  })

  t.test('a failed probe opens it again', async (t) => {
    const fake = await startFakeStripe(t)
    const stripe = fake.client()
    const { policy, states } = observed(
      'stripe',
      settings({ maxRetries: 0, breaker: { minimumCalls: 2, halfOpenAfterMs: 300 } }),
    )
    const balance = () => policy.call(READ, () => stripe.balance.retrieve())
    fake.failNext({ status: 502, times: 3, path: '/v1/balance' })
    await rejection(balance())
    await rejection(balance())
    t.same(states, ['open'])

    await sleep(350)
    const probe = await rejection(balance())
    t.match(probe, { statusCode: 502 }, 'the probe reached the service')
    t.equal(fake.requests.length, 3)
    t.same(states, ['open', 'half-open', 'open'])
    const refused = await rejection(balance())
    t.match(refused, { reason: 'circuit-open' }, 'open again: refused at once')
    t.equal(fake.requests.length, 3)
  })

  t.test('a 4xx is neither retried nor counted by the breaker', async (t) => {
    const fake = await startFakeStripe(t)
    const stripe = fake.client()
    const { policy, attempts, retries, states } = observed(
      'stripe',
      settings({ maxRetries: 3, breaker: { threshold: 0.5, minimumCalls: 2 } }),
    )
    fake.failNext({ status: 400, times: 5, path: '/v1/balance' })
    for (let i = 0; i < 5; i++) {
      const error = await rejection(policy.call(READ, () => stripe.balance.retrieve()))
      t.type(error, Stripe.errors.StripeInvalidRequestError)
    }
    t.equal(fake.requests.length, 5, 'one request per call')
    t.same(retries, [])
    t.ok(
      attempts.every((a) => a.outcome === 'client_error' && a.status === 400),
      'client_error',
    )
    t.equal(policy.status().state, 'closed', 'five 400s of five attempts: not failures')
    t.equal(policy.status().lastFailureAt, null)
    t.equal(policy.status().recentErrorRate, 0)

    // Had the 400s counted as successes, two failures of seven attempts would not open it.
    fake.failNext({ status: 500, times: 2, path: '/v1/balance' })
    await rejection(policy.call({ ...READ, maxRetries: 0 }, () => stripe.balance.retrieve()))
    await rejection(policy.call({ ...READ, maxRetries: 0 }, () => stripe.balance.retrieve()))
    t.equal(policy.status().state, 'open', 'two failures of two counted attempts')
    t.same(states, ['open'])
    t.equal(policy.status().recentCalls, 7, 'the 400s are still recent calls')
    t.equal(policy.status().recentErrorRate, 0.286)
  })
})

t.test('the token bucket', async (t) => {
  t.test('throttles the second immediate call, which is retried after the wait the bucket gives', async (t) => {
    const fake = await startFakeStripe(t)
    const stripe = fake.client()
    const bucket = new RateLimiterMemory({ points: 1, duration: 1 })
    const { policy, attempts, retries } = observed('stripe', settings({ maxRetries: 3, maxDelayMs: 2000 }), {
      bucket,
    })

    await policy.call(READ, () => stripe.balance.retrieve())
    // Non-idempotent: a refusal by our own bucket certainly did not reach the service.
    const customer = await policy.call(CREATE, () => stripe.customers.create({ email: 'ada@example.test' }))
    t.match(customer.id, /^cus_/)
    t.equal(fake.requests.length, 2, 'the throttled attempt sent nothing')
    t.equal(fake.customers.size, 1)
    t.same(
      attempts.slice(0, 2).map((a) => [a.operation, a.outcome]),
      [
        ['balance.retrieve', 'success'],
        ['customers.create', 'throttled'],
      ],
    )
    t.equal(attempts.at(-1)?.outcome, 'success')
    const wait = retries[0]?.delayMs ?? -1
    t.ok(wait > 0 && wait <= 1000, `retried after the bucket's wait (${wait} ms)`)
    const [gap] = gaps(fake)
    t.ok(gap !== undefined && gap >= 900, `the second request went out once the bucket refilled (${gap} ms)`)
    t.equal(policy.status().recentCalls, 2, 'a throttled attempt is not an attempt on the service')
    t.equal(policy.status().lastFailureAt, null, 'nor a failure of it')
  })

  t.test('a wait longer than maxDelayMs fails at once, before reaching the service', async (t) => {
    const fake = await startFakeStripe(t)
    const stripe = fake.client()
    const bucket = new RateLimiterMemory({ points: 1, duration: 1 })
    const { policy, retries } = observed('stripe', settings({ maxRetries: 3, maxDelayMs: 100 }), { bucket })

    await policy.call(READ, () => stripe.balance.retrieve())
    const started = performance.now()
    const error = await rejection(policy.call(READ, () => stripe.balance.retrieve()))
    t.ok(performance.now() - started < 500, 'at once')
    t.type(error, ServiceUnavailableError)
    t.match(error, { service: 'stripe', reason: 'throttled' })
    const retryAfterMs = (error as ServiceUnavailableError).retryAfterMs ?? 0
    t.ok(retryAfterMs > 100 && retryAfterMs <= 1000, `says how long to wait (${retryAfterMs} ms)`)
    t.equal(fake.requests.length, 1)
    t.same(retries, [])

    const other = await policy.call({ ...READ, credential: 'org_byok' }, () => stripe.balance.retrieve())
    t.equal(other.object, 'balance', 'another credential draws from a bucket of its own')
    t.equal(fake.requests.length, 2)
  })

  t.test('a bucket whose store fails does not stop calls', async (t) => {
    const fake = await startFakeStripe(t)
    const stripe = fake.client()
    const broken: Bucket = { consume: () => Promise.reject(new Error('Redis is down')) }
    const { policy, attempts } = observed('stripe', settings(), { bucket: broken })
    t.equal((await policy.call(READ, () => stripe.balance.retrieve())).object, 'balance')
    t.same(
      attempts.map((a) => a.outcome),
      ['success'],
    )
  })
})

t.test("the caller's signal", async (t) => {
  t.test('an abort during the wait before a retry stops further attempts', async (t) => {
    const fake = await startFakeStripe(t)
    const stripe = fake.client()
    const controller = new AbortController()
    const reason = new Error('the client went away')
    const { policy, attempts, retries } = observed('stripe', settings({ maxRetries: 3, baseDelayMs: 200 }), {
      random: () => 1,
      onRetry: () => controller.abort(reason),
    })
    fake.failNext({ status: 500, times: 5, path: '/v1/balance' })

    const started = performance.now()
    const error = await rejection(policy.call({ ...READ, signal: controller.signal }, () => stripe.balance.retrieve()))
    t.equal(error, reason, "rejects with the caller's reason")
    t.ok(performance.now() - started < 3000)
    t.equal(fake.requests.length, 1, 'no attempt after the abort')
    t.equal(retries.length, 1)
    t.same(
      attempts.map((a) => a.outcome),
      ['server_error', 'aborted'],
    )
  })

  t.test('an already aborted signal sends nothing', async (t) => {
    const fake = await startFakeStripe(t)
    const stripe = fake.client()
    const { policy, attempts } = observed('stripe', settings())
    const signal = AbortSignal.abort(new Error('gone already'))
    const error = await rejection(policy.call({ ...READ, signal }, () => stripe.balance.retrieve()))
    t.match(error, { message: 'gone already' })
    t.equal(fake.requests.length, 0)
    t.same(
      attempts.map((a) => a.outcome),
      ['aborted'],
    )
    t.equal(policy.status().recentCalls, 0, 'an aborted attempt is not counted')
  })

  t.test('an abort during a streamed attempt ends it at once, without counting it against the service', async (t) => {
    const { policy, attempts } = observed('openai', settings({ timeoutMs: 5000, maxRetries: 2 }))
    openai.default = { hang: true }
    const index = openai.requests.length
    const controller = new AbortController()
    setTimeout(() => controller.abort(new Error('stopped by the user')), 100)

    const started = performance.now()
    await rejection(
      policy.call({ operation: 'chat.stream', idempotent: true, stream: true, signal: controller.signal }, (signal) =>
        openaiClient.chat.completions
          .create({ model: 'gpt-4o-mini', messages: MESSAGES, stream: true }, { signal })
          .asResponse(),
      ),
    )
    t.ok(performance.now() - started < 2500, 'not held until the 5 s timeout')
    await openai.waitForClose(index, 3000)
    t.equal(openai.requests.length, index + 1, 'not retried')
    t.same(
      attempts.map((a) => a.outcome),
      ['aborted'],
    )
    t.equal(policy.status().lastFailureAt, null)
    t.equal(policy.status().recentCalls, 0)
  })

  t.test('an abort during a non-streamed attempt ends it at once and aborts its request', async (t) => {
    const { policy, attempts } = observed('openai', settings({ timeoutMs: 3000, maxRetries: 2 }))
    openai.next({ hang: true })
    const index = openai.requests.length
    const controller = new AbortController()
    setTimeout(() => controller.abort(new Error('stopped by the user')), 100)

    const started = performance.now()
    await rejection(policy.call({ operation: 'chat.create', idempotent: true, signal: controller.signal }, complete))
    const elapsed = performance.now() - started
    t.same(
      attempts.map((a) => a.outcome),
      ['aborted'],
      'not retried, not a failure of the service',
    )
    t.equal(openai.requests.length, index + 1)
    t.ok(elapsed < 1500, `ended soon after the abort (${Math.round(elapsed)} ms), not at the 3 s timeout`)
    // The fake notices the closed socket a moment after the client has given up.
    const record = await openai.waitForClose(index, 1500)
    t.ok(record.closedAt !== undefined && record.closedAt - record.receivedAt < 1500, 'the request was aborted')
  })
})
