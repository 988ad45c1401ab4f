import { and, eq, sql } from 'drizzle-orm'
import type { LightMyRequestResponse } from 'fastify'
import t from 'tap'
import { auditLog, webhookEndpoints } from '../../src/db/schema/index.js'
import { buildTestApp } from '../helper.js'
import {
  type Account,
  account,
  addMember,
  assertProblem,
  b64url,
  bearer,
  type CreatedApiKey,
  callAs,
  createApiKey,
  createOrg,
  type Method,
  type Test,
  walkPages,
} from '../auth/support.js'

// Private targets are refused unless this is true; the default is spelled out so the tests do not depend on it.
const app = await buildTestApp(t, { env: { WEBHOOK_ALLOW_PRIVATE_TARGETS: 'false' } })

type Caller = Pick<Account, 'headers'>

interface Endpoint {
  id: string
  orgId: string
  url: string
  events: string[]
  description: string
  enabled: boolean
  disabledReason: string | null
  previousSecretExpiresAt: string | null
  createdAt: string
  updatedAt: string
}

interface EndpointWithSecret extends Endpoint {
  secret: string
}

interface AuditEntry {
  id: string
  orgId: string | null
  action: string
  actorUserId: string | null
  actorKeyId: string | null
  targetType: string | null
  targetId: string | null
  metadata: Record<string, unknown>
}

const ENDPOINT_FIELDS = [
  'createdAt',
  'description',
  'disabledReason',
  'enabled',
  'events',
  'id',
  'orgId',
  'previousSecretExpiresAt',
  'updatedAt',
  'url',
]
const WITH_SECRET_FIELDS = [...ENDPOINT_FIELDS, 'secret'].sort()

/** Standard Webhooks: `whsec_` and the base64 of 32 random bytes. */
const SECRET_PATTERN = /^whsec_[A-Za-z0-9+/]{43}=$/

/** Public addresses as literals, so that no test depends on name resolution. */
const PUBLIC_V4 = 'https://93.184.216.34/hook'
const PUBLIC_V6 = 'https://[2606:4700::1]/hook'

const HOUR = 60 * 60 * 1000
const MINUTE = 60 * 1000

const call = (who: Caller, method: Method, url: string, payload?: Record<string, unknown>) =>
  callAs(app, who, method, url, payload)

/** No Authorization header at all. */
const anonymous: Caller = { headers: {} as { authorization: string } }

/** Acts with an API key instead of a user's access token. */
const withKey = (key: CreatedApiKey): Caller => ({ headers: bearer(key.key) })

async function createEndpoint(who: Caller, payload: Record<string, unknown> = {}): Promise<EndpointWithSecret> {
  const response = await call(who, 'POST', '/webhook-endpoints', {
    url: PUBLIC_V4,
    events: ['project.created'],
    ...payload,
  })
  if (response.statusCode !== 201) throw new Error(`create endpoint answered ${response.statusCode}: ${response.body}`)
  return response.json()
}

/** The stored row, plus updated_at to the microsecond (a Date keeps milliseconds only). */
async function stored(id: string) {
  const [row] = await app.db
    .select({ row: webhookEndpoints, exactUpdatedAt: sql<string>`${webhookEndpoints.updatedAt}::text` })
    .from(webhookEndpoints)
    .where(eq(webhookEndpoints.id, id))
  return row ?? null
}

async function storedRow(id: string) {
  const found = await stored(id)
  if (!found) throw new Error(`endpoint ${id} is not stored`)
  return found.row
}

async function storedIdsIn(orgId: string): Promise<string[]> {
  const rows = await app.db
    .select({ id: webhookEndpoints.id })
    .from(webhookEndpoints)
    .where(eq(webhookEndpoints.orgId, orgId))
  return rows.map((row) => row.id).sort()
}

async function auditIdsIn(orgId: string): Promise<string[]> {
  const rows = await app.db.select({ id: auditLog.id }).from(auditLog).where(eq(auditLog.orgId, orgId))
  return rows.map((row) => row.id).sort()
}

/** A problem body without its per-request id, to compare two refusals. */
function withoutRequestId(response: LightMyRequestResponse) {
  const { requestId: _requestId, ...rest } = response.json()
  return { status: response.statusCode, ...rest }
}

/** The status, with the body as a diagnostic shown only when it is not the expected one. */
function assertStatus(t: Test, response: LightMyRequestResponse, status: number, label: string) {
  t.equal(response.statusCode, status, `${label}: status ${status}`, { body: response.body })
}

function assertUrlRefused(t: Test, response: LightMyRequestResponse, label: string) {
  assertProblem(t, response, 400, 'INVALID_WEBHOOK_URL', label)
  const errors = (response.json().errors ?? []) as { path: string; message: string }[]
  t.equal(errors[0]?.path, '/body/url', `${label}: the error points at /body/url`)
}

function errorPaths(response: LightMyRequestResponse): string[] {
  return ((response.json().errors ?? []) as { path: string }[]).map((error) => error.path)
}

const sortedKeys = (value: object) => Object.keys(value).sort()

/** The secret's random part, decoded. */
const secretBytes = (secret: string) => Buffer.from(secret.slice('whsec_'.length), 'base64')

const openSealed = (sealed: string, endpointId: string) => app.cryptoBox.open(sealed, `webhook-endpoint:${endpointId}`)

// Everyone the authorization tests need: an org with one person of each role, and an outsider who is
// the admin of an org of her own.
const [alice, bob, carol, dave, eve] = await Promise.all([
  account(app),
  account(app),
  account(app),
  account(app),
  account(app),
])
if (!alice || !bob || !carol || !dave || !eve) throw new Error('accounts')
const acme = await createOrg(app, alice, 'Acme')
await addMember(app, alice, acme, bob, 'admin')
await addMember(app, alice, acme, carol, 'member')
await addMember(app, alice, acme, dave, 'viewer')
const eveOrg = await createOrg(app, eve, 'Eve Co')

