import { setTimeout as sleep } from 'node:timers/promises'
import type { FastifyInstance } from 'fastify'
import { Redis } from 'ioredis'
import t from 'tap'
import { ServiceUnavailableError } from '../../src/lib/resilience.js'
import {
  type Account,
  account,
  addMember,
  assertProblem,
  callAs,
  createApiKey,
  createOrg,
  type Test,
} from '../auth/support.js'
import { type ChatStream, readChat } from '../chat/support.js'
import { startFakeAnthropic } from '../fakes/anthropic.js'
import { startFakeOpenAI } from '../fakes/openai.js'
import { buildTestApp, eventually, LogCapture, redisForTest } from '../helper.js'

/**
 * The integrations as the app runs them: GET /api/v1/integrations for org admins, the OpenAI
 * circuit opening under failing chats (fast failures, /ready degraded, metrics, logs) and closing
 * again, fallback to Anthropic while it is open, and a token bucket shared by two instances
 * through Redis. Model calls go to the fake OpenAI and Anthropic servers through the real SDKs.
 * The tests on `app` share its circuits, so they run in order and each says what it starts from.
 */

const OPENAI_KEY = 'sk-openai-integrations-5c1d7e94'
const ANTHROPIC_KEY = 'sk-ant-integrations-0b9f3a12'

const openai = await startFakeOpenAI(t)
const anthropic = await startFakeAnthropic(t)

const providerEnv = {
  OPENAI_API_KEY: OPENAI_KEY,
  OPENAI_BASE_URL: openai.baseURL,
  ANTHROPIC_API_KEY: ANTHROPIC_KEY,
  ANTHROPIC_BASE_URL: anthropic.baseURL,
  CHAT_DEFAULT_MODEL: 'gpt-4o-mini',
  CHAT_PROVIDER_MAX_RETRIES: '0',
  CHAT_RATE_LIMIT_PER_MINUTE: '10000',
}

/**
 * No fallback: a chat whose model's circuit is open ends with an error event. An empty
 * CHAT_FALLBACK_MODELS counts as unset (the default chain, Anthropic included); the default model
 * as the only fallback leaves no other candidate.
 */
const NO_FALLBACK = 'gpt-4o-mini'

const FIRST_TOKEN_TIMEOUT_MS = 1500
const logs = new LogCapture()
const app = await buildTestApp(t, {
  logs,
  env: {
    ...providerEnv,
    CHAT_FALLBACK_MODELS: NO_FALLBACK,
    INTEGRATION_BREAKER_MIN_CALLS: '4',
    INTEGRATION_BREAKER_HALF_OPEN_AFTER: '2s',
    // Shorter than OpenAI's per-attempt timeout (60 s), as the defaults are (30 s).
    CHAT_FIRST_TOKEN_TIMEOUT_MS: String(FIRST_TOKEN_TIMEOUT_MS),
  },
})

interface IntegrationStatus {
  service: string
  configured: boolean
  circuit: 'closed' | 'open' | 'half-open'
  lastSuccessAt: string | null
  lastFailureAt: string | null
  recentCalls: number
  recentErrorRate: number
}

interface Readiness {
  status: string
  services: Record<string, { status: string; message?: string }>
}

async function integrations(on: FastifyInstance, who: Pick<Account, 'headers'>): Promise<IntegrationStatus[]> {
  const response = await callAs(on, who, 'GET', '/integrations')
  if (response.statusCode !== 200) throw new Error(`integrations answered ${response.statusCode}: ${response.body}`)
  return (response.json() as { data: IntegrationStatus[] }).data
}

async function integration(on: FastifyInstance, who: Pick<Account, 'headers'>, service: string) {
  const found = (await integrations(on, who)).find((entry) => entry.service === service)
  if (!found) throw new Error(`${service} is not listed`)
  return found
}

async function ready(on: FastifyInstance): Promise<{ statusCode: number; body: Readiness }> {
  const response = await on.inject({ method: 'GET', url: '/ready' })
  return { statusCode: response.statusCode, body: response.json() }
}

