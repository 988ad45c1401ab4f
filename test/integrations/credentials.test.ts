import { randomUUID } from 'node:crypto'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { eq } from 'drizzle-orm'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import t from 'tap'
import { orgCredentials } from '../../src/db/schema/index.js'
import { CryptoBox } from '../../src/lib/crypto-box.js'
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
  uniqueAddress,
} from '../auth/support.js'
import { readChat } from '../chat/support.js'
import { startFakeAnthropic } from '../fakes/anthropic.js'
import type { RecordedRequest } from '../fakes/control.js'
import { startFakeOpenAI } from '../fakes/openai.js'
import { buildTestApp, eventually, LogCapture, TEST_ENCRYPTION_KEY } from '../helper.js'

/**
 * Bring your own key: PUT/DELETE /api/v1/orgs/{orgId}/integrations/{openai|anthropic}. A key is
 * checked with GET /v1/models on the fake provider, stored sealed, shown only by its last four,
 * and used instead of the server's key for the org's chats and embeddings (and only the org's).
 * Every response and every log line of the file is kept and searched for the keys at the end.
 */

const SERVER_OPENAI_KEY = 'sk-server-openai-credentials-3e8a'
const SERVER_ANTHROPIC_KEY = 'sk-ant-server-credentials-77c1'

const openai = await startFakeOpenAI(t)
const anthropic = await startFakeAnthropic(t)
const logs = new LogCapture()
const app = await buildTestApp(t, {
  logs,
  env: {
    OPENAI_API_KEY: SERVER_OPENAI_KEY,
    OPENAI_BASE_URL: openai.baseURL,
    ANTHROPIC_API_KEY: SERVER_ANTHROPIC_KEY,
    ANTHROPIC_BASE_URL: anthropic.baseURL,
    CHAT_DEFAULT_MODEL: 'gpt-4o-mini',
    // The default model as the only fallback: a chat goes to the provider its model names, or fails.
    CHAT_FALLBACK_MODELS: 'gpt-4o-mini',
    CHAT_PROVIDER_MAX_RETRIES: '0',
    CHAT_RATE_LIMIT_PER_MINUTE: '10000',
    CHAT_MAX_CONCURRENT_STREAMS: '10',
    JOBS_POLL_INTERVAL_MS: '500',
  },
})

/** Every org key handed to the server in this file: none may come back out. */
const secrets: string[] = []
/** Every response of this file (status, headers, body). */
const seen: string[] = []
/** The app whose provider fails, and its log lines, are searched as well. */
const otherLogs: LogCapture[] = []

/** A key of the provider's shape nobody else uses; remembered for the leak check. */
function newKey(prefix: 'sk-org' | 'sk-ant-org'): string {
  const key = `${prefix}-${randomUUID().replaceAll('-', '')}`
  secrets.push(key)
  return key
}

function remember(response: LightMyRequestResponse): LightMyRequestResponse {
  seen.push(`${response.statusCode} ${JSON.stringify(response.headers)}\n${response.body}`)
  return response
}

type Who = Pick<Account, 'headers'>
type Service = 'openai' | 'anthropic'

async function call(who: Who, method: Method, url: string, payload?: Record<string, unknown>, on = app) {
  return remember(await callAs(on, who, method, url, payload))
}

/** PUT with any payload (callAs knows no PUT). */
async function put(who: Who, orgId: string, service: string, payload: unknown, on: FastifyInstance = app) {
  return remember(
    await on.inject({
      method: 'PUT',
      url: `/api/v1/orgs/${orgId}/integrations/${service}`,
      headers: who.headers,
      ...(payload === undefined ? {} : { payload: payload as Record<string, unknown> }),
      remoteAddress: uniqueAddress(),
    }),
  )
}

const remove = (who: Who, orgId: string, service: string) =>
  call(who, 'DELETE', `/orgs/${orgId}/integrations/${service}`)