t.test('create: 201 with Location and a Standard Webhooks secret that is shown once and stored sealed', async (t) => {
  const before = Date.now()
  const response = await call(alice, 'POST', '/webhook-endpoints', {
    url: PUBLIC_V4,
    events: ['project.created', 'project.deleted'],
  })
  assertStatus(t, response, 201, 'create')
  const created = response.json() as EndpointWithSecret
  t.same(sortedKeys(created), WITH_SECRET_FIELDS, 'exactly the documented fields, secret included')
  t.match(created.id, /^whe_/, 'an endpoint id')
  t.equal(response.headers.location, `/api/v1/webhook-endpoints/${created.id}`, 'Location names the new endpoint')
  t.equal(created.orgId, alice.personalOrgId, 'the personal org by default')
  t.equal(created.url, PUBLIC_V4)
  t.same(created.events, ['project.created', 'project.deleted'])
  t.equal(created.description, '', 'no description by default')
  t.equal(created.enabled, true, 'enabled by default')
  t.equal(created.disabledReason, null)
  t.equal(created.previousSecretExpiresAt, null, 'no previous secret yet')
  t.ok(Date.parse(created.createdAt) >= before - MINUTE && Date.parse(created.createdAt) <= Date.now() + MINUTE)
  t.equal(created.updatedAt, created.createdAt, 'not updated yet')

  t.match(created.secret, SECRET_PATTERN, 'whsec_ and base64')
  t.ok(secretBytes(created.secret).length >= 24, 'at least 24 random bytes (the Standard Webhooks minimum)')
  t.equal(secretBytes(created.secret).length, 32, '32 random bytes')
  t.equal(`whsec_${secretBytes(created.secret).toString('base64')}`, created.secret, 'canonical base64')

  const rawSecret = created.secret.slice('whsec_'.length)
  const get = await call(alice, 'GET', `/webhook-endpoints/${created.id}`)
  assertStatus(t, get, 200, 'GET')
  const { secret: _secret, ...withoutSecret } = created
  t.same(get.json(), withoutSecret, 'GET shows the endpoint as created, without its secret')
  t.same(sortedKeys(get.json()), ENDPOINT_FIELDS)
  t.notOk(get.body.includes(rawSecret), 'GET never carries the secret')

  const list = await call(alice, 'GET', '/webhook-endpoints')
  assertStatus(t, list, 200, 'list')
  const listed = (list.json().data as Endpoint[]).find((item) => item.id === created.id)
  t.same(listed, withoutSecret, 'listed without its secret')
  t.notOk(list.body.includes(rawSecret), 'the list never carries the secret')

  const patch = await call(alice, 'PATCH', `/webhook-endpoints/${created.id}`, { description: 'orders' })
  assertStatus(t, patch, 200, 'PATCH')
  t.same(sortedKeys(patch.json()), ENDPOINT_FIELDS, 'PATCH answers without the secret')
  t.notOk(patch.body.includes(rawSecret), 'PATCH never carries the secret')

  const row = await storedRow(created.id)
  t.match(row.secretSealed, /^v1\./, 'sealed with the crypto box')
  t.notOk(row.secretSealed.includes(rawSecret), 'the secret is not stored in the clear')
  t.notOk(row.secretSealed.includes(secretBytes(created.secret).toString('base64url')), 'nor as base64url')
  t.equal(openSealed(row.secretSealed, created.id), created.secret, 'the sealed value is the secret that was shown')
  t.throws(() => openSealed(row.secretSealed, 'whe_another'), 'bound to its endpoint: it does not open for another')
  t.equal(row.previousSecretSealed, null)
  t.equal(row.previousSecretExpiresAt, null)
  t.equal(row.createdBy, alice.userId, 'records who created it')

  const entries = await app.db.select().from(auditLog).where(eq(auditLog.targetId, created.id))
  t.ok(entries.length > 0, 'audited')
  t.notOk(JSON.stringify(entries).includes(rawSecret), 'the audit log never records the secret')

  const other = await createEndpoint(alice)
  t.match(other.secret, SECRET_PATTERN)
  t.not(other.secret, created.secret, 'each endpoint gets its own secret')
  t.not(other.id, created.id)
  t.not((await storedRow(other.id)).secretSealed, row.secretSealed)
})

t.test('create: in an org where the caller is owner or admin, with every optional field', async (t) => {
  const byOwner = await call(alice, 'POST', '/webhook-endpoints', {
    orgId: acme,
    url: PUBLIC_V6,
    events: ['*'],
    description: 'Everything, to the data warehouse',
    enabled: false,
  })
  assertStatus(t, byOwner, 201, 'create as the owner')
  const owned = byOwner.json() as EndpointWithSecret
  t.equal(owned.orgId, acme, 'in the org asked for')
  t.equal(owned.url, PUBLIC_V6, 'an IPv6 literal of a public host is accepted')
  t.same(owned.events, ['*'], '"*" alone subscribes to everything')
  t.equal(owned.description, 'Everything, to the data warehouse')
  t.equal(owned.enabled, false, 'created disabled when asked')
  t.equal(owned.disabledReason, null, 'disabled by hand: no server reason')

  const byAdmin = await call(bob, 'POST', '/webhook-endpoints', {
    orgId: acme,
    url: PUBLIC_V4,
    events: ['webhook.test'],
  })
  assertStatus(t, byAdmin, 201, 'create as an admin')
  t.equal(byAdmin.json().orgId, acme, 'an admin may register endpoints of the org')
  t.equal((await storedRow(byAdmin.json().id)).createdBy, bob.userId)

  const stored = await storedIdsIn(acme)
  t.ok(stored.includes(owned.id) && stored.includes(byAdmin.json().id), 'both stored in the org')
  t.notOk((await storedIdsIn(alice.personalOrgId)).includes(owned.id), 'not in the personal org')
})

