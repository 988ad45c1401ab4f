import type { AddressInfo } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import { eq, sql } from 'drizzle-orm'
import type { LightMyRequestResponse } from 'fastify'
import t from 'tap'
import { chatMessages, chatUsage } from '../../src/db/schema/index.js'
import { isForeignKeyViolation } from '../../src/db/results.js'
import { createChatRepository } from '../../src/modules/chat/chat-repository.js'
import { buildTestApp, eventually } from '../helper.js'
import {
  type Account,
  account,
  addMember,
  assertProblem,
  callAs,
  createOrg,
  type Method,
  type Test,
  walkPages,
} from '../auth/support.js'
import type { RecordedRequest } from '../fakes/control.js'
import { startFakeOpenAI } from '../fakes/openai.js'
import {
  checkConversationStream,
  type ConversationStream,
  defaultText,
  LiveStream,
  parseSse,
  type SseEvent,
  splitEventId,
  storedEvents as storedEventsOf,
  truncateLog,
  usageRowsOf,
} from './support.js'

/**
 * Resumable conversations (/api/v1/conversations): stored turns, answers generated independently
 * of the request that asked for them, event ids `<messageId>:<n>`, resuming after Last-Event-ID
 * (finished answers from the log, live ones from memory), stopping, cut answers, and the event log
 * in chat_message_events. Two instances sharing one database are in conversations-cluster.test.ts.
 */

const OPENAI_KEY = 'sk-openai-test-conversations-5d1e'