/** Stores a key, failing the test unless the server answers 200. */
async function setKey(t: Test, who: Who, orgId: string, service: Service, apiKey: string) {
  const response = await put(who, orgId, service, { apiKey })
  t.equal(response.statusCode, 200, `PUT ${service} key: 200 (${response.body.slice(0, 200)})`)
  return response.json() as { lastFour: string; setAt: string }
}

async function storedRows(orgId: string) {
  return app.db.select().from(orgCredentials).where(eq(orgCredentials.orgId, orgId))
}

interface Listed {
  service: string
  configured: boolean
  orgCredential: { lastFour: string; setAt: string } | null
}

async function listed(who: Who, orgId: string): Promise<Listed[]> {
  const response = await call(who, 'GET', `/integrations?orgId=${orgId}`)
  if (response.statusCode !== 200) throw new Error(`integrations answered ${response.statusCode}: ${response.body}`)
  return (response.json() as { data: Listed[] }).data
}

async function orgCredentialOf(who: Who, orgId: string, service: Service) {
  return (await listed(who, orgId)).find((entry) => entry.service === service)?.orgCredential
}

const since = (fake: { requests: RecordedRequest[] }, from: number, kind: RecordedRequest['kind']) =>
  fake.requests.slice(from).filter((request) => request.kind === kind)

/**
 * One chat (in the caller's personal org, or a project's org); returns the keys the provider's
 * chat requests carried.
 */
async function chatKeys(
  t: Test,
  who: Who,
  label: string,
  extra: { model?: string; projectId?: string } = {},
): Promise<(string | undefined)[]> {
  const fake = extra.model?.startsWith('claude') ? anthropic : openai
  const from = fake.requests.length
  const response = await call(who, 'POST', '/chat', { message: `question: ${label}`, ...extra })
  const stream = readChat(t, response, label)
  t.ok(stream.done, `${label}: answered`)
  return since(fake, from, 'chat').map((request) => request.apiKey)
}

async function createProject(who: Who, orgId: string): Promise<string> {
  const response = await call(who, 'POST', '/projects', { name: 'BYOK docs', orgId })
  if (response.statusCode !== 201) throw new Error(`create project answered ${response.statusCode}: ${response.body}`)
  return response.json().id
}

/** Adds a document of words no other document has (the embeddings cache never answers for it). */
async function embedDocumentKeys(t: Test, who: Who, projectId: string): Promise<(string | undefined)[]> {
  const from = openai.requests.length
  const words = Array.from({ length: 12 }, () => randomUUID().slice(0, 8)).join(' ')
  const response = await call(who, 'POST', `/projects/${projectId}/documents`, {
    title: 'Runbook',
    text: `Unique passage ${words}.`,
  })
  t.equal(response.statusCode, 201, `document added (${response.body.slice(0, 200)})`)
  t.equal(response.json().status, 'ready', 'embedded inline')
  return since(openai, from, 'embeddings').map((request) => request.apiKey)
}

/** A team org: its owner, and an admin (not the owner) who sets the keys. */
async function team() {
  const owner = await account(app)
  const orgId = await createOrg(app, owner, 'BYOK')
  const admin = await account(app)
  await addMember(app, owner, orgId, admin, 'admin')
  return { owner, admin, orgId }
}

t.afterEach(() => {
  // A refused key or queued behaviour left by a failing test must not leak into the next one.
  openai.control.clear()
  anthropic.control.clear()
  openai.invalidKeys.clear()
  anthropic.invalidKeys.clear()
})

