import type { AddressInfo } from 'node:net'
import type { LightMyRequestResponse } from 'fastify'
import t from 'tap'
import { buildTestApp, eventually, LogCapture } from '../helper.js'
import {
  type Account,
  account,
  addMember,
  assertProblem,
  bearer,
  callAs,
  createApiKey,
  createOrg,
  type Method,
  type Test,
} from '../auth/support.js'
import { startFakeAnthropic } from '../fakes/anthropic.js'
import type { RecordedRequest } from '../fakes/control.js'
import { startFakeOpenAI } from '../fakes/openai.js'
import { defaultText, parseSse, readChat, type SseEvent, SseBuffer, usageRowsOf } from './support.js'

/**
 * One-shot chat (POST /api/v1/chat) against the fake OpenAI and Anthropic servers through the real
 * SDKs: the event stream, fallback between providers, timeouts, client disconnects, metering and
 * the usage report, validation, tenancy and what leaks out of provider errors. The refusals that
 * need their own limits (budget, concurrent streams, rate limit, no provider) are in limits.test.ts.
 */

const OPENAI_KEY = 'sk-openai-test-7f3a9c21d4'
const ANTHROPIC_KEY = 'sk-ant-test-91be44e0aa'
/** Text a provider puts in its error body: it must never reach the client. */
const UPSTREAM_SECRET = 'secret upstream detail sk-live-123'
const FIRST_TOKEN_TIMEOUT_MS = 500
const IDLE_TIMEOUT_MS = 500

const openai = await startFakeOpenAI(t)
const anthropic = await startFakeAnthropic(t)
const logs = new LogCapture()
const app = await buildTestApp(t, {
  logs,
  env: {
    OPENAI_API_KEY: OPENAI_KEY,
    OPENAI_BASE_URL: openai.baseURL,
    ANTHROPIC_API_KEY: ANTHROPIC_KEY,
    ANTHROPIC_BASE_URL: anthropic.baseURL,
    CHAT_DEFAULT_MODEL: 'gpt-4o-mini',
    CHAT_FALLBACK_MODELS: 'claude-haiku-4-5,gpt-4o-mini',
    CHAT_PROVIDER_MAX_RETRIES: '0',
    CHAT_FIRST_TOKEN_TIMEOUT_MS: String(FIRST_TOKEN_TIMEOUT_MS),
    CHAT_IDLE_TIMEOUT_MS: String(IDLE_TIMEOUT_MS),
    CHAT_RATE_LIMIT_PER_MINUTE: '10000',
  },
})

/** Every response of this file (status, headers, body), checked at the end for leaked secrets. */
const seen: string[] = []

function remember(response: LightMyRequestResponse): LightMyRequestResponse {
  seen.push(`${response.statusCode} ${JSON.stringify(response.headers)}\n${response.body}`)
  return response
}

async function call(who: Pick<Account, 'headers'>, method: Method, url: string, payload?: Record<string, unknown>) {
  return remember(await callAs(app, who, method, url, payload))
}

const chat = (who: Pick<Account, 'headers'>, payload: Record<string, unknown>) => call(who, 'POST', '/chat', payload)

/** How many requests each fake has received so far. */
const calls = () => ({ openai: openai.requests.length, anthropic: anthropic.requests.length })

function lastRequest(fake: { requests: RecordedRequest[] }): RecordedRequest {
  const request = fake.requests.at(-1)
  if (!request) throw new Error('the fake received no request')
  return request
}

/** The OpenAI chat messages of a request, as sent. */
const messagesOf = (request: RecordedRequest) => request.body.messages as { role: string; content: string }[]

async function createProject(who: Pick<Account, 'headers'>, payload: Record<string, unknown>) {
  const response = await call(who, 'POST', '/projects', payload)
  if (response.statusCode !== 201) throw new Error(`create project answered ${response.statusCode}: ${response.body}`)
  return response.json() as { id: string; orgId: string }
}

/** The only row a user's single answer wrote. */
async function onlyRow(t: Test, user: Account) {
  const rows = await usageRowsOf(app, user.userId)
  t.equal(rows.length, 1, 'exactly one chat_usage row for the answer')
  const row = rows[0]
  if (!row) throw new Error('no chat_usage row')
  return row
}

t.afterEach(() => {
  // A behaviour left queued by a failing test must not leak into the next one.
  openai.control.clear()
  anthropic.control.clear()
})

