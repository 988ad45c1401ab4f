import type { AddressInfo } from 'node:net'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import t from 'tap'
import { buildTestApp, eventually } from '../helper.js'
import {
  type Account,
  account,
  addMember,
  assertProblem,
  callAs,
  createOrg,
  type Test,
  uniqueAddress,
} from '../auth/support.js'
import { startFakeAnthropic } from '../fakes/anthropic.js'
import { startFakeOpenAI } from '../fakes/openai.js'
import { readChat, SseBuffer, usageRowsOf } from './support.js'

/**
 * The refusals of POST /api/v1/chat that depend on configuration: the org's daily token budget,
 * concurrent streams per user, requests per user per minute, and no provider at all. Each is a
 * problem+json answer sent before any provider is called.
 */

const openai = await startFakeOpenAI(t)
const anthropic = await startFakeAnthropic(t)

const providers = {
  OPENAI_API_KEY: 'sk-openai-limits-test',
  OPENAI_BASE_URL: openai.baseURL,
  ANTHROPIC_API_KEY: 'sk-ant-limits-test',
  ANTHROPIC_BASE_URL: anthropic.baseURL,
  CHAT_DEFAULT_MODEL: 'gpt-4o-mini',
  CHAT_FALLBACK_MODELS: 'claude-haiku-4-5,gpt-4o-mini',
  CHAT_PROVIDER_MAX_RETRIES: '0',
}

const calls = () => ({ openai: openai.requests.length, anthropic: anthropic.requests.length })

const chatOn = (app: FastifyInstance) => (who: Pick<Account, 'headers'>, payload: Record<string, unknown>) =>
  callAs(app, who, 'POST', '/chat', payload)

/** A 429 problem+json with the code and a Retry-After of whole seconds. */
function assertRefused(t: Test, response: LightMyRequestResponse, code: string, label = code) {
  assertProblem(t, response, 429, code, label)
  const retryAfter = String(response.headers['retry-after'])
  t.match(retryAfter, /^\d+$/, `${label}: Retry-After in seconds`)
  t.ok(Number(retryAfter) >= 1, `${label}: Retry-After is at least 1 s (${retryAfter})`)
  return Number(retryAfter)
}

t.afterEach(() => {
  openai.control.clear()
  anthropic.control.clear()
})

t.test('daily token budget (CHAT_DAILY_TOKEN_BUDGET=50)', async (t) => {
  const app = await buildTestApp(t, { env: { ...providers, CHAT_DAILY_TOKEN_BUDGET: '50' } })
  const chat = chatOn(app)

  t.test('an answer that uses up the budget: the next request is PLAN_LIMIT', async (t) => {
    const user = await account(app)
    openai.next({ usage: { input: 40, output: 20 } })
    const first = readChat(t, await chat(user, { message: 'hello' })).done
    t.equal(first?.usage.totalTokens, 60, 'the first answer is admitted with nothing used yet')
    const before = calls()
    const refused = await chat(user, { message: 'again' })
    const retryAfter = assertRefused(t, refused, 'PLAN_LIMIT')
    t.ok(retryAfter <= 86_400, `until the next UTC midnight (${retryAfter} s)`)
    t.same(calls(), before, 'no provider was called')
    t.equal((await usageRowsOf(app, user.userId)).length, 1, 'a refusal is not metered')

    const other = await account(app)
    t.ok(readChat(t, await chat(other, { message: 'hello' })).done, "another org's budget is untouched")
  })

  t.test('a conversation message is refused the same way, before anything is stored or called', async (t) => {
    const user = await account(app)
    openai.next({ usage: { input: 30, output: 25 } })
    t.ok(readChat(t, await chat(user, { message: 'spend it' })).done, '55 of 50 used')
    const created = await callAs(app, user, 'POST', '/conversations', {})
    t.equal(created.statusCode, 201)
    const id: string = created.json().id
    const before = calls()
    assertRefused(t, await callAs(app, user, 'POST', `/conversations/${id}/messages`, { content: 'hi' }), 'PLAN_LIMIT')
    t.same(calls(), before, 'no provider was called')
    const stored = await callAs(app, user, 'GET', `/conversations/${id}`)
    t.same(stored.json().messages, [], 'no message was stored')
  })

  t.test("the budget is the org's, shared by its members", async (t) => {
    const owner = await account(app)
    const member = await account(app)
    const orgId = await createOrg(app, owner, 'Budgeted')
    await addMember(app, owner, orgId, member, 'member')
    const created = await callAs(app, owner, 'POST', '/projects', { name: 'Docs', orgId })
    t.equal(created.statusCode, 201)
    const projectId: string = created.json().id

    openai.next({ usage: { input: 10, output: 10 } })
    t.ok(readChat(t, await chat(owner, { message: 'one', projectId })).done, '20 of 50 used')
    openai.next({ usage: { input: 15, output: 14 } })
    t.ok(readChat(t, await chat(member, { message: 'two', projectId })).done, '49 of 50 used: still admitted')
    openai.next({ usage: { input: 1, output: 1 } })
    t.ok(readChat(t, await chat(owner, { message: 'three', projectId })).done, '51 of 50 used')

    const before = calls()
    assertRefused(t, await chat(member, { message: 'four', projectId }), 'PLAN_LIMIT', 'the member')
    assertRefused(t, await chat(owner, { message: 'five', projectId }), 'PLAN_LIMIT', 'the owner')
    t.same(calls(), before, 'no provider was called')
    t.ok(readChat(t, await chat(owner, { message: 'personal' })).done, "the owner's personal org has its own budget")
  })
})