t.test('validation: bad events and bodies are refused and nothing is stored', async (t) => {
  const orgId = await createOrg(app, alice, 'Validation')
  const auditBefore = await auditIdsIn(orgId)
  const create = (payload: Record<string, unknown>) =>
    call(alice, 'POST', '/webhook-endpoints', { orgId, url: PUBLIC_V4, events: ['project.created'], ...payload })

  const unknown = await create({ events: ['project.exploded'] })
  assertProblem(t, unknown, 400, 'VALIDATION_FAILED', 'an unknown event type')
  t.ok(errorPaths(unknown).includes('/body/events/0'), `points at /body/events/0: ${errorPaths(unknown)}`)

  const laterUnknown = await create({ events: ['project.created', 'project.renamed'] })
  assertProblem(t, laterUnknown, 400, 'VALIDATION_FAILED', 'an unknown event type after a known one')
  t.ok(errorPaths(laterUnknown).includes('/body/events/1'), `points at /body/events/1: ${errorPaths(laterUnknown)}`)

  for (const events of [
    ['*', 'project.created'],
    ['project.created', '*'],
  ]) {
    const mixed = await create({ events })
    assertProblem(t, mixed, 400, 'INVALID_EVENTS', `${JSON.stringify(events)}`)
    t.same(errorPaths(mixed), ['/body/events'], 'points at /body/events')
  }

  const empty = await create({ events: [] })
  assertProblem(t, empty, 400, 'VALIDATION_FAILED', 'no events')
  t.ok(errorPaths(empty).includes('/body/events'), 'points at /body/events')

  const duplicated = await create({ events: ['project.created', 'project.created'] })
  assertProblem(t, duplicated, 400, 'VALIDATION_FAILED', 'the same event twice')
  t.ok(errorPaths(duplicated).includes('/body/events'), 'points at /body/events')

  const wildcardTwice = await create({ events: ['*', '*'] })
  assertProblem(t, wildcardTwice, 400, 'VALIDATION_FAILED', '"*" twice')

  const notArray = await create({ events: 'project.created' })
  assertProblem(t, notArray, 400, 'VALIDATION_FAILED', 'events as a string')

  const extra = await create({ secret: 'whsec_mine' })
  assertProblem(t, extra, 400, 'VALIDATION_FAILED', 'a client-chosen secret')
  t.ok(errorPaths(extra).includes('/body/secret'), 'points at the unknown property')

  const missingUrl = await call(alice, 'POST', '/webhook-endpoints', { orgId, events: ['project.created'] })
  assertProblem(t, missingUrl, 400, 'VALIDATION_FAILED', 'no url')
  t.ok(errorPaths(missingUrl).includes('/body/url'), 'points at /body/url')

  const missingEvents = await call(alice, 'POST', '/webhook-endpoints', { orgId, url: PUBLIC_V4 })
  assertProblem(t, missingEvents, 400, 'VALIDATION_FAILED', 'no events')
  t.ok(errorPaths(missingEvents).includes('/body/events'), 'points at /body/events')

  const longDescription = await create({ description: 'x'.repeat(501) })
  assertProblem(t, longDescription, 400, 'VALIDATION_FAILED', 'a description over 500 characters')

  const longUrl = await create({ url: `https://93.184.216.34/${'a'.repeat(2048)}` })
  assertProblem(t, longUrl, 400, 'VALIDATION_FAILED', 'a URL over 2048 characters')

  t.same(await storedIdsIn(orgId), [], 'nothing stored')
  t.same(await auditIdsIn(orgId), auditBefore, 'nothing audited')
})

t.test('validation: URLs that could reach our own network are refused (SSRF)', async (t) => {
  const orgId = await createOrg(app, alice, 'SSRF')
  const auditBefore = await auditIdsIn(orgId)
  const create = (url: string) => call(alice, 'POST', '/webhook-endpoints', { orgId, url, events: ['project.created'] })

  const refused = [
    // plain http, to a public address
    'http://93.184.216.34/hook',
    // loopback, private, link-local (the metadata service), unspecified
    'https://127.0.0.1/',
    'https://127.0.0.1:8443/hook',
    'https://10.0.0.1/',
    'https://172.16.0.1/',
    'https://192.168.1.1/',
    'https://169.254.169.254/latest/meta-data/',
    'https://0.0.0.0/',
    'https://100.64.0.1/',
    // other spellings of loopback: IPv4-mapped, decimal, hexadecimal, IPv6
    'https://[::ffff:127.0.0.1]/',
    'https://[::ffff:169.254.169.254]/',
    'https://2130706433/',
    'https://0x7f.1/',
    'https://[::1]/',
    'https://[::127.0.0.1]/',
    'https://[fd00::1]/',
    'https://[fe80::1]/',
    // credentials, other schemes, no URL at all
    'https://user:pass@93.184.216.34/hook',
    'https://user@93.184.216.34/hook',
    'ftp://93.184.216.34/hook',
    'file:///etc/passwd',
    'not a url',
    // a name that resolves nowhere: refused, not a server error (and without needing the network)
    'https://does-not-exist.invalid/',
    // a name for loopback
    'https://localhost/hook',
  ]
  for (const url of refused) assertUrlRefused(t, await create(url), url)

  t.same(await storedIdsIn(orgId), [], 'nothing stored')
  t.same(await auditIdsIn(orgId), auditBefore, 'nothing audited')

  for (const url of [PUBLIC_V4, PUBLIC_V6]) {
    const accepted = await create(url)
    assertStatus(t, accepted, 201, url)
    t.equal(accepted.json().url, url, 'stored as given')
  }
  const normalised = await create('HTTPS://93.184.216.34')
  assertStatus(t, normalised, 201, 'an upper-case scheme and no path')
  t.equal(normalised.json().url, 'https://93.184.216.34/', 'the parsed URL is what is stored')
  t.equal((await storedIdsIn(orgId)).length, 3)
})

t.test('with WEBHOOK_ALLOW_PRIVATE_TARGETS=true, http and private addresses are accepted', async (t) => {
  const open = await buildTestApp(t, { env: { WEBHOOK_ALLOW_PRIVATE_TARGETS: 'true' } })
  const user = await account(open)
  const create = (url: string) => callAs(open, user, 'POST', '/webhook-endpoints', { url, events: ['project.created'] })

  const local = await create('http://127.0.0.1:1234/hook')
  assertStatus(t, local, 201, 'http to loopback')
  t.equal(local.json().url, 'http://127.0.0.1:1234/hook')
  t.match(local.json().secret, SECRET_PATTERN)

  const metadata = await create('https://169.254.169.254/')
  t.equal(metadata.statusCode, 201, 'private addresses too')

  for (const url of ['http://user:pass@127.0.0.1:1234/hook', 'ftp://127.0.0.1/hook', 'not a url']) {
    const refused = await create(url)
    assertProblem(t, refused, 400, 'INVALID_WEBHOOK_URL', `${url} stays refused`)
  }

  // The shared app still refuses it: the setting is what makes the difference.
  assertUrlRefused(
    t,
    await call(alice, 'POST', '/webhook-endpoints', { url: 'http://127.0.0.1:1234/hook', events: ['webhook.test'] }),
    'http://127.0.0.1:1234/hook without the setting',
  )
})

t.test('authorization: anonymous callers get 401 on every route', async (t) => {
  const endpoint = await createEndpoint(alice, { orgId: acme })
  const before = await stored(endpoint.id)
  const routes: [Method, string, Record<string, unknown>?][] = [
    ['POST', '/webhook-endpoints', { url: PUBLIC_V4, events: ['project.created'] }],
    ['GET', '/webhook-endpoints'],
    ['GET', `/webhook-endpoints/${endpoint.id}`],
    ['PATCH', `/webhook-endpoints/${endpoint.id}`, { description: 'x' }],
    ['DELETE', `/webhook-endpoints/${endpoint.id}`],
    ['POST', `/webhook-endpoints/${endpoint.id}/rotate-secret`],
  ]
  for (const [method, url, payload] of routes) {
    const response = await call(anonymous, method, url, payload)
    assertProblem(t, response, 401, 'UNAUTHORIZED', `${method} ${url}`)
    t.equal(response.headers['www-authenticate'], 'Bearer')
    const forged = await call({ headers: bearer('not-a-token') }, method, url, payload)
    assertProblem(t, forged, 401, 'INVALID_TOKEN', `${method} ${url} with a bad token`)
  }
  t.same(await stored(endpoint.id), before, 'nothing changed')
})