t.test('an answer streams content events, then one done with the usage the provider reported', async (t) => {
  const user = await account(app)
  const before = calls()
  openai.next({ tokens: 4, usage: { input: 42, output: 9 } })
  const response = await chat(user, { message: 'What is Backplane?' })
  const stream = readChat(t, response)
  t.match(response.headers['cache-control'], /no-cache/, 'not cached by proxies')
  t.equal(response.headers['x-content-type-options'], 'nosniff', 'security headers still apply to the stream')
  t.type(response.headers['x-request-id'], 'string', 'and the request id')
  t.same(stream.contents, ['tok0 ', 'tok1 ', 'tok2 ', 'tok3 '], 'each upstream token is one content event, in order')
  t.equal(stream.events.length, 5, 'four content events and done')
  const done = stream.done
  if (!done) return t.fail(`no done event: ${response.body}`)
  t.same(Object.keys(done).sort(), ['fullContent', 'messageId', 'sources', 'type', 'usage'], 'done has its fields')
  t.match(done.messageId, /^msg_/)
  t.same(done.sources, [], 'no context, no sources')
  t.same(
    done.usage,
    { model: 'gpt-4o-mini', inputTokens: 42, outputTokens: 9, totalTokens: 51 },
    'usage is what the provider reported',
  )
  t.equal(done.fullContent, stream.text, 'fullContent is the content events joined')
  t.equal(done.fullContent, defaultText(4))

  t.same(calls(), { openai: before.openai + 1, anthropic: before.anthropic }, 'one OpenAI call, no Anthropic call')
  const upstream = lastRequest(openai)
  t.equal(upstream.apiKey, OPENAI_KEY, 'the configured key is sent upstream')
  t.equal(upstream.body.model, 'gpt-4o-mini', 'the default model')
  t.equal(upstream.body.stream, true, 'streamed')
  const messages = messagesOf(upstream)
  t.equal(messages.length, 2)
  t.equal(messages[0]?.role, 'system', 'instructions first')
  t.same(messages[1], { role: 'user', content: 'What is Backplane?' }, 'then the message')

  const row = await onlyRow(t, user)
  t.match(row, {
    id: done.messageId,
    orgId: user.personalOrgId,
    userId: user.userId,
    provider: 'openai',
    model: 'gpt-4o-mini',
    inputTokens: 42,
    outputTokens: 9,
    estimated: false,
    status: 'complete',
  })
})

t.test('context chunks go into the system prompt numbered, and come back as sources', async (t) => {
  const user = await account(app)
  const chunks = [
    'Alpha passage about billing cycles.',
    { text: 'Beta passage about webhook retries.', title: 'Webhooks guide', source: 'https://docs.example.com/hooks' },
  ]
  const response = await chat(user, { message: 'How are webhooks retried?', context: { chunks } })
  const done = readChat(t, response).done
  if (!done) return t.fail(`no done event: ${response.body}`)
  const system = messagesOf(lastRequest(openai))[0]
  t.equal(system?.role, 'system')
  const prompt = system?.content ?? ''
  t.match(prompt, /\[1\][^\n]*Alpha passage about billing cycles\./, 'chunk 1 is numbered [1]')
  t.match(prompt, /\[2\][^\n]*Beta passage about webhook retries\./, 'chunk 2 is numbered [2]')
  t.ok(prompt.indexOf('[1]') < prompt.indexOf('[2]'), 'in the order given')
  t.notMatch(prompt, /\[3\]/, 'no third passage')
  t.same(done.sources, [
    { index: 1, text: 'Alpha passage about billing cycles.', title: null, source: null, documentId: null, score: null },
    {
      index: 2,
      text: 'Beta passage about webhook retries.',
      title: 'Webhooks guide',
      source: 'https://docs.example.com/hooks',
      documentId: null,
      score: null,
    },
  ])
})

t.test('conversation history is forwarded in order, before the new message', async (t) => {
  const user = await account(app)
  const history = [
    { role: 'user', content: 'first question' },
    { role: 'assistant', content: 'first answer' },
    { role: 'user', content: 'second question' },
    { role: 'assistant', content: 'second answer' },
  ]
  const response = await chat(user, { message: 'third question', conversationHistory: history })
  t.ok(readChat(t, response).done, 'answered')
  const messages = messagesOf(lastRequest(openai))
  t.equal(messages[0]?.role, 'system')
  t.same(messages.slice(1), [...history, { role: 'user', content: 'third question' }])
})