t.test('an org admin stores a key that works: only its last four and setAt come back, it is sealed', async (t) => {
  const { admin, orgId } = await team()
  const key = newKey('sk-org')
  const from = openai.requests.length
  const anthropicFrom = anthropic.requests.length
  const before = Date.now()

  const response = await put(admin, orgId, 'openai', { apiKey: key })
  t.equal(response.statusCode, 200, `200 (${response.body.slice(0, 200)})`)
  const body = response.json() as Record<string, unknown>
  t.same(Object.keys(body).sort(), ['lastFour', 'setAt'], 'no other field (the key is never returned)')
  t.equal(body.lastFour, key.slice(-4), 'the last four characters of the key')
  const setAt = Date.parse(String(body.setAt))
  t.ok(setAt >= before - 1000 && setAt <= Date.now() + 1000, `setAt is now (${String(body.setAt)})`)

  const checks = openai.requests.slice(from)
  t.equal(checks.length, 1, 'one request to the provider')
  t.match(checks[0], { method: 'GET', path: '/v1/models', kind: 'models' }, 'the cheap listing call')
  t.equal(checks[0]?.apiKey, key, 'made with the key being stored')
  t.equal(anthropic.requests.length, anthropicFrom, 'Anthropic is not asked about it')

  const rows = await storedRows(orgId)
  t.equal(rows.length, 1, 'one stored credential')
  const row = rows[0]
  if (!row) return
  t.equal(row.service, 'openai')
  t.equal(row.lastFour, key.slice(-4))
  t.equal(row.setBy, admin.userId, 'who set it')
  t.notOk(row.sealedKey.includes(key), 'the stored value does not contain the key')
  t.notOk(row.sealedKey.includes(key.slice(7)), 'nor its secret part')
  t.ok(row.sealedKey.startsWith('v1.'), 'a sealed value (v1.<keyId>.<iv>.<ciphertext>.<tag>)')
  t.equal(row.sealedKey.split('.').length, 5)
  t.equal(
    row.sealedKey.split('.')[1],
    CryptoBox.keyId(Buffer.from(TEST_ENCRYPTION_KEY, 'base64')),
    "sealed under the instance key's id",
  )
  t.equal(app.cryptoBox.open(row.sealedKey, `org-credential:${orgId}:openai`), key, 'opens to the key')
  t.throws(
    () => app.cryptoBox.open(row.sealedKey, `org-credential:${orgId}:anthropic`),
    'bound to its service: it does not open as another service',
  )
  t.throws(
    () => app.cryptoBox.open(row.sealedKey, `org-credential:${admin.personalOrgId}:openai`),
    "nor as another org's",
  )

  const entries = await listed(admin, orgId)
  t.same(
    entries.map((entry) => [entry.service, entry.orgCredential]),
    [
      ['openai', { lastFour: key.slice(-4), setAt: body.setAt }],
      ['anthropic', null],
      ['stripe', null],
    ],
    'GET /integrations shows the org credential by its last four, and none for the others',
  )
  t.equal(entries.find((entry) => entry.service === 'openai')?.configured, true, 'the server key is still there')
  t.same(
    (await listed(admin, admin.personalOrgId)).map((entry) => entry.orgCredential),
    [null, null, null],
    "another org of the admin's has no credential",
  )
})