t.test('concurrent streams per user (CHAT_MAX_CONCURRENT_STREAMS=1)', async (t) => {
  const app = await buildTestApp(t, { env: { ...providers, CHAT_MAX_CONCURRENT_STREAMS: '1' } })
  const chat = chatOn(app)

  /** Starts a slow answer for `user` and resolves once its first token went out. */
  async function slowStream(user: Account) {
    const index = openai.requests.length
    openai.next({ tokens: 10, tokenDelayMs: 100 })
    const response = chat(user, { message: 'a slow answer' })
    await openai.waitFor(
      () => ((openai.requests[index]?.tokensSent ?? 0) > 0 ? true : undefined),
      3000,
      'the first token of the slow stream',
    )
    return { index, response }
  }

  t.test('a second stream while the first runs is refused; once it ends a new one is admitted', async (t) => {
    const user = await account(app)
    const other = await account(app)
    const first = await slowStream(user)
    const before = calls()
    const refused = await chat(user, { message: 'meanwhile' })
    t.equal(openai.requests[first.index]?.completed, false, 'the first stream was still running')
    assertRefused(t, refused, 'TOO_MANY_STREAMS')
    t.same(calls(), before, 'no provider was called')

    openai.next({ tokens: 2 })
    t.ok(readChat(t, await chat(other, { message: 'hello' })).done, 'another user is not held back')

    const done = readChat(t, await first.response).done
    t.equal(done?.fullContent.length, 50, 'the first answer completed')
    t.ok(readChat(t, await chat(user, { message: 'next' })).done, 'after it ended, a new one is admitted')
  })

  t.test('an answer that failed frees its slot', async (t) => {
    const user = await account(app)
    openai.next({ failBeforeFirstToken: { status: 400 } })
    t.equal(readChat(t, await chat(user, { message: 'hello' })).error?.code, 'UPSTREAM_ERROR')
    openai.next({ tokens: 6, cutAfterTokens: 2 })
    t.equal(readChat(t, await chat(user, { message: 'hello' })).error?.code, 'STREAM_INTERRUPTED')
    t.ok(readChat(t, await chat(user, { message: 'hello' })).done, 'admitted again')
  })

  t.test('a client that leaves frees its slot', async (t) => {
    await app.listen({ port: 0, host: '127.0.0.1' })
    const { port } = app.server.address() as AddressInfo
    const user = await account(app)
    const index = openai.requests.length
    openai.next({ tokens: 50, tokenDelayMs: 100 })
    const controller = new AbortController()
    const response = await fetch(`http://127.0.0.1:${port}/api/v1/chat`, {
      method: 'POST',
      headers: { ...user.headers, 'content-type': 'application/json' },
      body: JSON.stringify({ message: 'a long answer' }),
      signal: controller.signal,
    })
    t.equal(response.status, 200)
    const reader = response.body?.getReader()
    if (!reader) return t.fail('no response body')
    const parser = new SseBuffer()
    const decoder = new TextDecoder()
    let events = 0
    while (events < 1) {
      const { value, done } = await reader.read()
      if (done) break
      events += parser.push(decoder.decode(value, { stream: true })).length
    }
    controller.abort()
    await reader.cancel().catch(() => {})
    await openai.waitForClose(index, 3000)
    t.ok(
      await eventually(async () => (await chat(user, { message: 'again' })).statusCode === 200, 3000),
      'a new answer is admitted after the disconnect',
    )
    const rows = await usageRowsOf(app, user.userId)
    t.same(
      rows.map((row) => row.status),
      ['stopped', 'complete'],
      'the stopped answer and the next one are metered',
    )
  })
})