t.test('a claude model goes to Anthropic, with a cached system prompt', async (t) => {
  const user = await account(app)
  const before = calls()
  anthropic.next({ tokens: 3, usage: { input: 10, cacheCreation: 20, cacheRead: 5, output: 3 } })
  const history = [
    { role: 'user', content: 'earlier question' },
    { role: 'assistant', content: 'earlier answer' },
  ]
  const response = await chat(user, {
    message: 'And now?',
    model: 'claude-haiku-4-5',
    conversationHistory: history,
    context: { chunks: ['Gamma passage.'] },
  })
  const stream = readChat(t, response)
  const done = stream.done
  if (!done) return t.fail(`no done event: ${response.body}`)
  t.same(stream.contents, ['tok0 ', 'tok1 ', 'tok2 '])
  t.equal(done.fullContent, defaultText(3))
  t.same(
    done.usage,
    { model: 'claude-haiku-4-5', inputTokens: 35, outputTokens: 3, totalTokens: 38 },
    'input counts uncached, cache-written and cache-read tokens',
  )
  t.same(done.sources, [{ index: 1, text: 'Gamma passage.', title: null, source: null, documentId: null, score: null }])
  t.same(calls(), { openai: before.openai, anthropic: before.anthropic + 1 }, 'Anthropic only')

  const upstream = lastRequest(anthropic)
  t.equal(upstream.apiKey, ANTHROPIC_KEY)
  t.equal(upstream.body.model, 'claude-haiku-4-5')
  t.equal(upstream.body.stream, true)
  const system = upstream.body.system as { type: string; text: string; cache_control?: unknown }[]
  t.ok(Array.isArray(system) && system.length > 0, 'system prompt as content blocks')
  t.match(system.at(-1), { type: 'text', cache_control: { type: 'ephemeral' } }, 'marked for prompt caching')
  t.match(system.map((block) => block.text).join('\n'), /\[1\][^\n]*Gamma passage\./, 'with the numbered context')
  t.same(upstream.body.messages, [...history, { role: 'user', content: 'And now?' }], 'history then the message')

  t.match(await onlyRow(t, user), {
    id: done.messageId,
    provider: 'anthropic',
    model: 'claude-haiku-4-5',
    inputTokens: 35,
    outputTokens: 3,
    estimated: false,
    status: 'complete',
  })
})

t.test('fallback before the first token', async (t) => {
  const openaiFailures = [
    { label: 'OpenAI 500', fail: { status: 500, message: UPSTREAM_SECRET } },
    { label: 'OpenAI 429 with Retry-After: 0', fail: { status: 429, retryAfterSeconds: 0, message: UPSTREAM_SECRET } },
    { label: 'OpenAI 503', fail: { status: 503 } },
  ]
  for (const { label, fail } of openaiFailures) {
    t.test(`${label}: the next model (Anthropic) answers`, async (t) => {
      const user = await account(app)
      const before = calls()
      openai.next({ failBeforeFirstToken: fail })
      anthropic.next({ tokens: 2, usage: { input: 12, output: 2, cacheCreation: 0, cacheRead: 0 } })
      const response = await chat(user, { message: 'hello' })
      const stream = readChat(t, response)
      const done = stream.done
      if (!done) return t.fail(`no done event: ${response.body}`)
      t.same(calls(), { openai: before.openai + 1, anthropic: before.anthropic + 1 }, 'one call to each')
      t.equal(openai.requests[before.openai]?.status, fail.status, 'OpenAI failed as told')
      t.equal(lastRequest(anthropic).body.model, 'claude-haiku-4-5', 'the first fallback model')
      t.same(stream.contents, ['tok0 ', 'tok1 '], 'only the fallback answer is streamed')
      t.same(done.usage, { model: 'claude-haiku-4-5', inputTokens: 12, outputTokens: 2, totalTokens: 14 })
      t.notOk(response.body.includes(UPSTREAM_SECRET), 'the upstream error text is not shown')
      t.match(await onlyRow(t, user), {
        id: done.messageId,
        provider: 'anthropic',
        model: 'claude-haiku-4-5',
        status: 'complete',
      })
    })
  }

  t.test('Anthropic 529 for a claude model: OpenAI answers', async (t) => {
    const user = await account(app)
    const before = calls()
    anthropic.next({ failBeforeFirstToken: { status: 529 } })
    openai.next({ tokens: 2, usage: { input: 8, output: 2 } })
    const response = await chat(user, { message: 'hello', model: 'claude-haiku-4-5' })
    const done = readChat(t, response).done
    if (!done) return t.fail(`no done event: ${response.body}`)
    t.same(calls(), { openai: before.openai + 1, anthropic: before.anthropic + 1 })
    t.equal(anthropic.requests[before.anthropic]?.status, 529)
    t.equal(lastRequest(openai).body.model, 'gpt-4o-mini', 'the next fallback model')
    t.same(done.usage, { model: 'gpt-4o-mini', inputTokens: 8, outputTokens: 2, totalTokens: 10 })
    t.match(await onlyRow(t, user), { provider: 'openai', model: 'gpt-4o-mini', status: 'complete' })
  })

  t.test('a 400 from the provider does not fall back: error UPSTREAM_ERROR', async (t) => {
    const user = await account(app)
    const before = calls()
    openai.next({ failBeforeFirstToken: { status: 400, message: UPSTREAM_SECRET } })
    const response = await chat(user, { message: 'hello' })
    const stream = readChat(t, response)
    t.same(stream.contents, [], 'no content')
    t.notOk(stream.done, 'not done')
    t.match(stream.error, { type: 'error', code: 'UPSTREAM_ERROR', error: String })
    t.same(calls(), { openai: before.openai + 1, anthropic: before.anthropic }, 'Anthropic not called')
    t.notOk(response.body.includes(UPSTREAM_SECRET), 'the upstream error text is not shown')
    t.notOk(response.body.includes('sk-live'), 'nothing of it')
    t.match(await onlyRow(t, user), { provider: 'openai', status: 'error', outputTokens: 0 })
  })

  t.test('every candidate failing ends with one error event', async (t) => {
    const user = await account(app)
    const before = calls()
    openai.next({ failBeforeFirstToken: { status: 500, message: UPSTREAM_SECRET } })
    anthropic.next({ failBeforeFirstToken: { status: 503, message: UPSTREAM_SECRET } })
    const response = await chat(user, { message: 'hello' })
    const stream = readChat(t, response)
    t.same(stream.contents, [])
    t.match(stream.error, { type: 'error', code: 'UPSTREAM_UNAVAILABLE', error: String })
    t.same(calls(), { openai: before.openai + 1, anthropic: before.anthropic + 1 })
    t.notOk(response.body.includes(UPSTREAM_SECRET), 'the upstream error text is not shown')
    t.match(await onlyRow(t, user), { status: 'error', outputTokens: 0 })
  })
})