/** The value of one series of a Prometheus metric; undefined when the series does not exist. */
async function metric(on: FastifyInstance, name: string, labels: Record<string, string>): Promise<number | undefined> {
  const text = (await on.inject({ method: 'GET', url: '/metrics' })).body
  for (const line of text.split('\n')) {
    const match = /^(\w+)\{([^}]*)\}\s+(\S+)$/.exec(line)
    if (!match || match[1] !== name) continue
    const found = Object.fromEntries(Array.from((match[2] ?? '').matchAll(/(\w+)="([^"]*)"/g), (m) => [m[1], m[2]]))
    const wanted = Object.entries(labels)
    if (Object.keys(found).length === wanted.length && wanted.every(([key, value]) => found[key] === value)) {
      return Number(match[3])
    }
  }
  return undefined
}

const attemptsOf = (on: FastifyInstance, service: string, outcome: string) =>
  metric(on, 'integration_attempts_total', { service, operation: 'chat.stream', outcome })

async function chat(t: Test, on: FastifyInstance, who: Pick<Account, 'headers'>, label: string): Promise<ChatStream> {
  const response = await callAs(on, who, 'POST', '/chat', { message: `question: ${label}` })
  return readChat(t, response, label)
}

t.afterEach(() => {
  // A behaviour left by a failing test must not leak into the next one.
  openai.control.clear()
  anthropic.control.clear()
  openai.default = {}
  anthropic.default = {}
})

t.test('GET /api/v1/integrations lists every service for an org admin', async (t) => {
  const owner = await account(app)
  const response = await callAs(app, owner, 'GET', '/integrations')
  t.equal(response.statusCode, 200, `the owner of their personal org (${response.body.slice(0, 200)})`)
  const { data } = response.json() as { data: IntegrationStatus[] }
  t.same(
    data.map((entry) => entry.service),
    ['openai', 'anthropic', 'stripe'],
  )
  const idle = {
    orgCredential: null,
    circuit: 'closed',
    lastSuccessAt: null,
    lastFailureAt: null,
    recentCalls: 0,
    recentErrorRate: 0,
  }
  t.same(data, [
    { service: 'openai', configured: true, ...idle },
    { service: 'anthropic', configured: true, ...idle },
    { service: 'stripe', configured: false, ...idle },
  ])

  const orgId = await createOrg(app, owner, 'Integrations Inc')
  const admin = await account(app)
  await addMember(app, owner, orgId, admin, 'admin')
  for (const [who, label] of [
    [owner, 'the owner'],
    [admin, 'an admin'],
  ] as const) {
    const named = await callAs(app, who, 'GET', `/integrations?orgId=${orgId}`)
    t.equal(named.statusCode, 200, `${label} of the named org`)
    t.equal((named.json() as { data: unknown[] }).data.length, 3)
  }
})

t.test('members below admin get 403, strangers 404, anonymous callers 401', async (t) => {
  const owner = await account(app)
  const orgId = await createOrg(app, owner, 'Shared Org')
  const member = await account(app)
  const viewer = await account(app)
  await addMember(app, owner, orgId, member, 'member')
  await addMember(app, owner, orgId, viewer, 'viewer')
  const stranger = await account(app)

  for (const [who, label] of [
    [member, 'a member'],
    [viewer, 'a viewer'],
  ] as const) {
    const response = await callAs(app, who, 'GET', `/integrations?orgId=${orgId}`)
    assertProblem(t, response, 403, 'INSUFFICIENT_ROLE', label)
    t.notMatch(response.body, /openai|anthropic|stripe/, `${label} sees no service`)
  }
  const hidden = await callAs(app, stranger, 'GET', `/integrations?orgId=${orgId}`)
  assertProblem(t, hidden, 404, 'ORG_NOT_FOUND', 'an org the caller is not in')
  t.equal((await callAs(app, stranger, 'GET', '/integrations')).statusCode, 200, 'their own personal org answers')

  const anonymous = await app.inject({ method: 'GET', url: '/api/v1/integrations' })
  assertProblem(t, anonymous, 401, 'UNAUTHORIZED', 'no credential')

  // An owner's API key acts with the owner's role, within its scopes.
  const unscoped = await createApiKey(app, owner, orgId, ['projects:read'])
  const refused = await callAs(app, { headers: { authorization: `Bearer ${unscoped.key}` } }, 'GET', '/integrations')
  assertProblem(t, refused, 403, 'INSUFFICIENT_SCOPE', 'an API key without orgs:read')
  const scoped = await createApiKey(app, owner, orgId, ['orgs:read'])
  const allowed = await callAs(app, { headers: { authorization: `Bearer ${scoped.key}` } }, 'GET', '/integrations')
  t.equal(allowed.statusCode, 200, 'an API key with orgs:read, for its own org')
})