t.test('authorization: members and viewers get 403 INSUFFICIENT_ROLE; owners and admins manage', async (t) => {
  const endpoint = await createEndpoint(alice, { orgId: acme })
  const before = await stored(endpoint.id)
  const storedBefore = await storedIdsIn(acme)
  const auditBefore = await auditIdsIn(acme)
  const url = `/webhook-endpoints/${endpoint.id}`

  for (const [who, label] of [
    [carol, 'a member'],
    [dave, 'a viewer'],
  ] as const) {
    const attempts: [Method, string, Record<string, unknown>?][] = [
      ['POST', '/webhook-endpoints', { orgId: acme, url: PUBLIC_V4, events: ['project.created'] }],
      ['GET', `/webhook-endpoints?orgId=${acme}`],
      ['GET', url],
      ['PATCH', url, { enabled: false }],
      ['DELETE', url],
      ['POST', `${url}/rotate-secret`],
    ]
    for (const [method, path, payload] of attempts) {
      assertProblem(t, await call(who, method, path, payload), 403, 'INSUFFICIENT_ROLE', `${label}: ${method} ${path}`)
    }
  }
  t.same(await stored(endpoint.id), before, 'the endpoint did not change')
  t.same(await storedIdsIn(acme), storedBefore, 'nothing was created or deleted')
  t.same(await auditIdsIn(acme), auditBefore, 'nothing was audited')

  // A member's own listing (their personal org) works and does not show the org's endpoints.
  const own = await call(carol, 'GET', '/webhook-endpoints')
  assertStatus(t, own, 200, "a member's own listing")
  t.same(own.json().data, [], "a member's personal org has no endpoints")

  for (const [who, label] of [
    [alice, 'the owner'],
    [bob, 'an admin'],
  ] as const) {
    const get = await call(who, 'GET', url)
    t.equal(get.statusCode, 200, `${label}: GET`)
    const list = await call(who, 'GET', `/webhook-endpoints?orgId=${acme}&limit=100`)
    t.equal(list.statusCode, 200, `${label}: list`)
    t.ok(
      (list.json().data as Endpoint[]).some((item) => item.id === endpoint.id),
      `${label}: the endpoint is listed`,
    )
    const patch = await call(who, 'PATCH', url, { description: `set by ${label}` })
    t.equal(patch.statusCode, 200, `${label}: PATCH`)
    t.equal(patch.json().description, `set by ${label}`)
    const rotate = await call(who, 'POST', `${url}/rotate-secret`)
    t.equal(rotate.statusCode, 200, `${label}: rotate`)
    t.match(rotate.json().secret, SECRET_PATTERN)
  }
  const removed = await call(bob, 'DELETE', url)
  t.equal(removed.statusCode, 204, 'an admin may delete')
  t.equal(await stored(endpoint.id), null)
})

t.test('authorization: a demoted admin loses access at once', async (t) => {
  const orgId = await createOrg(app, alice, 'Demotion')
  const frank = await account(app)
  await addMember(app, alice, orgId, frank, 'admin')
  const endpoint = await createEndpoint(frank, { orgId })
  t.equal((await call(frank, 'GET', `/webhook-endpoints/${endpoint.id}`)).statusCode, 200, 'an admin sees it')

  const demote = await call(alice, 'PATCH', `/orgs/${orgId}/members/${frank.userId}`, { role: 'member' })
  assertStatus(t, demote, 200, 'demotion to member')
  assertProblem(t, await call(frank, 'GET', `/webhook-endpoints/${endpoint.id}`), 403, 'INSUFFICIENT_ROLE', 'GET')
  assertProblem(
    t,
    await call(frank, 'POST', `/webhook-endpoints/${endpoint.id}/rotate-secret`),
    403,
    'INSUFFICIENT_ROLE',
    'rotate',
  )

  const removed = await call(alice, 'DELETE', `/orgs/${orgId}/members/${frank.userId}`)
  assertStatus(t, removed, 204, 'removal from the org')
  assertProblem(
    t,
    await call(frank, 'GET', `/webhook-endpoints/${endpoint.id}`),
    404,
    'WEBHOOK_ENDPOINT_NOT_FOUND',
    'after leaving the org',
  )
})

t.test('org isolation: endpoints of other orgs do not exist for the caller (404)', async (t) => {
  const target = await createEndpoint(alice, { orgId: acme, description: 'Acme only' })
  const rowBefore = await stored(target.id)
  const storedBefore = await storedIdsIn(acme)
  const auditBefore = await auditIdsIn(acme)
  const eveKey = await createApiKey(app, eve, eveOrg, ['webhooks:read', 'webhooks:write'])
  const missingId = 'whe_0000000000000000000000000000dead'

  const missing = await call(alice, 'GET', `/webhook-endpoints/${missingId}`)
  assertProblem(t, missing, 404, 'WEBHOOK_ENDPOINT_NOT_FOUND', 'an endpoint that does not exist')

  for (const [who, label] of [
    [eve, 'Eve (admin of another org)'],
    [withKey(eveKey), "Eve's API key (webhooks:read+write)"],
  ] as const) {
    const attempts: [Method, string, Record<string, unknown>?][] = [
      ['GET', `/webhook-endpoints/${target.id}`],
      ['PATCH', `/webhook-endpoints/${target.id}`, { url: PUBLIC_V6, enabled: false }],
      ['DELETE', `/webhook-endpoints/${target.id}`],
      ['POST', `/webhook-endpoints/${target.id}/rotate-secret`],
    ]
    for (const [method, path, payload] of attempts) {
      const response = await call(who, method, path, payload)
      assertProblem(t, response, 404, 'WEBHOOK_ENDPOINT_NOT_FOUND', `${label}: ${method}`)
      const absent = await call(who, method, path.replace(target.id, missingId), payload)
      t.same(withoutRequestId(response), withoutRequestId(absent), `${label}: ${method} same as for no endpoint`)
    }

    const create = await call(who, 'POST', '/webhook-endpoints', {
      orgId: acme,
      url: PUBLIC_V4,
      events: ['project.created'],
    })
    assertProblem(t, create, 404, 'ORG_NOT_FOUND', `${label}: create in Acme`)
    assertProblem(t, await call(who, 'GET', `/webhook-endpoints?orgId=${acme}`), 404, 'ORG_NOT_FOUND', `${label}: list`)
    const noOrg = await call(who, 'GET', '/webhook-endpoints?orgId=org_doesnotexist')
    t.same(
      withoutRequestId(noOrg),
      withoutRequestId(await call(who, 'GET', `/webhook-endpoints?orgId=${acme}`)),
      `${label}: an org that exists looks like one that does not`,
    )
  }

  assertProblem(
    t,
    await call(eve, 'POST', '/webhook-endpoints', {
      orgId: alice.personalOrgId,
      url: PUBLIC_V4,
      events: ['project.created'],
    }),
    404,
    'ORG_NOT_FOUND',
    "another user's personal org",
  )

  const evesOwn = await call(eve, 'GET', `/webhook-endpoints?orgId=${eveOrg}&limit=100`)
  t.equal(evesOwn.statusCode, 200)
  t.notOk(
    (evesOwn.json().data as Endpoint[]).some((item) => item.orgId === acme),
    "Eve's list shows no Acme endpoint",
  )

  t.same(await stored(target.id), rowBefore, 'the endpoint did not change')
  t.same(await storedIdsIn(acme), storedBefore, 'nothing created or deleted in Acme')
  t.same(await auditIdsIn(acme), auditBefore, 'nothing audited in Acme')
})