t.test('a failure after the first token ends with STREAM_INTERRUPTED and no fallback', async (t) => {
  const cases = [
    { provider: 'openai', mode: 'destroy' },
    { provider: 'openai', mode: 'end' },
    { provider: 'anthropic', mode: 'destroy' },
    { provider: 'anthropic', mode: 'end' },
  ] as const
  for (const { provider, mode } of cases) {
    t.test(`${provider}, cut with ${mode}`, async (t) => {
      const user = await account(app)
      const before = calls()
      const fake = provider === 'openai' ? openai : anthropic
      fake.next({ tokens: 6, cutAfterTokens: 2, cutMode: mode })
      const response = await chat(user, {
        message: 'hello',
        ...(provider === 'anthropic' ? { model: 'claude-haiku-4-5' } : {}),
      })
      const stream = readChat(t, response)
      t.same(stream.contents, ['tok0 ', 'tok1 '], 'the tokens sent before the cut are streamed')
      t.notOk(stream.done, 'a cut answer is never reported as done')
      t.match(stream.error, { type: 'error', code: 'STREAM_INTERRUPTED', error: String })
      t.same(
        calls(),
        provider === 'openai'
          ? { openai: before.openai + 1, anthropic: before.anthropic }
          : { openai: before.openai, anthropic: before.anthropic + 1 },
        'the other provider is not called',
      )
      const row = await onlyRow(t, user)
      t.match(row, { provider, status: 'incomplete', estimated: true })
      t.ok(row.outputTokens > 0, 'the tokens produced are metered')
    })
  }
})

t.test('a stream that ends before its first token falls back like any failure before the first token', async (t) => {
  for (const mode of ['destroy', 'end'] as const) {
    t.test(`cut with ${mode} before any token`, async (t) => {
      const user = await account(app)
      const before = calls()
      openai.next({ tokens: 5, cutAfterTokens: 0, cutMode: mode })
      const response = await chat(user, { message: 'hello' })
      const stream = readChat(t, response)
      // Nothing reached the client, so another model can still answer (README: "fails before its
      // first token"); a proxy closing the response cleanly or by reset is the same failure.
      t.same(calls(), { openai: before.openai + 1, anthropic: before.anthropic + 1 }, 'the fallback model is tried')
      t.equal(stream.done?.usage.model, 'claude-haiku-4-5', `answered by the fallback (${response.body.slice(-160)})`)
      t.match(await onlyRow(t, user), { model: 'claude-haiku-4-5', status: 'complete' })
    })
  }
})

