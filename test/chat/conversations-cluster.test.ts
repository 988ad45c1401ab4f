import type { AddressInfo } from 'node:net'
import { eq, sql } from 'drizzle-orm'
import type { FastifyInstance } from 'fastify'
import t from 'tap'
import { buildApp } from '../../src/app.js'
import { chatMessages } from '../../src/db/schema/index.js'
import { STOP_CHANNEL } from '../../src/modules/chat/chat-repository.js'
import { engine, postgresForTest, testConfig } from '../helper.js'
import { type Account, account, assertProblem, callAs, type Test } from '../auth/support.js'
import { startFakeOpenAI } from '../fakes/openai.js'
import { createPostgresDatabase, freshPglite } from '../support/databases.js'
import { checkConversationStream, defaultText, LiveStream, splitEventId, storedEvents, usageRowsOf } from './support.js'

/**
 * Conversations served by two instances of the app on one database: an answer generated on A is
 * resumed through B (from the log, followed live) and stopped through B (the stop reaches A over
 * the notification channel). On PostgreSQL the instances share a fresh database as two processes
 * would; on PGlite (one embedded database per process) they share one PGlite, which exercises the
 * same code paths: neither instance sees the other's answers in memory. The notification channel
 * alone is also checked within one instance.
 */

const openai = await startFakeOpenAI(t)
const env = {
  OPENAI_API_KEY: 'sk-openai-test-cluster-0a9f',
  OPENAI_BASE_URL: openai.baseURL,
  CHAT_DEFAULT_MODEL: 'gpt-4o-mini',
  CHAT_FALLBACK_MODELS: '',
  CHAT_PROVIDER_MAX_RETRIES: '0',
  CHAT_RATE_LIMIT_PER_MINUTE: '1000',
  CHAT_FIRST_TOKEN_TIMEOUT_MS: '3000',
  CHAT_IDLE_TIMEOUT_MS: '3000',
}

async function buildPair(): Promise<[FastifyInstance, FastifyInstance]> {
  if (engine === 'postgres') {
    const database = await createPostgresDatabase(await postgresForTest(t))
    const config = testConfig({ ...env, DATABASE_URL: database.url })
    const a = await buildApp(config)
    const b = await buildApp(config)
    t.teardown(async () => {
      await Promise.allSettled([a.close(), b.close()])
      await database.drop()
    })
    return [a, b]
  }
  const database = await freshPglite()
  // Both use one database and leave closing it to the test, so either may shut down first.
  const shared = { ...database, close: async () => {} }
  const a = await buildApp(testConfig(env), { database: shared })
  const b = await buildApp(testConfig(env), { database: shared })
  t.teardown(async () => {
    await Promise.allSettled([a.close(), b.close()])
    await database.close()
  })
  return [a, b]
}

const [appA, appB] = await buildPair()
const origins: string[] = []
for (const app of [appA, appB]) {
  await app.listen({ port: 0, host: '127.0.0.1' })
  origins.push(`http://127.0.0.1:${(app.server.address() as AddressInfo).port}/api/v1`)
}
const [originA = '', originB = ''] = origins

t.afterEach(() => {
  openai.control.clear()
})

async function createConversation(app: FastifyInstance, who: Pick<Account, 'headers'>) {
  const response = await callAs(app, who, 'POST', '/conversations', {})
  if (response.statusCode !== 201)
    throw new Error(`create conversation answered ${response.statusCode}: ${response.body}`)
  return response.json().id as string
}

const send = (origin: string, who: Pick<Account, 'headers'>, id: string, content: string) =>
  LiveStream.open(`${origin}/conversations/${id}/messages`, { method: 'POST', headers: who.headers, body: { content } })

const resumeOn = (origin: string, who: Pick<Account, 'headers'>, id: string, lastEventId?: string) =>
  LiveStream.open(`${origin}/conversations/${id}/stream`, {
    headers: { ...who.headers, ...(lastEventId === undefined ? {} : { 'last-event-id': lastEventId }) },
  })