t.test('API keys: webhooks:read lists and reads, webhooks:write manages; both act within the key org', async (t) => {
  const orgId = await createOrg(app, alice, 'Keys')
  await addMember(app, alice, orgId, carol, 'member')
  const existing = await createEndpoint(alice, { orgId })
  const reader = withKey(await createApiKey(app, alice, orgId, ['webhooks:read']))
  const writerKey = await createApiKey(app, alice, orgId, ['webhooks:write'])
  const writer = withKey(writerKey)
  const unrelated = withKey(await createApiKey(app, alice, orgId, ['projects:read', 'projects:write']))
  const membersKey = withKey(await createApiKey(app, carol, orgId, ['webhooks:read', 'webhooks:write']))

  const list = await call(reader, 'GET', '/webhook-endpoints')
  assertStatus(t, list, 200, 'webhooks:read key: list')
  t.same(
    (list.json().data as Endpoint[]).map((item) => item.id),
    [existing.id],
    "the key's org by default",
  )
  const get = await call(reader, 'GET', `/webhook-endpoints/${existing.id}`)
  assertStatus(t, get, 200, 'webhooks:read key: GET')
  t.equal(get.json().id, existing.id)

  const rowBefore = await stored(existing.id)
  const attempts: [Method, string, Record<string, unknown>?][] = [
    ['POST', '/webhook-endpoints', { url: PUBLIC_V4, events: ['project.created'] }],
    ['PATCH', `/webhook-endpoints/${existing.id}`, { enabled: false }],
    ['DELETE', `/webhook-endpoints/${existing.id}`],
    ['POST', `/webhook-endpoints/${existing.id}/rotate-secret`],
  ]
  for (const [method, path, payload] of attempts) {
    const response = await call(reader, method, path, payload)
    assertProblem(t, response, 403, 'INSUFFICIENT_SCOPE', `webhooks:read only: ${method} ${path}`)
  }
  for (const [method, path, payload] of [...attempts, ['GET', '/webhook-endpoints'] as [Method, string]]) {
    const response = await call(unrelated, method, path, payload)
    assertProblem(t, response, 403, 'INSUFFICIENT_SCOPE', `projects scopes only: ${method} ${path}`)
  }
  t.same(await stored(existing.id), rowBefore, 'refused keys changed nothing')
  t.same(await storedIdsIn(orgId), [existing.id], 'refused keys created nothing')

  const created = await call(writer, 'POST', '/webhook-endpoints', { url: PUBLIC_V4, events: ['webhook.test'] })
  assertStatus(t, created, 201, 'webhooks:write key: create')
  t.equal(created.json().orgId, orgId, "created in the key's org, not the creator's personal org")
  t.match(created.json().secret, SECRET_PATTERN)
  const patch = await call(writer, 'PATCH', `/webhook-endpoints/${created.json().id}`, { enabled: false })
  assertStatus(t, patch, 200, 'webhooks:write key: PATCH')
  t.equal(patch.json().enabled, false)
  const rotate = await call(writer, 'POST', `/webhook-endpoints/${created.json().id}/rotate-secret`)
  assertStatus(t, rotate, 200, 'webhooks:write key: rotate')
  assertProblem(
    t,
    await call(writer, 'GET', `/webhook-endpoints/${created.json().id}`),
    403,
    'INSUFFICIENT_SCOPE',
    'webhooks:write does not include reading',
  )
  const elsewhere = await call(writer, 'POST', '/webhook-endpoints', {
    orgId: alice.personalOrgId,
    url: PUBLIC_V4,
    events: ['webhook.test'],
  })
  assertProblem(t, elsewhere, 404, 'ORG_NOT_FOUND', "another org of the key's creator")
  const removed = await call(writer, 'DELETE', `/webhook-endpoints/${created.json().id}`)
  assertStatus(t, removed, 204, 'webhooks:write key: DELETE')

  // A key acts with its creator's role: a member's key is refused although it has the scopes.
  assertProblem(t, await call(membersKey, 'GET', '/webhook-endpoints'), 403, 'INSUFFICIENT_ROLE', "a member's key")
  assertProblem(
    t,
    await call(membersKey, 'POST', '/webhook-endpoints', { url: PUBLIC_V4, events: ['webhook.test'] }),
    403,
    'INSUFFICIENT_ROLE',
    "a member's key: create",
  )
  t.same(await storedIdsIn(orgId), [existing.id], 'only the first endpoint is left')
})