t.test('an error event inside a 200 stream', async (t) => {
  t.test('OpenAI, before the first token: the fallback model answers', async (t) => {
    const user = await account(app)
    const before = calls()
    openai.next({ tokens: 5, errorAfterTokens: { tokens: 0, status: 500 } })
    const stream = readChat(t, await chat(user, { message: 'hello' }))
    t.same(calls(), { openai: before.openai + 1, anthropic: before.anthropic + 1 }, 'the fallback model is tried')
    t.equal(stream.done?.usage.model, 'claude-haiku-4-5', 'answered by the fallback')
  })

  t.test('OpenAI, after three tokens: the answer ends with STREAM_INTERRUPTED and is metered', async (t) => {
    const user = await account(app)
    const before = calls()
    openai.next({ tokens: 8, errorAfterTokens: { tokens: 3, status: 500 } })
    const stream = readChat(t, await chat(user, { message: 'hello' }))
    t.same(stream.contents, ['tok0 ', 'tok1 ', 'tok2 '])
    t.match(stream.error, { type: 'error', code: 'STREAM_INTERRUPTED' })
    t.same(calls(), { openai: before.openai + 1, anthropic: before.anthropic }, 'no fallback after the first token')
    t.match(await onlyRow(t, user), { provider: 'openai', status: 'incomplete', estimated: true })
  })

  t.test('Anthropic overloaded before the first token: the next model answers', async (t) => {
    const user = await account(app)
    const before = calls()
    anthropic.next({ tokens: 5, errorAfterTokens: { tokens: 0, status: 529 } })
    const stream = readChat(t, await chat(user, { message: 'hello', model: 'claude-sonnet-4-5' }))
    t.same(calls(), { openai: before.openai, anthropic: before.anthropic + 2 }, 'the fallback model is tried')
    t.equal(stream.done?.usage.model, 'claude-haiku-4-5', 'answered by the fallback')
  })
})

t.test('timeouts', async (t) => {
  t.test('no first token in time: the next provider answers', async (t) => {
    const user = await account(app)
    const before = calls()
    openai.next({ firstTokenDelayMs: 3000 })
    const started = Date.now()
    const response = await chat(user, { message: 'hello' })
    const elapsed = Date.now() - started
    const done = readChat(t, response).done
    if (!done) return t.fail(`no done event: ${response.body}`)
    t.equal(done.usage.model, 'claude-haiku-4-5', 'answered by the fallback')
    t.ok(elapsed < 2500, `did not wait for the slow provider (${elapsed} ms)`)
    t.same(calls(), { openai: before.openai + 1, anthropic: before.anthropic + 1 })
    const slow = await openai.waitForClose(before.openai, 2000)
    t.equal(slow.tokensSent, 0, 'the slow request was abandoned before its first token')
    t.match(await onlyRow(t, user), { model: 'claude-haiku-4-5', status: 'complete' })
  })

  t.test("headers but no events ('hang: headers'): the next provider answers", async (t) => {
    const user = await account(app)
    const before = calls()
    openai.next({ hang: 'headers' })
    const response = await chat(user, { message: 'hello' })
    const done = readChat(t, response).done
    if (!done) return t.fail(`no done event: ${response.body}`)
    t.equal(done.usage.model, 'claude-haiku-4-5')
    t.same(calls(), { openai: before.openai + 1, anthropic: before.anthropic + 1 })
    await openai.waitForClose(before.openai, 2000)
    t.match(await onlyRow(t, user), { model: 'claude-haiku-4-5', status: 'complete' })
  })

  t.test('no headers at all (hang: true): the next provider answers', async (t) => {
    const user = await account(app)
    const before = calls()
    openai.next({ hang: true })
    const response = await chat(user, { message: 'hello' })
    const done = readChat(t, response).done
    if (!done) return t.fail(`no done event: ${response.body}`)
    t.equal(done.usage.model, 'claude-haiku-4-5')
    await openai.waitForClose(before.openai, 2000)
  })

  t.test('every provider too slow to start: error UPSTREAM_TIMEOUT', async (t) => {
    const user = await account(app)
    openai.next({ hang: 'headers' })
    anthropic.next({ firstTokenDelayMs: 3000 })
    const started = Date.now()
    const response = await chat(user, { message: 'hello' })
    const elapsed = Date.now() - started
    const stream = readChat(t, response)
    t.same(stream.contents, [])
    t.match(stream.error, { type: 'error', code: 'UPSTREAM_TIMEOUT' })
    t.ok(elapsed < 2500, `two first-token timeouts, not the providers' delays (${elapsed} ms)`)
    t.match(await onlyRow(t, user), { status: 'error', outputTokens: 0 })
  })

  t.test('a stall between tokens: STREAM_INTERRUPTED after the tokens already sent', async (t) => {
    const user = await account(app)
    const before = calls()
    openai.next({ tokens: 5, firstTokenDelayMs: 0, tokenDelayMs: 3000 })
    const started = Date.now()
    const response = await chat(user, { message: 'hello' })
    const elapsed = Date.now() - started
    const stream = readChat(t, response)
    t.same(stream.contents, ['tok0 '], 'the token sent before the stall')
    t.notOk(stream.done)
    t.match(stream.error, { type: 'error', code: 'STREAM_INTERRUPTED' })
    t.ok(elapsed < 2500, `ended by the idle timeout (${elapsed} ms)`)
    t.same(calls(), { openai: before.openai + 1, anthropic: before.anthropic }, 'no fallback after the first token')
    await openai.waitForClose(before.openai, 2000)
    const row = await onlyRow(t, user)
    t.match(row, { status: 'incomplete', estimated: true })
    t.ok(row.outputTokens > 0)
  })
})