t.test("an org's chats and embeddings use its key; other orgs keep the server's", async (t) => {
  const { owner, admin, orgId } = await team()
  const key = newKey('sk-org')
  const projectId = await createProject(owner, orgId)
  t.same(await embedDocumentKeys(t, owner, projectId), [SERVER_OPENAI_KEY], 'before: the server key embeds')

  await setKey(t, admin, orgId, 'openai', key)
  const embedded = await embedDocumentKeys(t, owner, projectId)
  t.ok(embedded.length > 0, 'the document was embedded')
  t.same(new Set(embedded), new Set([key]), "the org's documents are embedded with its key")

  const from = openai.requests.length
  const chat = await chatKeys(t, admin, 'grounded in the project', { projectId })
  t.same(chat, [key], "a chat in the org reaches the provider with the org's key")
  const queryEmbeddings = since(openai, from, 'embeddings').map((request) => request.apiKey)
  t.ok(queryEmbeddings.length > 0, 'its question was embedded for retrieval')
  t.same(new Set(queryEmbeddings), new Set([key]), "with the org's key")

  const searchFrom = openai.requests.length
  const search = await call(owner, 'POST', `/projects/${projectId}/search`, { query: 'unique passage runbook' })
  t.equal(search.statusCode, 200)
  t.equal(search.json().mode, 'hybrid', 'search uses embeddings')
  t.same(
    since(openai, searchFrom, 'embeddings').map((request) => request.apiKey),
    [key],
    "a search's query is embedded with the org's key",
  )

  const conversation = await call(admin, 'POST', '/conversations', { orgId })
  t.equal(conversation.statusCode, 201, `conversation created (${conversation.body.slice(0, 200)})`)
  const conversationFrom = openai.requests.length
  const sent = await call(admin, 'POST', `/conversations/${conversation.json().id}/messages`, { content: 'hello' })
  t.equal(sent.statusCode, 200, `conversation message answered (${sent.body.slice(0, 200)})`)
  t.match(sent.body, /"type":"done"/, 'to the end')
  t.same(
    since(openai, conversationFrom, 'chat').map((request) => request.apiKey),
    [key],
    "a conversation of the org: the org's key",
  )

  t.same(await chatKeys(t, admin, 'personal org of the admin'), [SERVER_OPENAI_KEY], "another org: the server's key")
  const stranger = await account(app)
  t.same(await chatKeys(t, stranger, 'stranger'), [SERVER_OPENAI_KEY], "another tenant: the server's key")
  const otherProject = await createProject(stranger, stranger.personalOrgId)
  t.same(await embedDocumentKeys(t, stranger, otherProject), [SERVER_OPENAI_KEY], 'and its documents')
  t.same(
    await chatKeys(t, admin, 'claude in the org', { projectId, model: 'claude-haiku-4-5' }),
    [SERVER_ANTHROPIC_KEY],
    "an OpenAI key of the org's own leaves Anthropic on the server's key",
  )
})

t.test("a large document embedded by the background job uses the org's key", async (t) => {
  const { owner, orgId } = await team()
  const key = newKey('sk-org')
  await setKey(t, owner, orgId, 'openai', key)
  const projectId = await createProject(owner, orgId)
  const text = Array.from({ length: 600 }, (_, i) => `Entry ${i} records ${randomUUID()} in the ledger.`).join(' ')
  const from = openai.requests.length
  const response = await call(owner, 'POST', `/projects/${projectId}/documents`, { title: 'Ledger', text })
  t.equal(response.statusCode, 201, response.body.slice(0, 200))
  const document = response.json() as { id: string; status: string; chunkCount: number }
  t.equal(document.status, 'processing', `too large to embed inline (${document.chunkCount} passages): queued`)
  const ready = await eventually(async () => {
    const listed = await call(owner, 'GET', `/projects/${projectId}/documents?limit=100`)
    return (listed.json().data as { id: string; status: string }[]).some(
      (d) => d.id === document.id && d.status === 'ready',
    )
  }, 20_000)
  t.ok(ready, 'the job embedded it')
  const keys = since(openai, from, 'embeddings').map((request) => request.apiKey)
  t.ok(keys.length > 0, `embeddings requests were made (${keys.length})`)
  t.same(new Set(keys), new Set([key]), "all with the org's key")
})

t.test('a key pasted with a trailing newline is checked, stored and used without it', async (t) => {
  const owner = await account(app)
  const key = newKey('sk-org')
  const from = openai.requests.length
  const stored = await setKey(t, owner, owner.personalOrgId, 'openai', `${key}\n`)
  t.equal(stored.lastFour, key.slice(-4), 'the last four of the key itself')
  t.equal(openai.requests[from]?.apiKey, key, 'checked without the newline')
  const [row] = await storedRows(owner.personalOrgId)
  t.equal(
    row && app.cryptoBox.open(row.sealedKey, `org-credential:${owner.personalOrgId}:openai`),
    key,
    'stored trimmed',
  )
  t.same(await chatKeys(t, owner, 'trimmed key'), [key], 'and used so')
})