t.test('list: oldest first, paginated by cursor without repeats, scoped to one org', async (t) => {
  const orgA = await createOrg(app, alice, 'Listing A')
  const orgB = await createOrg(app, alice, 'Listing B')
  const created: EndpointWithSecret[] = []
  for (let index = 0; index < 7; index++) {
    created.push(await createEndpoint(alice, { orgId: orgA, description: `endpoint ${index}` }))
  }
  const inB = [await createEndpoint(alice, { orgId: orgB }), await createEndpoint(alice, { orgId: orgB })]
  const expected = created.map((endpoint) => endpoint.id)

  const listUrl = (orgId: string, limit: number, cursor: string | null) =>
    `/webhook-endpoints?${new URLSearchParams({ orgId, limit: `${limit}`, ...(cursor ? { cursor } : {}) })}`

  const { items, pages } = await walkPages<Endpoint>(t, (cursor) => call(alice, 'GET', listUrl(orgA, 3, cursor)))
  t.same(
    pages.map((page) => page.length),
    [3, 3, 1],
    'three pages of at most 3',
  )
  t.same(
    items.map((item) => item.id),
    expected,
    'every endpoint once, oldest first',
  )
  t.equal(new Set(items.map((item) => item.id)).size, items.length, 'no duplicates')
  t.ok(
    items.every((item) => item.orgId === orgA),
    'only the org asked for',
  )
  t.ok(
    items.every((item) => !('secret' in item)),
    'no secrets in pages',
  )
  for (let index = 1; index < items.length; index++) {
    const previous = items[index - 1] as Endpoint
    const current = items[index] as Endpoint
    t.ok(Date.parse(previous.createdAt) <= Date.parse(current.createdAt), 'createdAt never goes backwards')
  }

  const exact = await walkPages<Endpoint>(t, (cursor) => call(alice, 'GET', listUrl(orgA, 7, cursor)))
  t.equal(exact.pages.length, 1, 'a page holding exactly the rest has no next cursor')
  t.same(
    exact.items.map((item) => item.id),
    expected,
  )

  const one = await walkPages<Endpoint>(t, (cursor) => call(alice, 'GET', listUrl(orgA, 1, cursor)))
  t.equal(one.pages.length, 7, 'limit=1: one page per endpoint')
  t.same(
    one.items.map((item) => item.id),
    expected,
  )

  const b = await call(alice, 'GET', `/webhook-endpoints?orgId=${orgB}`)
  t.same(
    (b.json().data as Endpoint[]).map((item) => item.id),
    inB.map((endpoint) => endpoint.id),
    'the other org lists only its own',
  )

  const defaultLimit = await call(alice, 'GET', `/webhook-endpoints?orgId=${orgA}`)
  t.equal(defaultLimit.json().data.length, 7, 'the default limit (20) covers all seven')
  t.equal(defaultLimit.json().nextCursor, null)

  const firstPage = await call(alice, 'GET', listUrl(orgA, 3, null))
  const cursorA = firstPage.json().nextCursor as string
  t.type(cursorA, 'string')
  const crossed = await call(alice, 'GET', listUrl(orgB, 3, cursorA))
  assertProblem(t, crossed, 400, 'INVALID_CURSOR', "a cursor of one org's listing used with another org")
  const personal = await call(alice, 'GET', `/webhook-endpoints?limit=3&cursor=${encodeURIComponent(cursorA)}`)
  assertProblem(t, personal, 400, 'INVALID_CURSOR', 'the same cursor with the default (personal) org')

  for (const [cursor, label] of [
    ['garbage', 'garbage'],
    [b64url('{"not":"a cursor"}'), 'JSON that is not a cursor'],
    [b64url(['yesterday', 'whe_x', orgA]), 'a sort key that is no timestamp'],
    [b64url(['2024-02-30 10:00:00+00', 'whe_x', orgA]), 'an impossible date'],
    [b64url(['2024-01-01 10:00:00+00', 'whe_x']), 'a cursor without the org'],
  ] as const) {
    assertProblem(t, await call(alice, 'GET', listUrl(orgA, 3, cursor)), 400, 'INVALID_CURSOR', label)
  }
  const edited = await call(alice, 'GET', listUrl(orgA, 3, b64url(['1970-01-01 00:00:00+00', '', orgA])))
  t.equal(edited.statusCode, 200, 'an edited cursor that is well formed is just a position')
  t.same(
    (edited.json().data as Endpoint[]).map((item) => item.id),
    expected.slice(0, 3),
  )

  for (const limit of ['0', '101', '-1', 'abc', '2.5']) {
    const response = await call(alice, 'GET', `/webhook-endpoints?orgId=${orgA}&limit=${limit}`)
    assertProblem(t, response, 400, 'VALIDATION_FAILED', `limit=${limit}`)
  }
  const max = await call(alice, 'GET', `/webhook-endpoints?orgId=${orgA}&limit=100`)
  t.equal(max.statusCode, 200, 'limit=100 is allowed')
  assertProblem(
    t,
    await call(alice, 'GET', `/webhook-endpoints?orgId=${orgA}&sort=url`),
    400,
    'VALIDATION_FAILED',
    'an unknown query parameter',
  )
})