async function storedMessage(app: FastifyInstance, id: string) {
  const [row] = await app.db.select().from(chatMessages).where(eq(chatMessages.id, id))
  return row
}

t.test(`an answer generated on A is resumed through B (${engine})`, async (t) => {
  const user = await account(appA)
  const id = await createConversation(appA, user)
  const index = openai.requests.length
  openai.next({ tokens: 30, tokenDelayMs: 50 })
  const onA = await send(originA, user, id, 'a long answer, generated on A')
  t.equal(onA.status, 200, onA.text ?? '')
  const head = await onA.until(4)
  const messageId = splitEventId(head[0]?.id).messageId

  assertProblem(
    t,
    await callAs(appB, user, 'POST', `/conversations/${id}/messages`, { content: 'too early' }),
    409,
    'GENERATION_IN_PROGRESS',
    'B knows the answer is streaming on A',
  )

  const [fromFour, fromStart] = await Promise.all([
    resumeOn(originB, user, id, `${messageId}:4`),
    resumeOn(originB, user, id),
  ])
  t.equal(fromFour.status, 200, fromFour.text ?? '')
  t.equal(fromStart.status, 200, fromStart.text ?? '')
  await fromFour.until(1)
  t.ok((openai.requests[index]?.tokensSent ?? 30) < 30, 'B started serving before the answer ended')

  const [all, tail, whole] = await Promise.all([onA.toEnd(), fromFour.toEnd(), fromStart.toEnd()])
  const original = checkConversationStream(t, all, { messageId, label: 'on A' })
  const resumed = checkConversationStream(t, tail, { messageId, after: 4, label: 'through B, after 4' })
  checkConversationStream(t, whole, { messageId, label: 'through B, from the start' })
  t.same(tail, all.slice(4), 'B sent exactly the events after 4, as A sent them')
  t.same(whole, all, 'and from the start, every event')
  t.equal(resumed.done?.status, 'complete', 'up to done')
  t.equal(original.done?.fullContent, defaultText(30))
  t.equal(openai.requests[index]?.closedAt, undefined, 'the answer was never interrupted')
  t.match(await storedMessage(appB, messageId), { status: 'complete', content: defaultText(30) })
  t.same(
    await storedEvents(appB, messageId),
    all.map((event) => ({ seq: splitEventId(event.id).seq, data: event.data })),
    'the shared log holds what the clients received',
  )
})

t.test(`an answer generated on A is stopped through B (${engine})`, async (t) => {
  const user = await account(appA)
  const id = await createConversation(appA, user)
  const index = openai.requests.length
  openai.next({ tokens: 40, tokenDelayMs: 50 })
  const onA = await send(originA, user, id, 'a long answer to stop from B')
  const head = await onA.until(3)
  const messageId = splitEventId(head[0]?.id).messageId
  const stopAt = Date.now()
  const stop = await callAs(appB, user, 'POST', `/conversations/${id}/stop`)
  t.equal(stop.statusCode, 200, stop.body)
  t.same(stop.json(), { messageId, status: 'stopping' })

  const stream = checkConversationStream(t, await onA.toEnd(5000), { messageId, label: 'on A' })
  t.equal(stream.done?.status, 'stopped', 'the answer on A ends as stopped')
  t.ok(stream.contents.length < 40, `partial (${stream.contents.length} tokens)`)
  t.equal(stream.done?.fullContent, stream.text)
  const upstream = await openai.waitForClose(index, 2000)
  t.ok(
    (upstream.closedAt ?? Infinity) - stopAt < 1000,
    `A aborted the provider ${(upstream.closedAt ?? Number.NaN) - stopAt} ms after the stop`,
  )
  t.match(await storedMessage(appB, messageId), { status: 'stopped', content: stream.text })
  t.match(await usageRowsOf(appB, user.userId), [{ id: messageId, status: 'stopped' }])
  const again = await callAs(appB, user, 'POST', `/conversations/${id}/stop`)
  t.same(again.json(), { messageId, status: 'stopped' }, 'B then sees it stopped')
})