t.test('the OpenAI circuit opens under failing chats, fails them fast, and closes once OpenAI recovers', async (t) => {
  const admin = await account(app)
  const user = await account(app)

  const first = await chat(t, app, user, 'before the outage')
  t.ok(first.done, 'answered while OpenAI is up')
  const healthy = await integration(app, admin, 'openai')
  t.equal(healthy.circuit, 'closed')
  t.type(healthy.lastSuccessAt, 'string')

  openai.default = { failBeforeFirstToken: { status: 500 } }
  // The breaker counts 4 attempts (INTEGRATION_BREAKER_MIN_CALLS) before it judges: a success and
  // three failures is 75% failed, over the default threshold of 50%.
  for (let i = 1; i <= 3; i++) {
    const before = openai.requests.length
    const stream = await chat(t, app, user, `failure ${i}`)
    t.equal(openai.requests.length, before + 1, `failure ${i}: the chat reached OpenAI`)
    t.match(stream.error, { code: 'UPSTREAM_UNAVAILABLE', error: 'The model provider is unavailable.' })
    if (i < 3) t.equal((await integration(app, admin, 'openai')).circuit, 'closed', `closed after ${i + 1} attempts`)
  }
  const openedAt = Date.now()

  const before = openai.requests.length
  const started = performance.now()
  const refused = await chat(t, app, user, 'while open')
  t.ok(performance.now() - started < 3000, 'fails fast')
  t.equal(openai.requests.length, before, 'no request reaches OpenAI while its circuit is open')
  t.match(refused.error, { code: 'UPSTREAM_UNAVAILABLE', error: 'The model provider could not be reached.' })
  t.same(refused.contents, [], 'nothing was streamed')

  const open = await integration(app, admin, 'openai')
  t.equal(open.circuit, 'open')
  t.type(open.lastFailureAt, 'string')
  t.ok(Date.parse(open.lastFailureAt ?? '') >= Date.parse(open.lastSuccessAt ?? ''), 'the failures came last')
  t.equal(open.recentCalls, 4, 'the refused chat was not an attempt')
  t.ok(open.recentErrorRate > 0.5, `recent error rate ${open.recentErrorRate}`)
  t.equal((await integration(app, admin, 'anthropic')).circuit, 'closed', "Anthropic's circuit is its own")

  const degraded = await ready(app)
  t.equal(degraded.statusCode, 200, 'an open circuit does not take the instance out of rotation')
  t.equal(degraded.body.status, 'degraded')
  t.match(degraded.body.services.openai, { status: 'degraded', message: /circuit open/ })
  t.equal(degraded.body.services.anthropic?.status, 'healthy')
  t.equal(degraded.body.services.database?.status, 'healthy')
  t.notOk('stripe' in degraded.body.services, 'no probe for a service without a credential')

  t.equal(await attemptsOf(app, 'openai', 'server_error'), 3)
  t.equal(await attemptsOf(app, 'openai', 'circuit_open'), 1)
  t.equal(await attemptsOf(app, 'openai', 'success'), 1)
  t.equal(await metric(app, 'integration_circuit_open', { service: 'openai' }), 1)
  t.equal(await metric(app, 'integration_circuit_open', { service: 'anthropic' }), 0)

  // Recovery: once halfOpenAfter (2 s) has passed, the next chat is the probe.
  openai.default = {}
  await sleep(Math.max(0, openedAt + 2200 - Date.now()))
  const recovered = await chat(t, app, user, 'after recovery')
  t.ok(recovered.done, 'the probe answered')
  t.equal(openai.requests.length, before + 1, 'it reached OpenAI')
  const closed = await integration(app, admin, 'openai')
  t.equal(closed.circuit, 'closed')
  t.ok(Date.parse(closed.lastSuccessAt ?? '') > Date.parse(closed.lastFailureAt ?? ''), 'lastSuccessAt is newest')
  const back = await ready(app)
  t.equal(back.body.status, 'healthy')
  t.equal(back.body.services.openai?.status, 'healthy')
  t.equal(await metric(app, 'integration_circuit_open', { service: 'openai' }), 0)
  t.equal(await attemptsOf(app, 'openai', 'success'), 2)
  t.ok((await chat(t, app, user, 'closed again')).done, 'the next chat is answered as usual')

  // What the logs say about it.
  const lines = logs.lines.filter((line) => line.module === 'integrations' && line.service === 'openai')
  const calls = lines.filter((line) => line.msg === 'integration call')
  t.ok(calls.length >= 3, 'a line per successful attempt')
  for (const line of calls) {
    t.match(line, { operation: 'chat.stream', attempt: 1, outcome: 'success', latencyMs: Number })
  }
  const failed = lines.filter((line) => line.msg === 'integration call failed')
  t.same(
    failed.map((line) => line.outcome),
    ['server_error', 'server_error', 'server_error', 'circuit_open'],
  )
  t.match(failed[0], { operation: 'chat.stream', attempt: 1, status: 500, latencyMs: Number })
  const transitions = lines.filter((line) => typeof line.state === 'string').map((line) => line.state)
  t.same(transitions, ['open', 'half-open', 'closed'], 'every circuit change is logged')
  const raw = logs.raw.join('\n')
  t.notOk(raw.includes(OPENAI_KEY), 'the OpenAI key is never logged')
  t.notOk(raw.includes(ANTHROPIC_KEY), 'the Anthropic key is never logged')
})