const openai = await startFakeOpenAI(t)
const app = await buildTestApp(t, {
  env: {
    OPENAI_API_KEY: OPENAI_KEY,
    OPENAI_BASE_URL: openai.baseURL,
    CHAT_DEFAULT_MODEL: 'gpt-4o-mini',
    CHAT_FALLBACK_MODELS: '',
    CHAT_PROVIDER_MAX_RETRIES: '0',
    CHAT_RATE_LIMIT_PER_MINUTE: '1000',
    CHAT_FIRST_TOKEN_TIMEOUT_MS: '3000',
    CHAT_IDLE_TIMEOUT_MS: '3000',
    CHAT_MAX_CONCURRENT_STREAMS: '10',
  },
})
await app.listen({ port: 0, host: '127.0.0.1' })
const origin = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}/api/v1`

interface Conversation {
  id: string
  orgId: string
  projectId: string | null
  title: string
  model: string | null
  createdAt: string
  updatedAt: string
}

interface Message {
  id: string
  role: 'user' | 'assistant'
  content: string
  status: 'streaming' | 'complete' | 'stopped' | 'incomplete' | 'error'
  model: string | null
  errorCode: string | null
  createdAt: string
  updatedAt: string
}

type WithMessages = Conversation & { messages: Message[] }

t.afterEach(() => {
  // A behaviour left queued by a failing test must not leak into the next one.
  openai.control.clear()
})

const call = (who: Pick<Account, 'headers'>, method: Method, url: string, payload?: Record<string, unknown>) =>
  callAs(app, who, method, url, payload)

async function createConversation(who: Pick<Account, 'headers'>, payload: Record<string, unknown> = {}) {
  const response = await call(who, 'POST', '/conversations', payload)
  if (response.statusCode !== 201)
    throw new Error(`create conversation answered ${response.statusCode}: ${response.body}`)
  return response.json() as Conversation
}

async function getConversation(who: Pick<Account, 'headers'>, id: string): Promise<WithMessages> {
  const response = await call(who, 'GET', `/conversations/${id}`)
  if (response.statusCode !== 200) throw new Error(`get conversation answered ${response.statusCode}: ${response.body}`)
  return response.json()
}

/** Sends a message and reads the whole answer (inject returns once the stream ends). */
async function send(t: Test, who: Pick<Account, 'headers'>, id: string, content: string, label = 'answer') {
  const response = await call(who, 'POST', `/conversations/${id}/messages`, { content })
  t.equal(response.statusCode, 200, `${label}: status 200 (${response.body.slice(0, 300)})`)
  t.match(response.headers['content-type'], /^text\/event-stream(;|$)/, `${label}: text/event-stream`)
  return checkConversationStream(t, parseSse(response.body), { label })
}

/** GET /conversations/{id}/stream with the id as Last-Event-ID (or as `?lastEventId=`). */
function resume(
  who: Pick<Account, 'headers'>,
  id: string,
  lastEventId?: string,
  via: 'header' | 'query' = 'header',
): Promise<LightMyRequestResponse> {
  const query = lastEventId !== undefined && via === 'query' ? `?lastEventId=${encodeURIComponent(lastEventId)}` : ''
  return app.inject({
    method: 'GET',
    url: `/api/v1/conversations/${id}/stream${query}`,
    headers: {
      ...who.headers,
      ...(lastEventId !== undefined && via === 'header' ? { 'last-event-id': lastEventId } : {}),
    },
  })
}

function liveSend(who: Pick<Account, 'headers'>, id: string, content: string) {
  return LiveStream.open(`${origin}/conversations/${id}/messages`, {
    method: 'POST',
    headers: who.headers,
    body: { content },
  })
}

function liveResume(who: Pick<Account, 'headers'>, id: string, lastEventId?: string) {
  return LiveStream.open(`${origin}/conversations/${id}/stream`, {
    headers: { ...who.headers, ...(lastEventId === undefined ? {} : { 'last-event-id': lastEventId }) },
  })
}

/** The log of one answer, as stored, one entry per event. */
const storedEvents = (messageId: string) => storedEventsOf(app, messageId)

async function storedMessage(id: string) {
  const [row] = await app.db.select().from(chatMessages).where(eq(chatMessages.id, id))
  return row
}

/** What a client received, as the log keeps it. */
const asLogged = (events: SseEvent[]) => events.map((event) => ({ seq: splitEventId(event.id).seq, data: event.data }))

/** The OpenAI chat messages of a request, as sent. */
const messagesOf = (request: RecordedRequest | undefined) =>
  (request?.body.messages ?? []) as { role: string; content: string }[]

t.test('conversations: create, list, read, delete', async (t) => {
  t.test('create answers 201 with Location; defaults and given fields are kept', async (t) => {
    const user = await account(app)
    const response = await call(user, 'POST', '/conversations', {})
    t.equal(response.statusCode, 201, response.body)
    const created = response.json() as Conversation
    t.match(created.id, /^cnv_[0-9a-f]{32}$/)
    t.equal(response.headers.location, `/api/v1/conversations/${created.id}`, 'Location names the conversation')
    t.match(created, { orgId: user.personalOrgId, projectId: null, title: '', model: null }, 'defaults')
    t.same(await getConversation(user, created.id), { ...created, messages: [] }, 'GET answers the same, no messages')

    const titled = await createConversation(user, { title: 'Billing questions', model: 'gpt-4o' })
    t.match(titled, { title: 'Billing questions', model: 'gpt-4o', orgId: user.personalOrgId })

    const orgId = await createOrg(app, user, 'Chat Co')
    t.equal((await createConversation(user, { orgId })).orgId, orgId, 'in an org the caller belongs to')
    const stranger = await account(app)
    assertProblem(
      t,
      await call(stranger, 'POST', '/conversations', { orgId }),
      404,
      'ORG_NOT_FOUND',
      "in an org the caller doesn't belong to",
    )
    const viewer = await account(app)
    await addMember(app, user, orgId, viewer, 'viewer')
    assertProblem(t, await call(viewer, 'POST', '/conversations', { orgId }), 403, 'INSUFFICIENT_ROLE', 'as a viewer')
  })

  t.test('a project grounds the conversation in its org; another org’s project does not exist', async (t) => {
    const user = await account(app)
    const orgId = await createOrg(app, user, 'Project Co')
    const project = await call(user, 'POST', '/projects', { name: 'Docs', orgId })
    t.equal(project.statusCode, 201, project.body)
    const projectId = project.json().id as string
    const grounded = await createConversation(user, { projectId })
    t.match(grounded, { projectId, orgId }, "the project's org")
    assertProblem(
      t,
      await call(user, 'POST', '/conversations', { projectId, orgId: user.personalOrgId }),
      400,
      'ORG_MISMATCH',
      'a project of another org than orgId',
    )

    const stranger = await account(app)
    const theirs = await call(stranger, 'POST', '/projects', { name: 'Theirs' })
    t.equal(theirs.statusCode, 201, theirs.body)
    const foreign = await call(user, 'POST', '/conversations', { projectId: theirs.json().id })
    assertProblem(t, foreign, 404, 'PROJECT_NOT_FOUND', "another org's project")
    const missing = await call(user, 'POST', '/conversations', { projectId: 'prj_doesnotexist' })
    assertProblem(t, missing, 404, 'PROJECT_NOT_FOUND', 'a project that does not exist')
    t.equal(foreign.json().detail, missing.json().detail, 'looks exactly like one that does not exist')
  })

  t.test('invalid requests answer 400 VALIDATION_FAILED', async (t) => {
    const user = await account(app)
    const { id } = await createConversation(user)
    const invalid: [string, string, Record<string, unknown>][] = [
      ['an unknown property on create', '/conversations', { title: 'x', temperature: 0.2 }],
      ['a title over 200 characters', '/conversations', { title: 'x'.repeat(201) }],
      ['an empty model', '/conversations', { model: '' }],
      ['an empty message', `/conversations/${id}/messages`, { content: '' }],
      ['no content', `/conversations/${id}/messages`, {}],
      ['content that is not a string', `/conversations/${id}/messages`, { content: 42 }],
      ['an unknown property on a message', `/conversations/${id}/messages`, { content: 'hi', role: 'system' }],
      ['a message over 10,000 characters', `/conversations/${id}/messages`, { content: 'x'.repeat(10_001) }],
    ]
    const before = openai.requests.length
    for (const [label, url, payload] of invalid) {
      assertProblem(t, await call(user, 'POST', url, payload), 400, 'VALIDATION_FAILED', label)
    }
    t.equal(openai.requests.length, before, 'nothing reached the provider')
    t.same((await getConversation(user, id)).messages, [], 'no message was stored')
    const list = await call(user, 'GET', '/conversations')
    t.equal(list.json().data.length, 1, 'no conversation was created by the refused requests')
  })

  t.test('the list holds only your conversations, most recently active first, page by page', async (t) => {
    const user = await account(app)
    const colleague = await account(app)
    const orgId = await createOrg(app, user, 'Shared Co')
    await addMember(app, user, orgId, colleague, 'member')
    const first = await createConversation(user, { title: 'first' })
    const second = await createConversation(user, { title: 'second', orgId })
    const third = await createConversation(user, { title: 'third' })
    const theirs = await createConversation(colleague, { title: 'theirs', orgId })

    const ids = async (who: Account) => {
      const pages = await walkPages<Conversation>(t, (cursor) =>
        call(who, 'GET', `/conversations?limit=1${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`),
      )
      t.ok(
        pages.pages.every((page) => page.length <= 1),
        'no page is longer than the limit',
      )
      return pages.items.map((conversation) => conversation.id)
    }
    t.same(await ids(user), [third.id, second.id, first.id], 'newest first, across pages of one')
    t.same(await ids(colleague), [theirs.id], 'a colleague in the same org sees only their own')

    openai.next({ tokens: 2 })
    t.ok((await send(t, user, first.id, 'bring me to the top')).done, 'answered')
    t.same(await ids(user), [first.id, third.id, second.id], 'a new message makes the conversation the latest')
    const whole = await call(user, 'GET', '/conversations')
    t.same(
      (whole.json().data as Conversation[]).map((c) => c.id),
      [first.id, third.id, second.id],
      'the same order in one page',
    )
    t.equal(whole.json().nextCursor, null, 'no next page')
    assertProblem(t, await call(user, 'GET', '/conversations?cursor=garbage'), 400, 'INVALID_CURSOR', 'a bad cursor')
  })

  t.test('a conversation with its messages: user then assistant, with statuses and the full answer', async (t) => {
    const user = await account(app)
    const { id } = await createConversation(user)
    openai.next({ tokens: 3 })
    const stream = await send(t, user, id, 'first question')
    openai.next({ tokens: 2, text: (i) => `second-${i} ` })
    const second = await send(t, user, id, 'second question')
    const conversation = await getConversation(user, id)
    t.match(
      conversation.messages,
      [
        { role: 'user', content: 'first question', status: 'complete' },
        {
          id: stream.messageId,
          role: 'assistant',
          content: defaultText(3),
          status: 'complete',
          model: 'gpt-4o-mini',
          errorCode: null,
        },
        { role: 'user', content: 'second question', status: 'complete' },
        { id: second.messageId, role: 'assistant', content: 'second-0 second-1 ', status: 'complete' },
      ],
      'in the order they were written',
    )
    t.equal(conversation.messages.length, 4)
    t.ok(
      conversation.messages.every((message) => /^msg_/.test(message.id)),
      'message ids are msg_…',
    )
  })

  t.test('delete answers 204, then the conversation is gone', async (t) => {
    const user = await account(app)
    const kept = await createConversation(user, { title: 'kept' })
    const { id } = await createConversation(user, { title: 'deleted' })
    openai.next({ tokens: 2 })
    const stream = await send(t, user, id, 'something to delete')
    t.ok(stream.done)
    const deleted = await call(user, 'DELETE', `/conversations/${id}`)
    t.equal(deleted.statusCode, 204)
    t.equal(deleted.body, '', 'no body')
    assertProblem(t, await call(user, 'GET', `/conversations/${id}`), 404, 'CONVERSATION_NOT_FOUND', 'get after')
    assertProblem(t, await resume(user, id), 404, 'CONVERSATION_NOT_FOUND', 'stream after')
    assertProblem(t, await call(user, 'DELETE', `/conversations/${id}`), 404, 'CONVERSATION_NOT_FOUND', 'again')
    const list = await call(user, 'GET', '/conversations')
    t.same(
      (list.json().data as Conversation[]).map((c) => c.id),
      [kept.id],
      'no longer listed; the other one is',
    )
    t.same(await storedEvents(stream.messageId), [], 'its event log went with it')
    t.equal(await storedMessage(stream.messageId), undefined, 'and its messages')
  })

  t.test('nobody else can see or touch a conversation, even in the same org', async (t) => {
    const owner = await account(app)
    const colleague = await account(app)
    const admin = await account(app)
    const stranger = await account(app)
    const orgId = await createOrg(app, owner, 'Private Chats')
    await addMember(app, owner, orgId, colleague, 'member')
    await addMember(app, owner, orgId, admin, 'admin')
    const { id } = await createConversation(owner, { orgId, title: 'mine' })
    openai.next({ tokens: 2 })
    const stream = await send(t, owner, id, 'private question')
    const before = openai.requests.length
    for (const [who, label] of [
      [colleague, 'a member of the same org'],
      [admin, 'an admin of the same org'],
      [stranger, 'a stranger'],
    ] as const) {
      assertProblem(t, await call(who, 'GET', `/conversations/${id}`), 404, 'CONVERSATION_NOT_FOUND', `${label}: get`)
      assertProblem(
        t,
        await call(who, 'POST', `/conversations/${id}/messages`, { content: 'let me in' }),
        404,
        'CONVERSATION_NOT_FOUND',
        `${label}: message`,
      )
      assertProblem(t, await resume(who, id), 404, 'CONVERSATION_NOT_FOUND', `${label}: stream`)
      assertProblem(
        t,
        await resume(who, id, `${stream.messageId}:1`),
        404,
        'CONVERSATION_NOT_FOUND',
        `${label}: stream with Last-Event-ID`,
      )
      assertProblem(
        t,
        await call(who, 'POST', `/conversations/${id}/stop`),
        404,
        'CONVERSATION_NOT_FOUND',
        `${label}: stop`,
      )
      assertProblem(
        t,
        await call(who, 'DELETE', `/conversations/${id}`),
        404,
        'CONVERSATION_NOT_FOUND',
        `${label}: delete`,
      )
      const list = await call(who, 'GET', '/conversations')
      t.same(list.json().data, [], `${label}: not listed`)
    }
    const missing = await call(owner, 'GET', '/conversations/cnv_doesnotexist')
    assertProblem(t, missing, 404, 'CONVERSATION_NOT_FOUND', 'one that does not exist')
    t.equal(openai.requests.length, before, 'nothing reached the provider')
    const conversation = await getConversation(owner, id)
    t.equal(conversation.messages.length, 2, 'still there, unchanged, for its owner')
    t.equal(conversation.messages[1]?.content, defaultText(2))
  })
})

t.test('sending a message streams the answer with ids <messageId>:<n>', async (t) => {
  t.test('content events, then one done; stored complete; metered', async (t) => {
    const user = await account(app)
    const { id } = await createConversation(user)
    const index = openai.requests.length
    openai.next({ tokens: 4, usage: { input: 42, output: 9 } })
    const stream = await send(t, user, id, 'What is Backplane?')
    t.match(stream.messageId, /^msg_[0-9a-f]{32}$/)
    t.same(stream.seqs, [1, 2, 3, 4, 5], 'ids <messageId>:1 … :5')
    t.same(stream.contents, ['tok0 ', 'tok1 ', 'tok2 ', 'tok3 '], 'one content event per token, in order')
    const done = stream.done
    if (!done) return t.fail(`no done event: ${JSON.stringify(stream.events)}`)
    t.same(
      done,
      {
        type: 'done',
        messageId: stream.messageId,
        status: 'complete',
        sources: [],
        usage: { model: 'gpt-4o-mini', inputTokens: 42, outputTokens: 9, totalTokens: 51 },
        fullContent: defaultText(4),
      },
      'done names the message, says complete and carries the whole answer',
    )
    t.equal(done.fullContent, stream.text, 'fullContent is the content events joined')

    const upstream = openai.requests[index]
    t.equal(openai.requests.length, index + 1, 'one provider call')
    t.equal(upstream?.apiKey, OPENAI_KEY)
    t.equal(upstream?.body.model, 'gpt-4o-mini', 'the default model')
    const messages = messagesOf(upstream)
    t.equal(messages[0]?.role, 'system', 'instructions first')
    t.same(messages.slice(1), [{ role: 'user', content: 'What is Backplane?' }], 'then the message alone')

    const stored = await storedMessage(stream.messageId)
    t.match(stored, {
      conversationId: id,
      role: 'assistant',
      status: 'complete',
      content: defaultText(4),
      model: 'gpt-4o-mini',
      errorCode: null,
      heartbeatAt: null,
    })
    const rows = await usageRowsOf(app, user.userId)
    t.equal(rows.length, 1, 'one chat_usage row')
    t.match(rows[0], {
      id: stream.messageId,
      conversationId: id,
      orgId: user.personalOrgId,
      provider: 'openai',
      model: 'gpt-4o-mini',
      inputTokens: 42,
      outputTokens: 9,
      estimated: false,
      status: 'complete',
    })
  })

  t.test('later messages carry the earlier turns; the title is the first message', async (t) => {
    const user = await account(app)
    const { id } = await createConversation(user)
    const first = `${'A question that is long enough to be cut when it becomes the title '.repeat(2)}end`
    t.ok(first.length > 80)
    const index = openai.requests.length
    openai.next({ tokens: 2, text: (i) => `one-${i} ` })
    const one = await send(t, user, id, first, 'first')
    openai.next({ tokens: 2, text: (i) => `two-${i} ` })
    const two = await send(t, user, id, 'second question', 'second')
    openai.next({ tokens: 1 })
    await send(t, user, id, 'third question', 'third')
    t.equal(one.done?.fullContent, 'one-0 one-1 ')
    t.equal(two.done?.fullContent, 'two-0 two-1 ')
    t.not(one.messageId, two.messageId, 'each answer is its own message')

    t.same(messagesOf(openai.requests[index]).slice(1), [{ role: 'user', content: first }], 'first: the message alone')
    t.same(
      messagesOf(openai.requests[index + 1]).slice(1),
      [
        { role: 'user', content: first },
        { role: 'assistant', content: 'one-0 one-1 ' },
        { role: 'user', content: 'second question' },
      ],
      'second: the first turn, then the message',
    )
    t.same(
      messagesOf(openai.requests[index + 2]).slice(1),
      [
        { role: 'user', content: first },
        { role: 'assistant', content: 'one-0 one-1 ' },
        { role: 'user', content: 'second question' },
        { role: 'assistant', content: 'two-0 two-1 ' },
        { role: 'user', content: 'third question' },
      ],
      'third: both earlier turns in order',
    )
    const conversation = await getConversation(user, id)
    t.equal(conversation.title, first.slice(0, 80), 'the title is the first 80 characters of the first message')
    t.equal(conversation.messages.length, 6)

    const titled = await createConversation(user, { title: 'Given title' })
    openai.next({ tokens: 1 })
    await send(t, user, titled.id, 'this does not become the title')
    t.equal((await getConversation(user, titled.id)).title, 'Given title', 'a given title is kept')
  })

  t.test('a title cut at 80 characters does not split a character', async (t) => {
    const user = await account(app)
    const { id } = await createConversation(user)
    // The emoji is two UTF-16 code units, the 80th and 81st.
    const content = `${'a'.repeat(79)}\u{1F600} and the rest of the question`
    openai.next({ tokens: 1 })
    await send(t, user, id, content)
    const { title } = await getConversation(user, id)
    t.notMatch(title, /\uFFFD/, `no replacement character (${JSON.stringify(title.slice(-3))})`)
    t.ok(content.startsWith(title), 'the title is the start of the message')
    t.ok(title.length >= 79, 'and as long as 80 characters allow')
  })

  t.test("the conversation's model is the one asked for", async (t) => {
    const user = await account(app)
    const { id } = await createConversation(user, { model: 'gpt-4o' })
    const index = openai.requests.length
    openai.next({ tokens: 2 })
    const stream = await send(t, user, id, 'which model?')
    t.equal(openai.requests[index]?.body.model, 'gpt-4o', 'sent to the provider')
    t.equal(stream.done?.usage.model, 'gpt-4o')
    t.equal((await storedMessage(stream.messageId))?.model, 'gpt-4o')
  })

  t.test('the provider refusing before the first token: error event, message status error', async (t) => {
    const user = await account(app)
    const { id } = await createConversation(user)
    openai.next({ failBeforeFirstToken: { status: 500 } })
    const stream = await send(t, user, id, 'will fail')
    t.same(stream.contents, [])
    t.match(stream.error, { type: 'error', code: 'UPSTREAM_UNAVAILABLE' })
    t.same(stream.seqs, [1])
    t.match(await storedMessage(stream.messageId), { status: 'error', content: '', errorCode: 'UPSTREAM_UNAVAILABLE' })
    t.same(asLogged(stream.raw), await storedEvents(stream.messageId), 'the error is logged too')
    openai.next({ tokens: 1 })
    t.ok((await send(t, user, id, 'try again', 'retry')).done, 'the conversation takes a new message')
  })
})

t.test('resuming a finished answer replays exactly the events after Last-Event-ID', async (t) => {
  const user = await account(app)
  const { id } = await createConversation(user)
  openai.next({ tokens: 8 })
  const original = await send(t, user, id, 'an answer to replay')
  const messageId = original.messageId
  const last = original.raw.length
  t.equal(last, 9, 'eight content events and done')

  const check = (t: Test, response: LightMyRequestResponse, after: number, label: string) => {
    t.equal(response.statusCode, 200, `${label}: 200 (${response.body.slice(0, 200)})`)
    t.match(response.headers['content-type'], /^text\/event-stream(;|$)/, `${label}: an event stream`)
    const raw = parseSse(response.body)
    checkConversationStream(t, raw, { messageId, after, ends: after < last, label })
    t.same(raw, original.raw.slice(after), `${label}: exactly the events after ${after}, as first sent`)
  }

  check(t, await resume(user, id), 0, 'no Last-Event-ID')
  for (const after of [0, 1, 4, last - 1, last]) {
    check(t, await resume(user, id, `${messageId}:${after}`), after, `Last-Event-ID ${messageId}:${after}`)
  }
  check(t, await resume(user, id, `${messageId}:3`, 'query'), 3, '?lastEventId=')
  check(t, await resume(user, id, ` ${messageId}:5 `), 5, 'surrounding spaces are ignored')
  check(t, await resume(user, id, '6'), 6, 'a bare number counts in the latest answer')
  check(t, await resume(user, id, `${messageId}:${last + 5}`), last, 'past the end: nothing')

  for (const bad of ['garbage', `${messageId}:`, `${messageId}:-1`, `${messageId}:x`, 'msg_123:1', `${messageId}`]) {
    assertProblem(t, await resume(user, id, bad), 400, 'INVALID_LAST_EVENT_ID', `Last-Event-ID ${JSON.stringify(bad)}`)
  }
  assertProblem(t, await resume(user, id, 'garbage', 'query'), 400, 'INVALID_LAST_EVENT_ID', '?lastEventId=garbage')

  t.test('an earlier answer is replayed when its id is named', async (t) => {
    openai.next({ tokens: 2, text: (i) => `later-${i} ` })
    const later = await send(t, user, id, 'a later question')
    check(t, await resume(user, id, `${messageId}:2`), 2, 'the first answer, by its id')
    const latest = await resume(user, id)
    t.same(parseSse(latest.body), later.raw, 'without an id: the latest answer')
  })

  t.test('an id that is not an answer of this conversation', async (t) => {
    const conversation = await getConversation(user, id)
    const userMessage = conversation.messages.find((message) => message.role === 'user')
    assertProblem(t, await resume(user, id, `${userMessage?.id}:1`), 404, 'MESSAGE_NOT_FOUND', "a user message's id")
    const other = await createConversation(user)
    assertProblem(
      t,
      await resume(user, other.id, `${messageId}:1`),
      404,
      'MESSAGE_NOT_FOUND',
      "another conversation's answer",
    )
    assertProblem(t, await resume(user, other.id), 404, 'MESSAGE_NOT_FOUND', 'a conversation without an answer')
    assertProblem(
      t,
      await resume(user, id, 'msg_0000000000000000000000000000beef:1'),
      404,
      'MESSAGE_NOT_FOUND',
      'an answer that does not exist',
    )
  })
})

t.test('a dropped client resumes a live answer: the missed events, the live rest, done', async (t) => {
  const user = await account(app)
  const { id } = await createConversation(user)
  const index = openai.requests.length
  openai.next({ tokens: 40, tokenDelayMs: 50 })
  const first = await liveSend(user, id, 'a long answer, please')
  t.equal(first.status, 200, first.text ?? '')
  const received = (await first.until(5)).slice(0, 5)
  await first.abort()
  const head = checkConversationStream(t, received, { ends: false, label: 'before the drop' })
  await sleep(300)
  const upstream = openai.requests[index]
  t.equal(upstream?.closedAt, undefined, 'the provider request goes on without the client')
  t.ok((upstream?.tokensSent ?? 0) > 5, `tokens keep coming (${upstream?.tokensSent})`)

  const lastId = received.at(-1)?.id ?? ''
  const resumed = await liveResume(user, id, lastId)
  t.equal(resumed.status, 200, resumed.text ?? '')
  await resumed.until(1)
  t.ok(
    (upstream?.tokensSent ?? 40) < 40,
    `resumed while the answer was still being generated (${upstream?.tokensSent})`,
  )
  const tail = checkConversationStream(t, await resumed.toEnd(), {
    messageId: head.messageId,
    after: 5,
    label: 'resumed',
  })
  const done = tail.done
  if (!done) return t.fail(`the resumed stream did not end with done: ${JSON.stringify(tail.events.slice(-2))}`)
  t.equal(done.status, 'complete')
  t.equal(done.messageId, head.messageId)
  t.equal(head.text + tail.text, done.fullContent, 'both connections together hold the whole answer, once')
  t.equal(done.fullContent, defaultText(40))
  t.equal(tail.seqs.at(-1), 41, 'forty content events and done')
  t.ok(await eventually(() => upstream?.completed === true, 3000), 'the provider finished the answer')
  t.equal(upstream?.closedAt, undefined, 'and was never cut off')

  t.test('two resumes at once both get the same whole tail', async (t) => {
    const index = openai.requests.length
    openai.next({ tokens: 30, tokenDelayMs: 50, text: (i) => `c${i} ` })
    const original = await liveSend(user, id, 'another long answer')
    const start = await original.until(3)
    const messageId = splitEventId(start[0]?.id).messageId
    const [a, b] = await Promise.all([liveResume(user, id, `${messageId}:2`), liveResume(user, id, `${messageId}:2`)])
    t.equal(a.status, 200)
    t.equal(b.status, 200)
    const [eventsA, eventsB, all] = await Promise.all([a.toEnd(), b.toEnd(), original.toEnd()])
    t.equal(openai.requests[index]?.tokensSent, 30, 'the answer was produced in full')
    const streamA = checkConversationStream(t, eventsA, { messageId, after: 2, label: 'resume A' })
    checkConversationStream(t, eventsB, { messageId, after: 2, label: 'resume B' })
    const whole = checkConversationStream(t, all, { messageId, label: 'the original' })
    t.same(eventsA, eventsB, 'both resumes received the same events')
    t.same(eventsA, all.slice(2), 'the original stream after event 2, exactly')
    t.equal(streamA.done?.status, 'complete')
    t.equal(whole.done?.fullContent, Array.from({ length: 30 }, (_, i) => `c${i} `).join(''))
  })
})

t.test('a second message while an answer streams: 409 GENERATION_IN_PROGRESS', async (t) => {
  const user = await account(app)
  const { id } = await createConversation(user)
  const other = await createConversation(user)
  openai.next({ tokens: 20, tokenDelayMs: 50 })
  const live = await liveSend(user, id, 'first')
  await live.until(2)
  const before = openai.requests.length
  const refused = await call(user, 'POST', `/conversations/${id}/messages`, { content: 'second, too early' })
  assertProblem(t, refused, 409, 'GENERATION_IN_PROGRESS', 'while the answer streams')
  t.equal(openai.requests.length, before, 'not sent to the provider')
  const during = await getConversation(user, id)
  t.same(
    during.messages.map((message) => [message.role, message.status]),
    [
      ['user', 'complete'],
      ['assistant', 'streaming'],
    ],
    'the refused message was not stored; the answer is streaming',
  )
  openai.next({ tokens: 1 })
  t.ok((await send(t, user, other.id, 'elsewhere', 'another conversation')).done, 'other conversations are not blocked')
  const stream = checkConversationStream(t, await live.toEnd(), { label: 'the first answer' })
  t.equal(stream.done?.status, 'complete')
  openai.next({ tokens: 1 })
  t.ok((await send(t, user, id, 'second, now', 'after it ended')).done, 'accepted once the answer ended')
})

t.test('messages sent at the same moment: one is answered, the others refused with 409', async (t) => {
  const user = await account(app)
  const { id } = await createConversation(user)
  const before = openai.requests.length
  for (let i = 0; i < 4; i++) openai.next({ tokens: 5, tokenDelayMs: 20 })
  const responses = await Promise.all(
    [0, 1, 2, 3].map((i) => call(user, 'POST', `/conversations/${id}/messages`, { content: `question ${i}` })),
  )
  const statuses = responses.map((response) => response.statusCode)
  t.same([...statuses].sort(), [200, 409, 409, 409], `one accepted, three refused (answered ${statuses.join(', ')})`)
  for (const refused of responses.filter((response) => response.statusCode === 409)) {
    assertProblem(t, refused, 409, 'GENERATION_IN_PROGRESS', 'a refused one')
  }
  t.equal(openai.requests.length, before + 1, 'one provider call')
  const { messages } = await getConversation(user, id)
  t.same(
    messages.map((message) => message.role),
    ['user', 'assistant'],
    'one question and one answer in the conversation',
  )
})

t.test(
  'turns started in one statement: one per conversation, the rest refused, other conversations unaffected',
  async (t) => {
    const user = await account(app)
    const first = await createConversation(user)
    const second = await createConversation(user)
    const repository = createChatRepository(app.db)
    const turn = (conversationId: string, n: number) => ({
      conversationId,
      userMessageId: `msg_${'1'.repeat(31)}${n}`,
      assistantMessageId: `msg_${'2'.repeat(31)}${n}`,
      content: `question ${n}`,
      model: 'gpt-4o-mini',
      title: `question ${n}`,
    })
    const started = await repository.startTurns([turn(first.id, 1), turn(first.id, 2), turn(second.id, 3)])
    t.equal(started.filter(Boolean).length, 2, `two of three started (${started.join(', ')})`)
    t.equal(started[2], true, 'the other conversation started')
    t.not(started[0], started[1], 'exactly one of the two turns of the first conversation')
    const [context] = await repository.turnContexts(
      [{ id: first.id, userId: user.userId, orgIds: [user.personalOrgId] }],
      { staleMs: 60_000, historyTurns: 10, countTokensToday: true },
    )
    t.equal(context?.tokensToday, 0, 'nothing used today yet')
    t.match(context?.streaming, { abandoned: false, model: 'gpt-4o-mini' }, 'its answer is streaming')
    t.same(
      context?.history,
      [{ role: 'user', content: started[0] ? 'question 1' : 'question 2' }],
      'only the winning question was stored',
    )
    t.match(context?.conversation, { id: first.id, title: started[0] ? 'question 1' : 'question 2' })
    const [foreign] = await repository.turnContexts(
      [{ id: first.id, userId: 'usr_someone_else', orgIds: [user.personalOrgId] }],
      { staleMs: 60_000, historyTurns: 10, countTokensToday: false },
    )
    t.equal(foreign, null, "another user's request does not see it")
    // A conversation deleted before its turn is inserted: the service answers 404 on this error.
    const gone = await repository.startTurns([turn('cnv_deleted_meanwhile', 4)]).catch((error: unknown) => error)
    t.ok(isForeignKeyViolation(gone), 'a turn of a missing conversation is a foreign key violation')
  },
)

t.test('stopping an answer', async (t) => {
  t.test('stop during the answer: done status stopped, partial content, upstream aborted, stored', async (t) => {
    const user = await account(app)
    const { id } = await createConversation(user)
    const index = openai.requests.length
    openai.next({ tokens: 40, tokenDelayMs: 50 })
    const live = await liveSend(user, id, 'a long answer to stop')
    const start = await live.until(3)
    const messageId = splitEventId(start[0]?.id).messageId
    const stopAt = Date.now()
    const stop = await call(user, 'POST', `/conversations/${id}/stop`)
    t.equal(stop.statusCode, 200, stop.body)
    t.same(stop.json(), { messageId, status: 'stopping' })

    const stream = checkConversationStream(t, await live.toEnd(5000), { messageId, label: 'stopped' })
    const done = stream.done
    if (!done) return t.fail(`no done event: ${JSON.stringify(stream.events.slice(-2))}`)
    t.equal(done.status, 'stopped', 'done says stopped')
    t.equal(done.fullContent, stream.text, 'fullContent is what was streamed')
    t.ok(stream.contents.length >= 3 && stream.contents.length < 40, `partial (${stream.contents.length} tokens)`)
    t.equal(done.fullContent, defaultText(stream.contents.length))

    const upstream = await openai.waitForClose(index, 2000)
    const closedAt = upstream.closedAt ?? Infinity
    t.ok(closedAt - stopAt < 1000, `the provider request was closed ${closedAt - stopAt} ms after the stop`)
    t.ok(upstream.tokensSent < 40)

    const stored = await storedMessage(messageId)
    t.match(stored, { status: 'stopped', content: done.fullContent, errorCode: null, heartbeatAt: null })
    const rows = await usageRowsOf(app, user.userId)
    t.equal(rows.length, 1, 'one chat_usage row')
    t.match(rows[0], { id: messageId, conversationId: id, status: 'stopped', estimated: true })
    t.ok((rows[0]?.outputTokens ?? 0) > 0, 'the tokens produced are metered')
    t.same(await storedEvents(messageId), asLogged(stream.raw), 'the log ends with the stopped done, as sent')

    const again = await call(user, 'POST', `/conversations/${id}/stop`)
    t.equal(again.statusCode, 200)
    t.same(again.json(), { messageId, status: 'stopped' }, 'stopping again answers the status it ended with')
    t.same(await storedMessage(messageId), stored, 'and changes nothing')
    t.equal((await usageRowsOf(app, user.userId)).length, 1, 'nor metering')
    t.same(await storedEvents(messageId), asLogged(stream.raw), 'nor the log')
    const replay = await resume(user, id)
    t.same(parseSse(replay.body), stream.raw, 'a resume afterwards replays the stopped answer')
  })

  t.test('stop after the answer completed changes nothing', async (t) => {
    const user = await account(app)
    const { id } = await createConversation(user)
    assertProblem(t, await call(user, 'POST', `/conversations/${id}/stop`), 404, 'MESSAGE_NOT_FOUND', 'no answer yet')
    openai.next({ tokens: 3 })
    const stream = await send(t, user, id, 'quick one')
    const stored = await storedMessage(stream.messageId)
    const stop = await call(user, 'POST', `/conversations/${id}/stop`)
    t.equal(stop.statusCode, 200)
    t.same(stop.json(), { messageId: stream.messageId, status: 'complete' })
    t.same(await storedMessage(stream.messageId), stored, 'the message is unchanged')
    t.same(await storedEvents(stream.messageId), asLogged(stream.raw), 'so is its log')
    t.match(await usageRowsOf(app, user.userId), [{ status: 'complete' }])
  })

  t.test('stop while following a resumed stream', async (t) => {
    const user = await account(app)
    const { id } = await createConversation(user)
    const index = openai.requests.length
    openai.next({ tokens: 40, tokenDelayMs: 50 })
    const first = await liveSend(user, id, 'answer, drop, resume, stop')
    const head = (await first.until(3)).slice(0, 3)
    await first.abort()
    const lastId = head.at(-1)?.id ?? ''
    const messageId = splitEventId(lastId).messageId
    const resumed = await liveResume(user, id, lastId)
    await resumed.until(2)
    const stopAt = Date.now()
    const stop = await call(user, 'POST', `/conversations/${id}/stop`)
    t.same(stop.json(), { messageId, status: 'stopping' })
    const tail = checkConversationStream(t, await resumed.toEnd(5000), { messageId, after: 3, label: 'resumed' })
    t.equal(tail.done?.status, 'stopped', 'the resumed stream ends with done stopped')
    const headText = head.map((event) => (JSON.parse(event.data) as { content: string }).content).join('')
    t.equal(headText + tail.text, tail.done?.fullContent, 'both connections hold the partial answer, once')
    const upstream = await openai.waitForClose(index, 2000)
    t.ok((upstream.closedAt ?? Infinity) - stopAt < 1000, 'the provider request was closed')
    t.match(await storedMessage(messageId), { status: 'stopped', content: tail.done?.fullContent })
  })

  // The provider produced (and bills) these tokens whatever happens to the conversation. The answer's
  // final transaction also writes its log, whose rows reference the deleted message: on PostgreSQL the
  // delete usually commits first and the usage row is lost with the failed transaction. (On PGlite the
  // stop notification is delivered before pg_notify returns, so the answer is written before the delete.)
  t.test('deleting a conversation while its answer streams stops it, and the tokens are still metered', async (t) => {
    const user = await account(app)
    const { id } = await createConversation(user)
    const index = openai.requests.length
    openai.next({ tokens: 40, tokenDelayMs: 50 })
    const live = await liveSend(user, id, 'delete me mid-answer')
    await live.until(3)
    const deleted = await call(user, 'DELETE', `/conversations/${id}`)
    t.equal(deleted.statusCode, 204)
    const stream = checkConversationStream(t, await live.toEnd(5000), { label: 'deleted mid-answer' })
    t.equal(stream.done?.status, 'stopped', 'the open stream ends as stopped')
    await openai.waitForClose(index, 2000)
    assertProblem(t, await call(user, 'GET', `/conversations/${id}`), 404, 'CONVERSATION_NOT_FOUND', 'gone')
    t.ok(
      await eventually(async () => (await usageRowsOf(app, user.userId)).length === 1, 3000),
      'the tokens the provider produced are recorded in chat_usage even though the conversation is gone',
    )
    t.match(await usageRowsOf(app, user.userId), [{ id: stream.messageId, status: 'stopped' }])
  })
})

t.test('an answer cut by the provider ends as incomplete, and replays the same way', async (t) => {
  const user = await account(app)
  const { id } = await createConversation(user)
  openai.next({ tokens: 10, cutAfterTokens: 3 })
  const stream = await send(t, user, id, 'this will be cut')
  t.same(stream.contents, ['tok0 ', 'tok1 ', 'tok2 '], 'the tokens sent before the cut')
  t.notOk(stream.done, 'no done')
  t.match(stream.error, { type: 'error', code: 'STREAM_INTERRUPTED' })
  t.same(stream.seqs, [1, 2, 3, 4])
  t.match(await storedMessage(stream.messageId), {
    status: 'incomplete',
    content: 'tok0 tok1 tok2 ',
    errorCode: 'STREAM_INTERRUPTED',
  })
  t.match(await usageRowsOf(app, user.userId), [{ id: stream.messageId, status: 'incomplete', estimated: true }])
  t.same(parseSse((await resume(user, id)).body), stream.raw, 'a resume replays the same events, error included')
  t.same(parseSse((await resume(user, id, `${stream.messageId}:2`)).body), stream.raw.slice(2), 'from the middle too')
  t.same(await storedEvents(stream.messageId), asLogged(stream.raw), 'the log is what the client received')
  const conversation = await getConversation(user, id)
  t.match(conversation.messages[1], { status: 'incomplete', content: 'tok0 tok1 tok2 ' }, 'shown as incomplete')
  openai.next({ tokens: 1 })
  const index = openai.requests.length
  t.ok((await send(t, user, id, 'go on', 'next')).done, 'the conversation takes a new message')
  t.same(
    messagesOf(openai.requests[index]).slice(1),
    [
      { role: 'user', content: 'this will be cut' },
      { role: 'assistant', content: 'tok0 tok1 tok2 ' },
      { role: 'user', content: 'go on' },
    ],
    'the partial answer is part of the history',
  )
})

/**
 * Makes a finished answer look like one whose process died after `kept` events reached the log:
 * streaming, no content yet, a heartbeat an hour old, the rest of the log and the usage never written.
 */
async function abandon(messageId: string, kept: number) {
  await truncateLog(app, messageId, kept)
  await app.db.delete(chatUsage).where(eq(chatUsage.id, messageId))
  await app.db
    .update(chatMessages)
    .set({ status: 'streaming', content: '', errorCode: null, heartbeatAt: sql`now() - interval '1 hour'` })
    .where(eq(chatMessages.id, messageId))
}

t.test('an answer whose server died', async (t) => {
  t.test('a resume ends it as incomplete, with an error event after what was logged', async (t) => {
    const user = await account(app)
    const { id } = await createConversation(user)
    openai.next({ tokens: 6 })
    const { messageId, raw } = await send(t, user, id, 'the server will die')
    await abandon(messageId, 3)
    t.match((await getConversation(user, id)).messages[1], { status: 'streaming' }, 'shown as streaming before')
    const response = await resume(user, id, `${messageId}:1`)
    t.equal(response.statusCode, 200)
    const events = parseSse(response.body)
    const tail = checkConversationStream(t, events, { messageId, after: 1, label: 'resumed' })
    t.same(events.slice(0, 2), raw.slice(1, 3), 'the logged events after 1')
    t.match(tail.error, { type: 'error', code: 'STREAM_INTERRUPTED' }, 'then an error event, number 4')
    t.match(await storedMessage(messageId), {
      status: 'incomplete',
      content: 'tok0 tok1 tok2 ',
      errorCode: 'STREAM_INTERRUPTED',
      heartbeatAt: null,
    })
    t.match(
      await usageRowsOf(app, user.userId),
      [{ id: messageId, status: 'incomplete', estimated: true, inputTokens: 0, outputTokens: 4 }],
      'metered once, by an estimate of what was logged (15 characters)',
    )
    const logged = await storedEvents(messageId)
    t.same(logged.slice(0, 3), asLogged(raw.slice(0, 3)), 'the log keeps what was written')
    t.same(logged.slice(3), asLogged(events.slice(-1)), 'and gains the error event')
    t.same(parseSse((await resume(user, id)).body), [...raw.slice(0, 3), ...events.slice(-1)], 'replayed the same')
  })

  t.test('stop ends it as incomplete at once', async (t) => {
    const user = await account(app)
    const { id } = await createConversation(user)
    openai.next({ tokens: 4 })
    const { messageId } = await send(t, user, id, 'the server will die again')
    await abandon(messageId, 2)
    const stop = await call(user, 'POST', `/conversations/${id}/stop`)
    t.equal(stop.statusCode, 200)
    t.same(stop.json(), { messageId, status: 'incomplete' })
    t.match(await storedMessage(messageId), { status: 'incomplete', content: 'tok0 tok1 ' })
    t.match(JSON.parse((await storedEvents(messageId)).at(-1)?.data ?? '{}'), { code: 'STREAM_INTERRUPTED' })
  })

  t.test('a new message is accepted, and the dead answer no longer shows as streaming', async (t) => {
    const user = await account(app)
    const { id } = await createConversation(user)
    openai.next({ tokens: 4 })
    const { messageId } = await send(t, user, id, 'the server will die once more')
    await abandon(messageId, 2)
    openai.next({ tokens: 1 })
    t.ok((await send(t, user, id, 'are you there?', 'after the death')).done, 'not refused with 409')
    const { messages } = await getConversation(user, id)
    t.equal(messages.length, 4)
    t.not(messages[1]?.status, 'streaming', `the dead answer is not streaming for ever (${messages[1]?.status})`)
  })
})

t.test('the event log holds exactly what the clients received, in order', async (t) => {
  const user = await account(app)
  const { id } = await createConversation(user)
  // Slow enough for the periodic flush to write part of the log while the answer is generated.
  openai.next({ tokens: 20, tokenDelayMs: 60 })
  const live = await liveSend(user, id, 'log me')
  const head = await live.until(4)
  const messageId = splitEventId(head[0]?.id).messageId
  t.ok(
    await eventually(async () => (await storedEvents(messageId)).length > 0, 2000),
    'events are written while the answer is still being generated',
  )
  t.equal((await storedMessage(messageId))?.status, 'streaming', 'the message is streaming meanwhile')
  const whole = checkConversationStream(t, await live.toEnd(), { messageId })
  const logged = await storedEvents(messageId)
  t.same(logged, asLogged(whole.raw), 'the same events, numbered 1…n, ending with done')
  t.equal(logged.length, 21)
  t.match(JSON.parse(logged.at(-1)?.data ?? '{}'), { type: 'done', status: 'complete', messageId })

  openai.next({ tokens: 5, text: (i) => `second-${i} ` })
  const second: ConversationStream = await send(t, user, id, 'and another')
  t.same(await storedEvents(second.messageId), asLogged(second.raw), 'each answer has its own log from 1')
  t.same(await storedEvents(messageId), logged, 'the first log is unchanged')
})