t.test('a client that disconnects stops the upstream request; what was produced is metered', async (t) => {
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as AddressInfo
  const user = await account(app)
  const index = openai.requests.length
  openai.next({ tokens: 50, tokenDelayMs: 100 })
  const controller = new AbortController()
  const response = await fetch(`http://127.0.0.1:${port}/api/v1/chat`, {
    method: 'POST',
    headers: { ...user.headers, 'content-type': 'application/json' },
    body: JSON.stringify({ message: 'a long answer, please' }),
    signal: controller.signal,
  })
  t.equal(response.status, 200)
  t.match(response.headers.get('content-type'), /^text\/event-stream/)
  const body = response.body
  if (!body) return t.fail('no response body')
  const reader = body.getReader()
  const decoder = new TextDecoder()
  const parser = new SseBuffer()
  const received: SseEvent[] = []
  while (received.length < 3) {
    const { value, done } = await reader.read()
    if (done) break
    received.push(...parser.push(decoder.decode(value, { stream: true })))
  }
  const abortedAt = Date.now()
  controller.abort()
  await reader.cancel().catch(() => {})

  t.same(
    received.slice(0, 3).map((event) => [event.id, JSON.parse(event.data)]),
    [
      ['1', { type: 'content', content: 'tok0 ' }],
      ['2', { type: 'content', content: 'tok1 ' }],
      ['3', { type: 'content', content: 'tok2 ' }],
    ],
    'content events arrive as they are produced',
  )
  const upstream = await openai.waitForClose(index, 3000)
  const closedAt = upstream.closedAt ?? Infinity
  t.ok(closedAt - abortedAt < 1000, `the upstream request was closed ${closedAt - abortedAt} ms after the abort`)
  t.ok(upstream.tokensSent < 50, `the upstream stopped early (${upstream.tokensSent} tokens)`)

  t.ok(await eventually(async () => (await usageRowsOf(app, user.userId)).length > 0, 5000), 'usage is recorded')
  const row = await onlyRow(t, user)
  t.match(row, { provider: 'openai', model: 'gpt-4o-mini', status: 'stopped', estimated: true })
  t.ok(row.outputTokens > 0, `the tokens produced are metered (${row.outputTokens})`)
})

t.test('usage report', async (t) => {
  const owner = await account(app)
  const admin = await account(app)
  const member = await account(app)
  const outsider = await account(app)
  const orgId = await createOrg(app, owner, 'Metered Inc')
  await addMember(app, owner, orgId, admin, 'admin')
  await addMember(app, owner, orgId, member, 'member')
  const project = await createProject(owner, { name: 'Docs', orgId })
  t.equal(project.orgId, orgId)

  // Three answers in the org (through its project), one in the owner's personal org.
  openai.next({ usage: { input: 10, output: 4 } })
  t.ok(readChat(t, await chat(owner, { message: 'one', projectId: project.id })).done)
  openai.next({ usage: { input: 20, output: 6 } })
  t.ok(readChat(t, await chat(member, { message: 'two', projectId: project.id })).done, 'a member may chat')
  anthropic.next({ usage: { input: 7, output: 3, cacheCreation: 0, cacheRead: 0 } })
  t.ok(readChat(t, await chat(owner, { message: 'three', projectId: project.id, model: 'claude-haiku-4-5' })).done)
  openai.next({ usage: { input: 1000, output: 1000 } })
  t.ok(readChat(t, await chat(owner, { message: 'personal' })).done)

  const today = new Date().toISOString().slice(0, 10)
  const expected = [
    { day: today, model: 'claude-haiku-4-5', requests: 1, inputTokens: 7, outputTokens: 3 },
    { day: today, model: 'gpt-4o-mini', requests: 2, inputTokens: 30, outputTokens: 10 },
  ]
  for (const who of [owner, admin]) {
    const report = await call(who, 'GET', `/usage?orgId=${orgId}`)
    t.equal(report.statusCode, 200, report.body)
    const body = report.json()
    t.equal(body.orgId, orgId)
    t.same(body.data, expected, 'per UTC day and model, this org only')
    t.ok(Date.parse(body.from) < Date.parse(body.to), 'the window is reported')
  }

  const personal = await call(owner, 'GET', '/usage')
  t.equal(personal.statusCode, 200)
  t.same(personal.json().data, [
    { day: today, model: 'gpt-4o-mini', requests: 1, inputTokens: 1000, outputTokens: 1000 },
  ])

  const past = await call(owner, 'GET', `/usage?orgId=${orgId}&from=2020-01-01T00:00:00Z&to=2020-02-01T00:00:00Z`)
  t.equal(past.statusCode, 200)
  t.same(past.json().data, [], 'nothing outside the window')
  assertProblem(
    t,
    await call(owner, 'GET', `/usage?orgId=${orgId}&from=2020-02-01T00:00:00Z&to=2020-01-01T00:00:00Z`),
    400,
    'INVALID_RANGE',
  )

  const asMember = await call(member, 'GET', `/usage?orgId=${orgId}`)
  assertProblem(t, asMember, 403, 'INSUFFICIENT_ROLE', 'a member without admin role')
  const asOutsider = await call(outsider, 'GET', `/usage?orgId=${orgId}`)
  assertProblem(t, asOutsider, 404, 'ORG_NOT_FOUND', "another org's id")
  const unknown = await call(outsider, 'GET', '/usage?orgId=org_doesnotexist')
  assertProblem(t, unknown, 404, 'ORG_NOT_FOUND', 'an org that does not exist')
  t.equal(asOutsider.json().detail, unknown.json().detail, 'an existing org looks like a missing one')
  for (const refused of [asMember, asOutsider]) {
    t.notMatch(refused.body, /gpt-4o-mini|claude|inputTokens|"data"/, 'a refusal shows nothing of the usage')
  }
})