t.test("an Anthropic key is checked with Anthropic and carried by the org's claude chats", async (t) => {
  const owner = await account(app)
  const orgId = owner.personalOrgId
  const key = newKey('sk-ant-org')
  const from = anthropic.requests.length
  const openaiFrom = openai.requests.length

  const stored = await setKey(t, owner, orgId, 'anthropic', key)
  t.equal(stored.lastFour, key.slice(-4))
  const checks = anthropic.requests.slice(from)
  t.equal(checks.length, 1, 'one request to Anthropic')
  t.match(checks[0], { method: 'GET', path: '/v1/models', kind: 'models', apiKey: key }, 'GET /v1/models with it')
  t.equal(openai.requests.length, openaiFrom, 'OpenAI is not asked')
  const [row] = await storedRows(orgId)
  t.equal(row?.service, 'anthropic')
  t.notOk(row?.sealedKey.includes(key), 'sealed')
  t.same(await orgCredentialOf(owner, orgId, 'anthropic'), stored, 'listed')
  t.equal(await orgCredentialOf(owner, orgId, 'openai'), null)

  t.same(await chatKeys(t, owner, 'claude', { model: 'claude-haiku-4-5' }), [key], "a claude chat: the org's key")
  t.same(await chatKeys(t, owner, 'gpt'), [SERVER_OPENAI_KEY], "a gpt chat: the server's OpenAI key")
  const stranger = await account(app)
  t.same(
    await chatKeys(t, stranger, 'claude elsewhere', { model: 'claude-haiku-4-5' }),
    [SERVER_ANTHROPIC_KEY],
    "another org's claude chat: the server's key",
  )

  const openaiKey = newKey('sk-org')
  await setKey(t, owner, orgId, 'openai', openaiKey)
  t.equal((await storedRows(orgId)).length, 2, 'one credential per service')
  t.same(await chatKeys(t, owner, 'gpt, both set'), [openaiKey], 'each service its own key')
  t.same(await chatKeys(t, owner, 'claude, both set', { model: 'claude-haiku-4-5' }), [key])
})

t.test('a key the provider refuses: 422 INVALID_CREDENTIAL, nothing stored or replaced', async (t) => {
  const { admin, orgId } = await team()
  for (const [service, fake, prefix] of [
    ['openai', openai, 'sk-org'],
    ['anthropic', anthropic, 'sk-ant-org'],
  ] as const) {
    const refused = newKey(prefix)
    fake.invalidKeys.add(refused)
    const from = fake.requests.length
    const response = await put(admin, orgId, service, { apiKey: refused })
    assertProblem(t, response, 422, 'INVALID_CREDENTIAL', service)
    t.same(
      fake.requests.slice(from).map((request) => [request.path, request.apiKey, request.status]),
      [['/v1/models', refused, 401]],
      `${service}: checked once (a refusal is not retried)`,
    )
    t.same(await storedRows(orgId), [], `${service}: nothing stored`)
    t.equal(await orgCredentialOf(admin, orgId, service), null, `${service}: none listed`)
  }

  const good = newKey('sk-org')
  const stored = await setKey(t, admin, orgId, 'openai', good)
  const [before] = await storedRows(orgId)
  const revoked = newKey('sk-org')
  openai.invalidKeys.add(revoked)
  assertProblem(t, await put(admin, orgId, 'openai', { apiKey: revoked }), 422, 'INVALID_CREDENTIAL', 'a replacement')
  t.same(await storedRows(orgId), [before], 'a refused replacement leaves the stored key as it was')
  t.same(await orgCredentialOf(admin, orgId, 'openai'), stored)
  const projectId = await createProject(admin, orgId)
  t.same(await chatKeys(t, admin, 'after a refused replacement', { projectId }), [good], 'chats keep the stored key')
})