t.test('PATCH: changes url, events, description and enabled; refuses what create refuses', async (t) => {
  const endpoint = await createEndpoint(alice, { orgId: acme, description: 'before' })
  const url = `/webhook-endpoints/${endpoint.id}`
  const sealedBefore = (await storedRow(endpoint.id)).secretSealed

  const moved = await call(alice, 'PATCH', url, { url: PUBLIC_V6 })
  assertStatus(t, moved, 200, 'PATCH url')
  const afterMove = moved.json() as Endpoint
  t.equal(afterMove.url, PUBLIC_V6, 'url changed')
  t.same(afterMove.events, endpoint.events, 'events unchanged')
  t.equal(afterMove.description, 'before', 'description unchanged')
  t.equal(afterMove.enabled, true, 'still enabled')
  t.equal(afterMove.createdAt, endpoint.createdAt, 'createdAt unchanged')
  t.ok(Date.parse(afterMove.updatedAt) >= Date.parse(endpoint.updatedAt), 'updatedAt moves forward')

  const beforeAll = await stored(endpoint.id)
  const all = await call(alice, 'PATCH', url, {
    url: PUBLIC_V4,
    events: ['project.updated', 'billing.subscription.updated'],
    description: 'after',
    enabled: false,
  })
  assertStatus(t, all, 200, 'PATCH every field')
  const changed = all.json() as Endpoint
  t.equal(changed.url, PUBLIC_V4)
  t.same(changed.events, ['project.updated', 'billing.subscription.updated'])
  t.equal(changed.description, 'after')
  t.equal(changed.enabled, false)
  t.equal(changed.disabledReason, null)
  t.same((await call(alice, 'GET', url)).json(), changed, 'GET shows the change')
  const afterAll = await stored(endpoint.id)
  t.ok(
    (afterAll?.exactUpdatedAt ?? '') > (beforeAll?.exactUpdatedAt ?? '~'),
    'updated_at advanced (to the microsecond)',
  )
  t.equal(afterAll?.row.secretSealed, sealedBefore, 'PATCH leaves the secret alone')

  const wildcard = await call(alice, 'PATCH', url, { events: ['*'] })
  assertStatus(t, wildcard, 200, 'PATCH events ["*"]')
  t.same(wildcard.json().events, ['*'])

  const enabled = await call(alice, 'PATCH', url, { enabled: true })
  t.equal(enabled.statusCode, 200)
  t.equal(enabled.json().enabled, true, 'enabled again')
  const disabled = await call(alice, 'PATCH', url, { enabled: false })
  t.equal(disabled.json().enabled, false, 'disabled again')
  t.equal((await storedRow(endpoint.id)).enabled, false, 'stored disabled')

  const rowBefore = await stored(endpoint.id)
  const auditBefore = await auditIdsIn(acme)
  const emptyBody = await call(alice, 'PATCH', url, {})
  assertProblem(t, emptyBody, 400, 'VALIDATION_FAILED', 'an empty patch')
  assertProblem(t, await call(alice, 'PATCH', url, { orgId: eveOrg }), 400, 'VALIDATION_FAILED', 'moving orgs')
  assertProblem(t, await call(alice, 'PATCH', url, { secret: 'whsec_x' }), 400, 'VALIDATION_FAILED', 'a secret')
  assertProblem(t, await call(alice, 'PATCH', url, { events: [] }), 400, 'VALIDATION_FAILED', 'no events')
  assertProblem(
    t,
    await call(alice, 'PATCH', url, { events: ['project.nope'] }),
    400,
    'VALIDATION_FAILED',
    'an unknown event',
  )
  assertProblem(
    t,
    await call(alice, 'PATCH', url, { events: ['*', 'webhook.test'] }),
    400,
    'INVALID_EVENTS',
    '"*" with a type',
  )
  assertProblem(t, await call(alice, 'PATCH', url, { enabled: 'yes' }), 400, 'VALIDATION_FAILED', 'enabled as text')
  for (const target of ['https://127.0.0.1/', 'http://93.184.216.34/hook', 'https://[::ffff:10.0.0.1]/']) {
    assertUrlRefused(t, await call(alice, 'PATCH', url, { url: target, description: 'moved' }), `PATCH url ${target}`)
  }
  t.same(await stored(endpoint.id), rowBefore, 'refused patches changed nothing, not even the other fields')
  t.same(await auditIdsIn(acme), auditBefore, 'refused patches were not audited')

  assertProblem(
    t,
    await call(alice, 'PATCH', '/webhook-endpoints/whe_0000000000000000000000000000dead', { enabled: true }),
    404,
    'WEBHOOK_ENDPOINT_NOT_FOUND',
    'an endpoint that does not exist',
  )
})

t.test('PATCH: enabling an endpoint the server disabled clears disabledReason', async (t) => {
  const endpoint = await createEndpoint(alice, { orgId: acme })
  const url = `/webhook-endpoints/${endpoint.id}`
  // What the delivery worker does when the receiver answers 410 Gone.
  await app.db
    .update(webhookEndpoints)
    .set({ enabled: false, disabledReason: 'gone' })
    .where(eq(webhookEndpoints.id, endpoint.id))

  const shown = await call(alice, 'GET', url)
  t.equal(shown.json().enabled, false)
  t.equal(shown.json().disabledReason, 'gone', 'the reason is shown')

  const described = await call(alice, 'PATCH', url, { description: 'receiver moved' })
  t.equal(described.statusCode, 200)
  t.equal(described.json().enabled, false, 'other changes do not enable it')
  t.equal(described.json().disabledReason, 'gone', 'nor clear the reason')

  const disabledAgain = await call(alice, 'PATCH', url, { enabled: false })
  t.equal(disabledAgain.statusCode, 200)
  t.equal(disabledAgain.json().disabledReason, 'gone', 'disabling it again keeps why the server disabled it')

  const enabled = await call(alice, 'PATCH', url, { enabled: true })
  assertStatus(t, enabled, 200, 'PATCH enabled: true')
  t.equal(enabled.json().enabled, true)
  t.equal(enabled.json().disabledReason, null, 'enabling clears the reason')
  const row = await storedRow(endpoint.id)
  t.equal(row.enabled, true)
  t.equal(row.disabledReason, null, 'cleared in the database too')
  t.equal((await call(alice, 'GET', url)).json().disabledReason, null)
})

t.test('a URL within the length limit that grows past it once normalised is refused', async (t) => {
  const before = await call(alice, 'GET', '/webhook-endpoints?limit=100')
  // 1,000 characters as sent; each é becomes %C3%A9 in the stored form: 6,000 characters.
  const response = await call(alice, 'POST', '/webhook-endpoints', {
    url: `https://93.184.216.34/${'é'.repeat(1000)}`,
    events: ['project.created'],
  })
  assertProblem(t, response, 400, 'INVALID_WEBHOOK_URL')
  t.equal(response.json().errors?.[0]?.path, '/body/url')
  t.same((await call(alice, 'GET', '/webhook-endpoints?limit=100')).json(), before.json(), 'nothing stored')
})

t.test('DELETE: 204, then the endpoint is gone for every verb', async (t) => {
  const keep = await createEndpoint(alice, { orgId: acme })
  const endpoint = await createEndpoint(alice, { orgId: acme })
  const url = `/webhook-endpoints/${endpoint.id}`

  const removed = await call(alice, 'DELETE', url)
  t.equal(removed.statusCode, 204)
  t.equal(removed.body, '', 'no body')
  t.equal(await stored(endpoint.id), null, 'the row is deleted')

  assertProblem(t, await call(alice, 'GET', url), 404, 'WEBHOOK_ENDPOINT_NOT_FOUND', 'GET after DELETE')
  assertProblem(t, await call(alice, 'DELETE', url), 404, 'WEBHOOK_ENDPOINT_NOT_FOUND', 'DELETE twice')
  assertProblem(t, await call(alice, 'PATCH', url, { enabled: true }), 404, 'WEBHOOK_ENDPOINT_NOT_FOUND', 'PATCH')
  assertProblem(t, await call(alice, 'POST', `${url}/rotate-secret`), 404, 'WEBHOOK_ENDPOINT_NOT_FOUND', 'rotate')
  const list = await call(alice, 'GET', `/webhook-endpoints?orgId=${acme}&limit=100`)
  const ids = (list.json().data as Endpoint[]).map((item) => item.id)
  t.notOk(ids.includes(endpoint.id), 'not listed')
  t.ok(ids.includes(keep.id), 'the other endpoint of the org is untouched')
  t.ok(await stored(keep.id))
})