t.test('validation happens before any upstream call', async (t) => {
  const user = await account(app)
  const before = calls()
  const turns = (n: number) =>
    Array.from({ length: n }, (_, i) => ({ role: i % 2 === 0 ? 'user' : 'assistant', content: `turn ${i}` }))
  const invalid: [string, Record<string, unknown>][] = [
    ['empty message', { message: '' }],
    ['no message', { conversationHistory: [] }],
    ['message over 10000 characters', { message: 'x'.repeat(10_001) }],
    ['more than 50 turns of history', { message: 'hi', conversationHistory: turns(51) }],
    ['a turn with an unknown role', { message: 'hi', conversationHistory: [{ role: 'system', content: 'x' }] }],
    ['an unknown property', { message: 'hi', temperature: 0.2 }],
    ['an unknown property in the context', { message: 'hi', context: { chunks: ['a'], extra: true } }],
    ['a message that is not a string', { message: 42 }],
  ]
  for (const [label, payload] of invalid) {
    assertProblem(t, await chat(user, payload), 400, 'VALIDATION_FAILED', label)
  }
  const anonymous = remember(
    await app.inject({ method: 'POST', url: '/api/v1/chat', payload: { message: 'hi' }, remoteAddress: '10.9.9.9' }),
  )
  assertProblem(t, anonymous, 401, 'UNAUTHORIZED', 'no credentials')
  const badToken = remember(
    await app.inject({
      method: 'POST',
      url: '/api/v1/chat',
      headers: bearer('not-a-token'),
      payload: { message: 'hi' },
      remoteAddress: '10.9.9.10',
    }),
  )
  assertProblem(t, badToken, 401, 'INVALID_TOKEN', 'a bad token')
  t.same(calls(), before, 'no upstream call for any of them')

  t.ok(readChat(t, await chat(user, { message: 'x'.repeat(10_000) })).done, 'exactly 10000 characters are accepted')
  t.ok(readChat(t, await chat(user, { message: 'hi', conversationHistory: turns(50) })).done, '50 turns are accepted')
  t.equal(messagesOf(lastRequest(openai)).length, 52, 'system, 50 turns, the message')
})

t.test('API keys need the chat scope', async (t) => {
  const owner = await account(app)
  const withoutChat = await createApiKey(app, owner, owner.personalOrgId, ['projects:read'])
  const withChat = await createApiKey(app, owner, owner.personalOrgId, ['chat'])
  const before = calls()
  assertProblem(t, await chat({ headers: bearer(withoutChat.key) }, { message: 'hi' }), 403, 'INSUFFICIENT_SCOPE')
  t.same(calls(), before, 'no upstream call')
  const response = await chat({ headers: bearer(withChat.key) }, { message: 'hi' })
  t.ok(readChat(t, response).done, 'a key with the chat scope may chat')
  const rows = await usageRowsOf(app, owner.userId)
  t.equal(rows.length, 1, 'one row')
  t.match(rows[0], { orgId: owner.personalOrgId, status: 'complete' }, "metered to the key's org")
})