t.test('requests per user per minute (CHAT_RATE_LIMIT_PER_MINUTE=2)', async (t) => {
  const app = await buildTestApp(t, { env: { ...providers, CHAT_RATE_LIMIT_PER_MINUTE: '2' } })
  const user = await account(app)
  const other = await account(app)
  const shared = uniqueAddress()
  const ask = (who: Account, address: string) => callAs(app, who, 'POST', '/chat', { message: 'hello' }, address)

  // From two different addresses: the limit follows the user, not the address.
  const first = await ask(user, uniqueAddress())
  t.ok(readChat(t, first).done)
  t.equal(first.headers['ratelimit-remaining'], '1', 'the stream carries the rate-limit headers')
  t.ok(readChat(t, await ask(user, uniqueAddress())).done)
  const before = calls()
  const refused = await ask(user, shared)
  assertRefused(t, refused, 'RATE_LIMITED', 'the third request in a minute')
  t.same(calls(), before, 'no provider was called')
  t.ok(readChat(t, await ask(other, shared)).done, 'another user, from the same address, is not limited')
  t.equal((await usageRowsOf(app, user.userId)).length, 2, 'the refusal is not metered')
})

t.test('no provider configured: 503 NOT_CONFIGURED', async (t) => {
  const app = await buildTestApp(t)
  const user = await account(app)
  const before = calls()
  for (const payload of [{ message: 'hello' }, { message: 'hello', model: 'claude-haiku-4-5' }]) {
    const response = await callAs(app, user, 'POST', '/chat', payload)
    assertProblem(t, response, 503, 'NOT_CONFIGURED', JSON.stringify(payload))
  }
  t.same(calls(), before)
  const anonymous = await app.inject({ method: 'POST', url: '/api/v1/chat', payload: { message: 'hello' } })
  assertProblem(t, anonymous, 401, 'UNAUTHORIZED', 'authentication still comes first')
  const usage = await callAs(app, user, 'GET', '/usage')
  t.equal(usage.statusCode, 200, 'the usage report still works')
  t.same(usage.json().data, [])
})

t.test('only Anthropic configured: its fallback model answers', async (t) => {
  const app = await buildTestApp(t, {
    env: {
      ANTHROPIC_API_KEY: providers.ANTHROPIC_API_KEY,
      ANTHROPIC_BASE_URL: anthropic.baseURL,
      CHAT_FALLBACK_MODELS: 'claude-haiku-4-5,gpt-4o-mini',
    },
  })
  const user = await account(app)
  const before = calls()
  const done = readChat(t, await callAs(app, user, 'POST', '/chat', { message: 'hello' })).done
  t.equal(done?.usage.model, 'claude-haiku-4-5', 'the default OpenAI model is unavailable, so the fallback answers')
  t.same(calls(), { openai: before.openai, anthropic: before.anthropic + 1 }, 'OpenAI is never called')
})