t.test('a stored key the provider revokes later: chats fail and never fall back to the server key', async (t) => {
  const owner = await account(app)
  const key = newKey('sk-org')
  await setKey(t, owner, owner.personalOrgId, 'openai', key)
  openai.invalidKeys.add(key)
  const from = openai.requests.length
  const response = await call(owner, 'POST', '/chat', { message: 'question: revoked key' })
  const stream = readChat(t, response, 'revoked key')
  t.equal(stream.error?.code, 'UPSTREAM_ERROR', 'the answer ends with an error event')
  t.same(
    since(openai, from, 'chat').map((request) => [request.apiKey, request.status]),
    [[key, 401]],
    "one attempt, with the org's key; the server's key is not used instead",
  )
  const status = (await listed(owner, owner.personalOrgId)).find((entry) => entry.service === 'openai')
  t.match(
    status,
    { circuit: 'closed', lastFailureAt: null },
    "an org's refused key is not held against the provider (its circuit serves every org)",
  )
})

t.test('a provider failing while it checks the key: 503 UPSTREAM_UNAVAILABLE, nothing stored', async (t) => {
  const failures: { path: string; key: string | undefined }[] = []
  const broken = createServer((request, response) => {
    failures.push({ path: request.url ?? '', key: /^Bearer (.+)$/.exec(request.headers.authorization ?? '')?.[1] })
    response.writeHead(500, { 'content-type': 'application/json' })
    response.end(JSON.stringify({ error: { message: 'The server had an error', type: 'server_error' } }))
  })
  await new Promise<void>((resolve) => broken.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>((resolve) => broken.close(() => resolve())))
  // A port nobody listens on: Anthropic cannot be reached at all.
  const closed = createServer()
  await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve))
  const closedPort = (closed.address() as AddressInfo).port
  await new Promise<void>((resolve) => closed.close(() => resolve()))

  const brokenLogs = new LogCapture()
  otherLogs.push(brokenLogs)
  const failing = await buildTestApp(t, {
    logs: brokenLogs,
    env: {
      OPENAI_API_KEY: SERVER_OPENAI_KEY,
      OPENAI_BASE_URL: `http://127.0.0.1:${(broken.address() as AddressInfo).port}/v1`,
      ANTHROPIC_API_KEY: SERVER_ANTHROPIC_KEY,
      ANTHROPIC_BASE_URL: `http://127.0.0.1:${closedPort}`,
      INTEGRATION_RETRY_BASE_DELAY: '10ms',
    },
  })
  const owner = await account(failing)
  const orgId = owner.personalOrgId

  const key = newKey('sk-org')
  const response = await put(owner, orgId, 'openai', { apiKey: key }, failing)
  assertProblem(t, response, 503, 'UPSTREAM_UNAVAILABLE', 'OpenAI answering 500')
  t.equal(response.headers['retry-after'], '5', 'with Retry-After')
  t.same(
    failures,
    [
      { path: '/v1/models', key },
      { path: '/v1/models', key },
    ],
    'the check was tried twice (retried once), with the key',
  )

  const unreachable = await put(owner, orgId, 'anthropic', { apiKey: newKey('sk-ant-org') }, failing)
  assertProblem(t, unreachable, 503, 'UPSTREAM_UNAVAILABLE', 'Anthropic unreachable')

  const rows = await failing.db.select().from(orgCredentials).where(eq(orgCredentials.orgId, orgId))
  t.same(rows, [], 'nothing stored')
})