t.test('a provider that never starts answering counts against its circuit', async (t) => {
  const admin = await account(app)
  const user = await account(app)
  const before = await integration(app, admin, 'openai')
  t.equal(before.circuit, 'closed')
  openai.default = { hang: true }

  // Three attempts that never answer, after the two successes since the circuit last closed: 3 of 5.
  for (let i = 1; i <= 3; i++) {
    const index = openai.requests.length
    const started = performance.now()
    const stream = await chat(t, app, user, `no answer ${i}`)
    const elapsed = performance.now() - started
    t.match(stream.error, { code: 'UPSTREAM_TIMEOUT', error: 'The model did not start answering in time.' })
    t.ok(elapsed >= FIRST_TOKEN_TIMEOUT_MS - 50, `gave up at the first-token timeout (${Math.round(elapsed)} ms)`)
    await openai.waitForClose(index, 3000)
  }
  const after = await integration(app, admin, 'openai')
  t.equal(after.circuit, 'open', 'three timeouts of five attempts open the circuit')
  t.not(after.lastFailureAt, before.lastFailureAt, 'the timeouts are failures of OpenAI')
})

t.test('while OpenAI times out, chats fall back to Anthropic, then go straight to it', async (t) => {
  const fallbackApp = await buildTestApp(t, {
    env: {
      ...providerEnv,
      CHAT_FALLBACK_MODELS: 'claude-haiku-4-5',
      CHAT_FIRST_TOKEN_TIMEOUT_MS: '5000',
      // Shorter than the first-token timeout, so the policy's timeout, which the breaker counts, fires first.
      INTEGRATION_TIMEOUTS: 'openai=300ms',
      INTEGRATION_BREAKER_MIN_CALLS: '2',
      INTEGRATION_BREAKER_HALF_OPEN_AFTER: '60s',
    },
  })
  const admin = await account(fallbackApp)
  const user = await account(fallbackApp)
  openai.default = { hang: true }

  for (let i = 1; i <= 2; i++) {
    const before = { openai: openai.requests.length, anthropic: anthropic.requests.length }
    const started = performance.now()
    const stream = await chat(t, fallbackApp, user, `timeout ${i}`)
    t.ok(performance.now() - started < 4000, `timeout ${i}: handed over after the 300 ms attempt timeout`)
    t.equal(openai.requests.length, before.openai + 1, `timeout ${i}: OpenAI was tried`)
    t.equal(anthropic.requests.length, before.anthropic + 1, `timeout ${i}: then Anthropic`)
    t.equal(stream.done?.usage.model, 'claude-haiku-4-5', `timeout ${i}: answered by the fallback`)
  }
  const open = await integration(fallbackApp, admin, 'openai')
  t.equal(open.circuit, 'open', 'two timeouts of two attempts open the circuit')
  t.equal(open.recentErrorRate, 1)
  t.equal(await attemptsOf(fallbackApp, 'openai', 'timeout'), 2)

  const before = { openai: openai.requests.length, anthropic: anthropic.requests.length }
  const started = performance.now()
  const stream = await chat(t, fallbackApp, user, 'while open')
  t.ok(performance.now() - started < 2000, 'no timeout waited for')
  t.equal(openai.requests.length, before.openai, 'OpenAI is skipped while its circuit is open')
  t.equal(anthropic.requests.length, before.anthropic + 1)
  t.equal(stream.done?.usage.model, 'claude-haiku-4-5')
  t.ok(stream.text.length > 0, 'the answer streamed')
  t.equal(await attemptsOf(fallbackApp, 'openai', 'circuit_open'), 1)
  t.equal(await attemptsOf(fallbackApp, 'anthropic', 'success'), 3)
})