/** A slow answer on `app`, stopped by a notification on the stop channel alone (no local abort). */
async function stopByNotification(t: Test, app: FastifyInstance, origin: string) {
  const user = await account(app)
  const id = await createConversation(app, user)
  const index = openai.requests.length
  openai.next({ tokens: 40, tokenDelayMs: 50 })
  const live = await send(origin, user, id, 'stop me by notification')
  const head = await live.until(3)
  const messageId = splitEventId(head[0]?.id).messageId
  const notifiedAt = Date.now()
  await app.db.execute(sql`select pg_notify(${STOP_CHANNEL}, ${messageId})`)
  const stream = checkConversationStream(t, await live.toEnd(5000), { messageId, label: 'notified' })
  t.equal(stream.done?.status, 'stopped', 'the generating instance heard the stop and ended the answer')
  const upstream = await openai.waitForClose(index, 2000)
  t.ok((upstream.closedAt ?? Infinity) - notifiedAt < 1000, 'and aborted the provider request')
  t.match(await storedMessage(app, messageId), { status: 'stopped', content: stream.text })
}

t.test(`a stop notification reaches the instance generating the answer (${engine})`, async (t) => {
  t.test('sent from its own database connection', (t) => stopByNotification(t, appA, originA))
  t.test("sent from the other instance's connection", async (t) => {
    const user = await account(appA)
    const id = await createConversation(appA, user)
    openai.next({ tokens: 40, tokenDelayMs: 50 })
    const live = await send(originA, user, id, 'stop me from B by notification')
    const messageId = splitEventId((await live.until(3))[0]?.id).messageId
    await appB.db.execute(sql`select pg_notify(${STOP_CHANNEL}, ${messageId})`)
    const stream = checkConversationStream(t, await live.toEnd(5000), { messageId, label: 'notified from B' })
    t.equal(stream.done?.status, 'stopped')
  })
})

t.test(`shutting A down ends its answer as stopped and writes it; B serves the rest (${engine})`, async (t) => {
  const user = await account(appA)
  const id = await createConversation(appA, user)
  const index = openai.requests.length
  openai.next({ tokens: 40, tokenDelayMs: 50 })
  const onA = await send(originA, user, id, 'an answer cut short by a shutdown')
  const messageId = splitEventId((await onA.until(3))[0]?.id).messageId
  const throughB = await resumeOn(originB, user, id, `${messageId}:3`)
  t.equal(throughB.status, 200, throughB.text ?? '')
  await appA.close()
  const stream = checkConversationStream(t, await onA.toEnd(5000), { messageId, label: 'on A' })
  t.equal(stream.done?.status, 'stopped', "A's client gets done, stopped")
  t.ok(stream.contents.length < 40, `partial (${stream.contents.length} tokens)`)
  const tail = checkConversationStream(t, await throughB.toEnd(5000), { messageId, after: 3, label: 'through B' })
  t.same(tail.raw, stream.raw.slice(3), 'the client following through B got the same events, up to done')
  await openai.waitForClose(index, 2000)
  t.match(await storedMessage(appB, messageId), { status: 'stopped', content: stream.text, heartbeatAt: null })
  t.match(await usageRowsOf(appB, user.userId), [{ id: messageId, status: 'stopped' }], 'metered')
  t.same(
    await storedEvents(appB, messageId),
    stream.raw.map((event) => ({ seq: splitEventId(event.id).seq, data: event.data })),
    'the log is complete',
  )
  openai.next({ tokens: 2 })
  const after = await send(originB, user, id, 'B takes the next message')
  t.equal(checkConversationStream(t, await after.toEnd(), { label: 'on B' }).done?.status, 'complete')
})