t.test("a project decides the org; another org's project is not found", async (t) => {
  const user = await account(app)
  const stranger = await account(app)
  const theirs = await createProject(stranger, { name: 'Theirs' })
  const mine = await createProject(user, { name: 'Mine' })
  const before = calls()
  const foreign = await chat(user, { message: 'hi', projectId: theirs.id })
  assertProblem(t, foreign, 404, 'PROJECT_NOT_FOUND', "another org's project")
  const missing = await chat(user, { message: 'hi', projectId: 'prj_doesnotexist' })
  assertProblem(t, missing, 404, 'PROJECT_NOT_FOUND', 'a project that does not exist')
  t.equal(foreign.json().detail, missing.json().detail, 'indistinguishable from a missing project')
  t.notOk(foreign.body.includes('Theirs'), 'nothing of the project leaks')
  t.same(calls(), before, 'no upstream call')
  t.same(await usageRowsOf(app, user.userId), [], 'nothing metered')

  const own = await chat(user, { message: 'hi', projectId: mine.id })
  t.ok(readChat(t, own).done, 'own project: answered')
  t.match(await onlyRow(t, user), { orgId: mine.orgId, status: 'complete' })
})

t.test("with the SDKs' own retries", async (t) => {
  const retrying = await buildTestApp(t, {
    env: {
      OPENAI_API_KEY: OPENAI_KEY,
      OPENAI_BASE_URL: openai.baseURL,
      ANTHROPIC_API_KEY: ANTHROPIC_KEY,
      ANTHROPIC_BASE_URL: anthropic.baseURL,
      CHAT_FALLBACK_MODELS: 'claude-haiku-4-5,gpt-4o-mini',
      CHAT_PROVIDER_MAX_RETRIES: '1',
      CHAT_FIRST_TOKEN_TIMEOUT_MS: String(FIRST_TOKEN_TIMEOUT_MS),
    },
  })
  const user = await account(retrying)
  const ask = async () => remember(await callAs(retrying, user, 'POST', '/chat', { message: 'hello' }))

  t.test('a 429 with Retry-After: 0 is retried once, then the fallback answers', async (t) => {
    const before = calls()
    const rateLimited = { failBeforeFirstToken: { status: 429, retryAfterSeconds: 0, message: UPSTREAM_SECRET } }
    openai.next(rateLimited).next(rateLimited)
    const done = readChat(t, await ask()).done
    t.same(calls(), { openai: before.openai + 2, anthropic: before.anthropic + 1 }, 'two OpenAI tries, then Anthropic')
    t.equal(done?.usage.model, 'claude-haiku-4-5')
  })

  t.test('a retry the SDK would wait 5 s for is cut short by the first-token timeout', async (t) => {
    const before = calls()
    openai.next({ failBeforeFirstToken: { status: 429, retryAfterSeconds: 5 } })
    const started = Date.now()
    const done = readChat(t, await ask()).done
    const elapsed = Date.now() - started
    t.equal(done?.usage.model, 'claude-haiku-4-5', 'the fallback answered')
    t.ok(elapsed < 2500, `without waiting for the SDK's retry (${elapsed} ms)`)
    t.same(calls(), { openai: before.openai + 1, anthropic: before.anthropic + 1 })
  })

  t.test('a success after one retry needs no fallback', async (t) => {
    const before = calls()
    openai.next({ failBeforeFirstToken: { status: 500, retryAfterSeconds: 0 } })
    const done = readChat(t, await ask()).done
    t.same(calls(), { openai: before.openai + 2, anthropic: before.anthropic })
    t.equal(done?.usage.model, 'gpt-4o-mini')
    const rows = await usageRowsOf(retrying, user.userId)
    t.equal(rows.length, 3, 'one row per answer, however many tries it took')
  })
})

t.test('nothing secret reaches a client or the log', async (t) => {
  t.ok(seen.length > 40, `checked ${seen.length} responses`)
  t.ok(
    logs.lines.some((line) => line.msg === 'model provider failed'),
    `the provider failures were logged (${logs.raw.length} lines)`,
  )
  for (const secret of [OPENAI_KEY, ANTHROPIC_KEY, UPSTREAM_SECRET, 'sk-live-123']) {
    t.same(
      seen.filter((text) => text.includes(secret)),
      [],
      `"${secret}" appears in no response`,
    )
    t.same(
      logs.raw.filter((line) => line.includes(secret)),
      [],
      `"${secret}" appears in no log line`,
    )
  }
})

t.test('the SSE parser follows the framing rules', async (t) => {
  const events = parseSse(': keep-alive\n\nid: 1\ndata: {"a":1}\n\nid:2\ndata:x\ndata: y\n\nid: 3\ndata: cut')
  t.same(events, [
    { id: '1', data: '{"a":1}' },
    { id: '2', data: 'x\ny' },
  ])
})