t.test('who may set and remove keys: admins and owners, signed in as themselves', async (t) => {
  const { owner, orgId } = await team()
  const member = await account(app)
  const viewer = await account(app)
  const stranger = await account(app)
  await addMember(app, owner, orgId, member, 'member')
  await addMember(app, owner, orgId, viewer, 'viewer')
  const apiKey = await createApiKey(app, owner, orgId, ['chat', 'documents:read', 'documents:write'])
  const withKey = { headers: bearer(apiKey.key) }
  const anonymous = { headers: {} as { authorization: string } }
  const from = { openai: openai.requests.length, anthropic: anthropic.requests.length }

  for (const service of ['openai', 'anthropic'] as const) {
    const apiKeyValue = newKey(service === 'openai' ? 'sk-org' : 'sk-ant-org')
    assertProblem(t, await put(member, orgId, service, { apiKey: apiKeyValue }), 403, 'INSUFFICIENT_ROLE', 'member')
    assertProblem(t, await put(viewer, orgId, service, { apiKey: apiKeyValue }), 403, 'INSUFFICIENT_ROLE', 'viewer')
    assertProblem(t, await put(stranger, orgId, service, { apiKey: apiKeyValue }), 404, 'ORG_NOT_FOUND', 'stranger')
    assertProblem(t, await put(owner, 'org_missing', service, { apiKey: apiKeyValue }), 404, 'ORG_NOT_FOUND', 'none')
    assertProblem(
      t,
      await put(withKey, orgId, service, { apiKey: apiKeyValue }),
      403,
      'USER_SESSION_REQUIRED',
      "the owner's API key",
    )
    assertProblem(t, await put(anonymous, orgId, service, { apiKey: apiKeyValue }), 401, 'UNAUTHORIZED', 'anonymous')
  }
  t.same(
    { openai: openai.requests.length, anthropic: anthropic.requests.length },
    from,
    'no refused caller got a key checked by a provider',
  )
  t.same(await storedRows(orgId), [], 'nothing stored')

  await setKey(t, owner, orgId, 'openai', newKey('sk-org'))
  assertProblem(t, await remove(member, orgId, 'openai'), 403, 'INSUFFICIENT_ROLE', 'member removing')
  assertProblem(t, await remove(stranger, orgId, 'openai'), 404, 'ORG_NOT_FOUND', 'stranger removing')
  assertProblem(t, await remove(withKey, orgId, 'openai'), 403, 'USER_SESSION_REQUIRED', 'API key removing')
  t.equal((await storedRows(orgId)).length, 1, 'still stored')
  assertProblem(t, await call(member, 'GET', `/integrations?orgId=${orgId}`), 403, 'INSUFFICIENT_ROLE', 'member list')
  assertProblem(t, await call(stranger, 'GET', `/integrations?orgId=${orgId}`), 404, 'ORG_NOT_FOUND', 'stranger list')
})

t.test('invalid requests: 400 before any call to a provider', async (t) => {
  const owner = await account(app)
  const orgId = owner.personalOrgId
  const key = newKey('sk-org')
  const from = { openai: openai.requests.length, anthropic: anthropic.requests.length }
  const cases: [string, string, unknown][] = [
    ['an unknown service', 'cohere', { apiKey: key }],
    ['a service without org keys', 'stripe', { apiKey: key }],
    ['a service in capitals', 'OpenAI', { apiKey: key }],
    ['no body', 'openai', undefined],
    ['no apiKey', 'openai', {}],
    ['an empty apiKey', 'openai', { apiKey: '' }],
    ['a short apiKey', 'openai', { apiKey: 'sk-1234' }],
    ['an apiKey with a space inside', 'openai', { apiKey: `${key.slice(0, 10)} ${key.slice(10)}` }],
    ['a non-string apiKey', 'openai', { apiKey: 12345678901 }],
    ['an unknown property', 'openai', { apiKey: key, label: 'prod' }],
    ['a too long apiKey', 'anthropic', { apiKey: `sk-ant-${'x'.repeat(600)}` }],
  ]
  for (const [label, service, payload] of cases) {
    const response = await put(owner, orgId, service, payload)
    t.equal(response.statusCode, 400, `${label}: 400 (${response.body.slice(0, 200)})`)
    t.match(response.headers['content-type'], /^application\/problem\+json/, `${label}: problem+json`)
  }
  assertProblem(t, await remove(owner, orgId, 'cohere'), 400, 'VALIDATION_FAILED', 'DELETE of an unknown service')
  t.same({ openai: openai.requests.length, anthropic: anthropic.requests.length }, from, 'no provider was called')
  t.same(await storedRows(orgId), [], 'nothing stored')
})