t.test('instances sharing Redis draw from one token bucket', async (t) => {
  const redisUrl = await redisForTest(t)
  // A database of its own, flushed, so no bucket of another run or test file is drawn from.
  const url = new URL(redisUrl)
  url.pathname = '/12'
  const flusher = new Redis(url.toString(), { maxRetriesPerRequest: 1 })
  await flusher.flushdb()
  await flusher.quit()

  const env = {
    ...providerEnv,
    REDIS_URL: url.toString(),
    CHAT_FALLBACK_MODELS: NO_FALLBACK,
    // One call a second, and one more per 10 s.
    INTEGRATION_RATE_LIMITS: 'openai=1:1',
  }
  const first = await buildTestApp(t, { env })
  const second = await buildTestApp(t, { env })
  t.ok(first.redis && second.redis, 'both instances use Redis')
  const user = await account(second)

  const draw = (on: FastifyInstance) =>
    on.integrations.policy('openai').call({ operation: 'test.draw', idempotent: true, maxRetries: 0 }, async () => 'ok')
  const refusal = (on: FastifyInstance) =>
    draw(on).then(
      () => undefined,
      (error: unknown) => error,
    )
  t.equal(await draw(first), 'ok', 'A: the call of this second')
  t.equal(await draw(first), 'ok', 'A: the burst allowance')
  // Refused on A with most of a second to wait (a slow machine may have let a second pass).
  let emptyOnA: unknown
  for (let tries = 0; tries < 10; tries++) {
    emptyOnA = await refusal(first)
    const wait = (emptyOnA as { retryAfterMs?: number } | undefined)?.retryAfterMs
    if (wait !== undefined && wait >= 300) break
    await sleep((wait ?? 0) + 20)
  }
  t.type(emptyOnA, ServiceUnavailableError, 'A: the bucket is empty')
  t.match(emptyOnA, { reason: 'throttled' })

  const emptyOnB = await refusal(second)
  t.type(emptyOnB, ServiceUnavailableError, 'B never drew, yet its first call is refused')
  t.match(emptyOnB, { service: 'openai', reason: 'throttled' })
  const wait = (emptyOnB as ServiceUnavailableError).retryAfterMs ?? -1
  t.ok(wait >= 0 && wait <= 1000, `until the next second (${wait} ms)`)

  // A chat on B right after A took the call of a new second: throttled before reaching OpenAI. A
  // slow machine might let the second pass meanwhile, hence a few tries.
  let throttled: ChatStream | undefined
  for (let attempt = 0; attempt < 3 && !throttled; attempt++) {
    await eventually(
      async () =>
        await draw(first).then(
          () => true,
          () => false,
        ),
      3000,
    )
    const before = openai.requests.length
    const response = await callAs(second, user, 'POST', '/chat', { message: 'throttled?' })
    if (openai.requests.length === before) throttled = readChat(t, response, 'throttled chat on B')
  }
  if (!throttled) return t.fail('no chat on B was throttled')
  t.match(throttled.error, { code: 'UPSTREAM_UNAVAILABLE' }, 'refused by the bucket, the chat ends with an error')
  t.ok(((await attemptsOf(second, 'openai', 'throttled')) ?? 0) >= 1, 'B counts the throttled attempt')
  const refusedOnA = await metric(first, 'integration_attempts_total', {
    service: 'openai',
    operation: 'test.draw',
    outcome: 'throttled',
  })
  t.ok((refusedOnA ?? 0) >= 1, 'each instance counts only its own attempts')
  t.equal(await attemptsOf(first, 'openai', 'throttled'), undefined, 'A made no chat')

  // Once the second has passed, B's chats go through again.
  t.ok(
    await eventually(async () => {
      const before = openai.requests.length
      const response = await callAs(second, user, 'POST', '/chat', { message: 'later' })
      return openai.requests.length > before && response.body.includes('"type":"done"')
    }, 5000),
    'a later chat on B is answered',
  )
})