t.test('rotate-secret: a new secret, the previous one signing for 24 hours', async (t) => {
  const other = await createEndpoint(alice, { orgId: acme })
  const otherBefore = await stored(other.id)
  const endpoint = await createEndpoint(alice, { orgId: acme })
  const url = `/webhook-endpoints/${endpoint.id}`
  const firstSealed = (await storedRow(endpoint.id)).secretSealed

  const before = Date.now()
  const rotated = await call(alice, 'POST', `${url}/rotate-secret`)
  const after = Date.now()
  assertStatus(t, rotated, 200, 'rotate')
  const body = rotated.json() as EndpointWithSecret
  t.same(sortedKeys(body), WITH_SECRET_FIELDS, 'the endpoint with its new secret')
  t.equal(body.id, endpoint.id)
  t.match(body.secret, SECRET_PATTERN)
  t.equal(secretBytes(body.secret).length, 32)
  t.not(body.secret, endpoint.secret, 'a different secret')
  const expiresAt = Date.parse(body.previousSecretExpiresAt ?? '')
  t.ok(
    expiresAt >= before + 24 * HOUR - MINUTE && expiresAt <= after + 24 * HOUR + MINUTE,
    `the previous secret expires in about 24 hours (${body.previousSecretExpiresAt})`,
  )
  t.ok(expiresAt >= before + 24 * HOUR - 1000 && expiresAt <= after + 24 * HOUR + 1000, 'to the second')

  const get = await call(alice, 'GET', url)
  t.equal(get.json().previousSecretExpiresAt, body.previousSecretExpiresAt, 'GET shows the overlap')
  t.notOk(get.body.includes(body.secret.slice(6)), 'GET never carries the new secret')
  const listed = (await call(alice, 'GET', `/webhook-endpoints?orgId=${acme}&limit=100`)).json().data as Endpoint[]
  t.equal(listed.find((item) => item.id === endpoint.id)?.previousSecretExpiresAt, body.previousSecretExpiresAt)

  const row = await storedRow(endpoint.id)
  t.equal(row.previousSecretSealed, firstSealed, 'the old sealed secret became the previous one')
  t.not(row.secretSealed, firstSealed, 'a new sealed secret')
  t.notOk(row.secretSealed.includes(body.secret.slice(6)), 'the new secret is not stored in the clear')
  t.equal(openSealed(row.secretSealed, endpoint.id), body.secret, 'the stored secret is the one shown')
  t.equal(openSealed(row.previousSecretSealed ?? '', endpoint.id), endpoint.secret, 'the previous is the first')
  t.equal(row.previousSecretExpiresAt?.getTime(), expiresAt)

  // The overlap is over.
  await app.db
    .update(webhookEndpoints)
    .set({ previousSecretExpiresAt: sql`now() - interval '1 minute'` })
    .where(eq(webhookEndpoints.id, endpoint.id))
  t.equal((await call(alice, 'GET', url)).json().previousSecretExpiresAt, null, 'an expired overlap is not shown')
  const afterExpiry = (await call(alice, 'GET', `/webhook-endpoints?orgId=${acme}&limit=100`)).json().data as Endpoint[]
  t.equal(afterExpiry.find((item) => item.id === endpoint.id)?.previousSecretExpiresAt, null, 'nor listed')

  const second = await call(alice, 'POST', `${url}/rotate-secret`)
  t.equal(second.statusCode, 200)
  const secondSecret = second.json().secret as string
  t.not(secondSecret, body.secret)
  t.not(secondSecret, endpoint.secret)
  t.ok(Date.parse(second.json().previousSecretExpiresAt) > Date.now() + 23 * HOUR, 'a new overlap')
  const secondRow = await storedRow(endpoint.id)
  t.equal(secondRow.previousSecretSealed, row.secretSealed, 'the secret of the first rotation is now the previous')
  t.equal(openSealed(secondRow.secretSealed, endpoint.id), secondSecret)

  t.same(await stored(other.id), otherBefore, 'other endpoints keep their secrets')
})

t.test('audit: every change is recorded in the org audit log with its actor', async (t) => {
  const orgId = await createOrg(app, alice, 'Audited')
  await addMember(app, alice, orgId, bob, 'admin')
  await addMember(app, alice, orgId, carol, 'member')
  const key = await createApiKey(app, alice, orgId, ['webhooks:write'])

  const endpoint = await createEndpoint(alice, { orgId })
  const url = `/webhook-endpoints/${endpoint.id}`
  t.equal((await call(bob, 'PATCH', url, { url: PUBLIC_V6 })).statusCode, 200)
  t.equal((await call(withKey(key), 'POST', `${url}/rotate-secret`)).statusCode, 200)
  assertProblem(t, await call(carol, 'DELETE', url), 403, 'INSUFFICIENT_ROLE', 'a member cannot delete')
  t.equal((await call(alice, 'DELETE', url)).statusCode, 204)

  const log = await call(alice, 'GET', `/orgs/${orgId}/audit-log?limit=100`)
  assertStatus(t, log, 200, 'audit log')
  const entries = (log.json().data as AuditEntry[]).filter((entry) => entry.targetId === endpoint.id)
  t.same(
    entries.map((entry) => ({
      action: entry.action,
      actorUserId: entry.actorUserId,
      actorKeyId: entry.actorKeyId,
      targetType: entry.targetType,
      orgId: entry.orgId,
      url: entry.metadata.url,
    })),
    [
      {
        action: 'webhook_endpoint.deleted',
        actorUserId: alice.userId,
        actorKeyId: null,
        targetType: 'webhook_endpoint',
        orgId,
        url: PUBLIC_V6,
      },
      {
        action: 'webhook_endpoint.secret_rotated',
        actorUserId: alice.userId,
        actorKeyId: key.id,
        targetType: 'webhook_endpoint',
        orgId,
        url: PUBLIC_V6,
      },
      {
        action: 'webhook_endpoint.updated',
        actorUserId: bob.userId,
        actorKeyId: null,
        targetType: 'webhook_endpoint',
        orgId,
        url: PUBLIC_V6,
      },
      {
        action: 'webhook_endpoint.created',
        actorUserId: alice.userId,
        actorKeyId: null,
        targetType: 'webhook_endpoint',
        orgId,
        url: PUBLIC_V4,
      },
    ],
    'newest first: deleted, secret_rotated, updated, created; the refused delete is not there',
  )
  t.notOk(log.body.includes(endpoint.secret.slice(6)), 'no secret in the audit log')

  const personal = await createEndpoint(alice)
  const [entry] = await app.db
    .select()
    .from(auditLog)
    .where(and(eq(auditLog.targetId, personal.id), eq(auditLog.action, 'webhook_endpoint.created')))
  t.equal(entry?.orgId, alice.personalOrgId, 'recorded in the org of the endpoint')
})