t.test('PUT again replaces the key: new last four, and chats and embeddings switch at once', async (t) => {
  const { owner, admin, orgId } = await team()
  const projectId = await createProject(owner, orgId)
  const first = newKey('sk-org')
  const second = newKey('sk-org')
  const stored = await setKey(t, admin, orgId, 'openai', first)
  t.same(await chatKeys(t, admin, 'with the first key', { projectId }), [first])
  const [before] = await storedRows(orgId)

  const replaced = await setKey(t, owner, orgId, 'openai', second)
  t.equal(replaced.lastFour, second.slice(-4), 'the new last four')
  t.not(replaced.lastFour, stored.lastFour)
  t.ok(Date.parse(replaced.setAt) >= Date.parse(stored.setAt), 'setAt moves on')
  const rows = await storedRows(orgId)
  t.equal(rows.length, 1, 'still one credential')
  t.not(rows[0]?.sealedKey, before?.sealedKey, 'sealed anew')
  t.equal(rows[0]?.setBy, owner.userId, 'set by the last one who set it')
  t.same(await orgCredentialOf(admin, orgId, 'openai'), replaced, 'listed with the new last four')

  t.same(await chatKeys(t, admin, 'with the second key', { projectId }), [second], 'chats use the new key now')
  t.same(new Set(await embedDocumentKeys(t, owner, projectId)), new Set([second]), 'and embeddings')
})

t.test("DELETE removes the key: the org is back on the server's key; a second DELETE is 404", async (t) => {
  const { owner, admin, orgId } = await team()
  const projectId = await createProject(owner, orgId)
  const key = newKey('sk-org')
  await setKey(t, admin, orgId, 'openai', key)
  t.same(await chatKeys(t, admin, 'before removal', { projectId }), [key])
  t.same(new Set(await embedDocumentKeys(t, owner, projectId)), new Set([key]))

  const removed = await remove(admin, orgId, 'openai')
  t.equal(removed.statusCode, 204, `204 (${removed.body.slice(0, 200)})`)
  t.equal(removed.body, '', 'no body')
  t.same(await storedRows(orgId), [], 'the stored key is gone')
  t.equal(await orgCredentialOf(admin, orgId, 'openai'), null, 'none listed')
  t.same(
    await chatKeys(t, admin, 'after removal', { projectId }),
    [SERVER_OPENAI_KEY],
    "chats use the server's key again at once",
  )
  t.same(await embedDocumentKeys(t, owner, projectId), [SERVER_OPENAI_KEY], 'and embeddings')

  assertProblem(t, await remove(admin, orgId, 'openai'), 404, 'CREDENTIAL_NOT_FOUND', 'a second DELETE')
  assertProblem(t, await remove(admin, orgId, 'anthropic'), 404, 'CREDENTIAL_NOT_FOUND', 'a key never set')

  // Set again after removal: used again.
  const again = newKey('sk-org')
  await setKey(t, admin, orgId, 'openai', again)
  t.same(await chatKeys(t, admin, 'set again', { projectId }), [again], 'a key set after removal is used')
})

t.test('no org key appears in any response body or log line of this file', async (t) => {
  t.ok(secrets.length >= 10, `${secrets.length} keys were handed to the server`)
  t.ok(seen.length > 50, `${seen.length} responses were kept`)
  const lines = [...logs.raw, ...otherLogs.flatMap((capture) => capture.raw)]
  t.ok(
    logs.lines.some((line) => line.msg === 'org credential set'),
    'the log was captured (it records keys being set)',
  )
  for (const secret of secrets) {
    const inResponse = seen.find((text) => text.includes(secret))
    t.equal(inResponse, undefined, `key …${secret.slice(-4)} is in no response`)
    const inLog = lines.find((line) => line.includes(secret))
    t.equal(inLog, undefined, `key …${secret.slice(-4)} is in no log line`)
  }
  const tails = secrets.map((secret) => secret.slice(8))
  t.notOk(
    lines.some((line) => tails.some((tail) => line.includes(tail))),
    'nor the secret part of any key, in the log',
  )
})
