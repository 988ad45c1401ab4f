import { eq } from 'drizzle-orm'
import t from 'tap'
import { apiKeys } from '../../src/db/schema/index.js'
import { SCOPES } from '../../src/modules/auth/authorization.js'
import { buildTestApp } from '../helper.js'
import {
  type Account,
  account,
  addMember,
  assertInvalidToken,
  assertProblem,
  bearer,
  type CreatedApiKey,
  createApiKey,
  createOrg,
  me,
  uniqueAddress,
  walkPages,
  callAs,
  type Method,
} from './support.js'

const app = await buildTestApp(t)

const call = (
  who: Pick<Account, 'headers'>,
  method: Method,
  url: string,
  payload?: Record<string, unknown>,
  address?: string,
) => callAs(app, who, method, url, payload, address)

/** Acts with an API key instead of a user's access token. */
const withKey = (key: CreatedApiKey) => ({ headers: bearer(key.key) })

async function listKeys(who: Account, orgId: string): Promise<Record<string, unknown>[]> {
  const response = await call(who, 'GET', `/api-keys?orgId=${orgId}&limit=100`)
  if (response.statusCode !== 200) throw new Error(`list keys answered ${response.statusCode}: ${response.body}`)
  return response.json().data
}

const PUBLIC_FIELDS = ['createdAt', 'createdBy', 'expiresAt', 'id', 'lastUsedAt', 'name', 'orgId', 'prefix', 'scopes']

t.test('a new key is shown once; lists and the database never hold it', async (t) => {
  const owner = await account(app)
  const orgId = await createOrg(app, owner)
  const expiresAt = new Date(Date.now() + 24 * 3600 * 1000).toISOString()
  const response = await app.inject({
    method: 'POST',
    url: '/api/v1/api-keys',
    headers: owner.headers,
    remoteAddress: uniqueAddress(),
    payload: { name: 'deploy bot', orgId, scopes: ['orgs:read', 'projects:read'], expiresAt },
  })
  t.equal(response.statusCode, 201)
  const created = response.json() as CreatedApiKey
  t.equal(response.headers.location, `/api/v1/api-keys/${created.id}`)
  t.same(Object.keys(created).sort(), [...PUBLIC_FIELDS, 'key'].sort())
  t.match(created.id, /^key_/)
  t.match(created.key, /^bpk_[A-Za-z0-9_-]{43,}$/, 'bpk_ and at least 43 base64url characters (256 bits)')
  t.match(created, { name: 'deploy bot', orgId, createdBy: owner.userId, lastUsedAt: null })
  t.same([...created.scopes].sort(), ['orgs:read', 'projects:read'])
  t.equal(Date.parse(created.expiresAt ?? ''), Date.parse(expiresAt), 'expiresAt as requested')
  t.ok(created.key.startsWith(created.prefix), 'the prefix is the start of the key')
  t.ok(created.prefix.length <= 12, `the prefix is short (${created.prefix})`)
  const secretPart = created.key.slice('bpk_'.length)

  const second = await createApiKey(app, owner, orgId, ['orgs:read'])
  t.not(second.key, created.key, 'keys are random')
  t.not(second.key.slice(0, 20), created.key.slice(0, 20))

  const listed = await call(owner, 'GET', `/api-keys?orgId=${orgId}`)
  t.equal(listed.statusCode, 200)
  t.notOk(listed.body.includes(created.key) || listed.body.includes(secretPart), 'the list does not contain the key')
  t.notOk(/hash/i.test(listed.body), 'nor a hash')
  const entry = (listed.json().data as Record<string, unknown>[]).find((row) => row.id === created.id)
  t.ok(entry, 'the key is listed')
  t.same(Object.keys(entry ?? {}).sort(), PUBLIC_FIELDS, 'with exactly its public fields')
  t.match(entry, {
    prefix: created.prefix,
    scopes: created.scopes,
    createdAt: created.createdAt,
    expiresAt: created.expiresAt,
    lastUsedAt: null,
  })

  const [row] = await app.db.select().from(apiKeys).where(eq(apiKeys.id, created.id))
  t.ok(row, 'stored')
  t.not(row?.keyHash, created.key, 'the stored value is not the key')
  t.ok(row?.keyHash && row.keyHash.length >= 32, 'a digest is stored')
  const stored = JSON.stringify(row)
  t.notOk(stored.includes(secretPart), 'no column contains the key (or its secret part)')
  t.notOk(stored.includes(secretPart.slice(0, 20)), 'not even a long piece of it')

  // Using the key is recorded (at most once a minute) and shows in the list.
  t.equal((await me(app, created.key)).statusCode, 200)
  let lastUsedAt: string | null = null
  for (let i = 0; i < 40 && !lastUsedAt; i++) {
    const found = (await listKeys(owner, orgId)).find((key) => key.id === created.id)
    lastUsedAt = (found?.lastUsedAt as string | null) ?? null
    if (!lastUsedAt) await new Promise((resolve) => setTimeout(resolve, 50))
  }
  t.ok(lastUsedAt, 'lastUsedAt is set after use')
  t.ok(Date.parse(lastUsedAt ?? '') <= Date.now() + 1000, 'and not in the future')
})

t.test('a key authenticates as its creator, within its org only', async (t) => {
  const owner = await account(app)
  const orgId = await createOrg(app, owner, 'Keyed')
  await createOrg(app, owner, 'Other org of the same user')
  const key = await createApiKey(app, owner, orgId, ['orgs:read', 'audit:read'])

  const whoami = await me(app, key.key)
  t.equal(whoami.statusCode, 200)
  const profile = whoami.json()
  t.equal(profile.authenticatedVia, 'api-key')
  t.equal(profile.user.id, owner.userId)
  t.same([...profile.scopes].sort(), ['audit:read', 'orgs:read'])
  t.same(
    profile.memberships.map((m: { orgId: string; role: string }) => [m.orgId, m.role]),
    [[orgId, 'owner']],
    'only its own org',
  )

  t.equal((await call(withKey(key), 'GET', `/orgs/${orgId}/members`)).statusCode, 200, 'members of its org')
  t.equal((await call(withKey(key), 'GET', `/orgs/${orgId}/audit-log`)).statusCode, 200, 'audit of its org')
  assertProblem(
    t,
    await call(withKey(key), 'GET', `/orgs/${owner.personalOrgId}/members`),
    404,
    'ORG_NOT_FOUND',
    "the creator's personal org",
  )
  const orgs = await call(withKey(key), 'GET', '/orgs')
  t.equal(orgs.statusCode, 200)
  t.same(
    orgs.json().data.map((org: { id: string }) => org.id),
    [orgId],
    'GET /orgs shows only its org',
  )
})

t.test('revoking a key takes effect on the next request', async (t) => {
  const owner = await account(app)
  const key = await createApiKey(app, owner, owner.personalOrgId, ['orgs:read'])
  t.equal((await me(app, key.key)).statusCode, 200, 'works before')
  const revoked = await call(owner, 'DELETE', `/api-keys/${key.id}`)
  t.equal(revoked.statusCode, 204)
  t.equal(revoked.body, '')
  assertInvalidToken(t, await me(app, key.key), 'refused right after')
  assertInvalidToken(t, await call(withKey(key), 'GET', `/orgs/${owner.personalOrgId}/members`))
  t.notOk(
    (await listKeys(owner, owner.personalOrgId)).some((row) => row.id === key.id),
    'gone from the list',
  )
  assertProblem(t, await call(owner, 'DELETE', `/api-keys/${key.id}`), 404, 'API_KEY_NOT_FOUND', 'revoked twice')
})

t.test('an expired key is refused', async (t) => {
  const owner = await account(app)
  // Expiring on its own, 1.5 s from now.
  const shortLived = await createApiKey(app, owner, owner.personalOrgId, ['orgs:read'], {
    expiresAt: new Date(Date.now() + 1500).toISOString(),
  })
  t.equal((await me(app, shortLived.key)).statusCode, 200, 'works before it expires')
  await new Promise((resolve) => setTimeout(resolve, Date.parse(shortLived.expiresAt ?? '') - Date.now() + 50))
  assertInvalidToken(t, await me(app, shortLived.key), 'refused once expired')

  // Expired in the database.
  const key = await createApiKey(app, owner, owner.personalOrgId, ['orgs:read'], {
    expiresAt: new Date(Date.now() + 3600_000).toISOString(),
  })
  t.equal((await me(app, key.key)).statusCode, 200)
  await app.db
    .update(apiKeys)
    .set({ expiresAt: new Date(Date.now() - 1000) })
    .where(eq(apiKeys.id, key.id))
  assertInvalidToken(t, await me(app, key.key), 'refused after expires_at passed')
})

t.test('a key cannot manage API keys or organizations', async (t) => {
  const owner = await account(app)
  const other = await account(app)
  const orgId = await createOrg(app, owner)
  await addMember(app, owner, orgId, other, 'member')
  const key = await createApiKey(app, owner, orgId, [...SCOPES])
  const attempts: [Method, string, Record<string, unknown>?][] = [
    ['POST', '/api-keys', { name: 'child', orgId, scopes: ['orgs:read'] }],
    ['GET', `/api-keys?orgId=${orgId}`],
    ['DELETE', `/api-keys/${key.id}`],
    ['POST', '/orgs', { name: 'made by a key' }],
    ['POST', `/orgs/${orgId}/members`, { email: owner.email, role: 'member' }],
    ['PATCH', `/orgs/${orgId}/members/${other.userId}`, { role: 'admin' }],
    ['DELETE', `/orgs/${orgId}/members/${other.userId}`],
    ['DELETE', `/orgs/${orgId}/members/${owner.userId}`],
  ]
  for (const [method, url, payload] of attempts) {
    assertProblem(t, await call(withKey(key), method, url, payload), 403, 'USER_SESSION_REQUIRED', `${method} ${url}`)
  }
  t.equal((await me(app, key.key)).statusCode, 200, 'the key still works (it did not revoke itself)')
  t.equal((await listKeys(owner, orgId)).length, 1, 'it created no key')
  const members = await call(owner, 'GET', `/orgs/${orgId}/members`)
  t.same(
    members
      .json()
      .data.map((m: { userId: string; role: string }) => [m.userId, m.role])
      .sort(),
    [
      [owner.userId, 'owner'],
      [other.userId, 'member'],
    ].sort(),
    'memberships unchanged',
  )
  t.equal((await call(owner, 'GET', '/orgs')).json().data.length, 2, 'no org was created')
})

t.test('scopes limit what a key may read', async (t) => {
  const owner = await account(app)
  const orgId = await createOrg(app, owner)
  const narrow = await createApiKey(app, owner, orgId, ['projects:read'])
  const reader = await createApiKey(app, owner, orgId, ['orgs:read'])
  const auditor = await createApiKey(app, owner, orgId, ['audit:read'])

  assertProblem(t, await call(withKey(narrow), 'GET', `/orgs/${orgId}/members`), 403, 'INSUFFICIENT_SCOPE', 'members')
  assertProblem(t, await call(withKey(narrow), 'GET', '/orgs'), 403, 'INSUFFICIENT_SCOPE', 'orgs')
  assertProblem(t, await call(withKey(narrow), 'GET', `/orgs/${orgId}/audit-log`), 403, 'INSUFFICIENT_SCOPE', 'audit')
  assertProblem(t, await call(withKey(reader), 'GET', `/orgs/${orgId}/audit-log`), 403, 'INSUFFICIENT_SCOPE', 'audit')
  const members = await call(withKey(reader), 'GET', `/orgs/${orgId}/members`)
  t.equal(members.statusCode, 200, 'orgs:read lists members')
  t.same(
    members.json().data.map((m: { userId: string }) => m.userId),
    [owner.userId],
  )
  t.equal((await call(withKey(auditor), 'GET', `/orgs/${orgId}/audit-log`)).statusCode, 200, 'audit:read reads the log')
  assertProblem(t, await call(withKey(auditor), 'GET', `/orgs/${orgId}/members`), 403, 'INSUFFICIENT_SCOPE')
})

t.test("a key's power follows its creator's current role", async (t) => {
  const owner = await account(app)
  const creator = await account(app)
  const orgId = await createOrg(app, owner)
  await addMember(app, owner, orgId, creator, 'admin')
  const key = await createApiKey(app, creator, orgId, ['orgs:read', 'audit:read'])
  t.equal((await call(withKey(key), 'GET', `/orgs/${orgId}/audit-log`)).statusCode, 200, 'an admin key reads audit')

  t.equal((await call(owner, 'PATCH', `/orgs/${orgId}/members/${creator.userId}`, { role: 'viewer' })).statusCode, 200)
  assertProblem(
    t,
    await call(withKey(key), 'GET', `/orgs/${orgId}/audit-log`),
    403,
    'INSUFFICIENT_ROLE',
    'after the creator is demoted to viewer, even with audit:read',
  )
  t.equal((await call(withKey(key), 'GET', `/orgs/${orgId}/members`)).statusCode, 200, 'a viewer may still list')
  t.equal((await me(app, key.key)).json().memberships[0]?.role, 'viewer', "the key reports the creator's new role")

  t.equal((await call(owner, 'DELETE', `/orgs/${orgId}/members/${creator.userId}`)).statusCode, 204)
  assertInvalidToken(t, await me(app, key.key), 'after the creator left the org')
  assertInvalidToken(t, await call(withKey(key), 'GET', `/orgs/${orgId}/members`))
})

t.test('keys across tenants and roles: 404 to outsiders, admins see all, members their own', async (t) => {
  const owner = await account(app)
  const admin = await account(app)
  const member = await account(app)
  const foreignAdmin = await account(app)
  const orgId = await createOrg(app, owner, 'Home')
  await addMember(app, owner, orgId, admin, 'admin')
  await addMember(app, owner, orgId, member, 'member')
  const foreignOrg = await createOrg(app, foreignAdmin, 'Elsewhere')
  const ownerKey = await createApiKey(app, owner, orgId, ['orgs:read'])
  const adminKey = await createApiKey(app, admin, orgId, ['orgs:read'])
  const memberKey = await createApiKey(app, member, orgId, ['orgs:read'])
  const foreignKey = await createApiKey(app, foreignAdmin, foreignOrg, ['orgs:read'])

  // Another org's admin: the keys of this org do not exist for them.
  const foreignRevoke = await call(foreignAdmin, 'DELETE', `/api-keys/${ownerKey.id}`)
  assertProblem(t, foreignRevoke, 404, 'API_KEY_NOT_FOUND', "revoking another org's key")
  const nonexistent = await call(foreignAdmin, 'DELETE', '/api-keys/key_00000000000000000000000000000000')
  t.same(
    { ...foreignRevoke.json(), requestId: null },
    { ...nonexistent.json(), requestId: null },
    'the same answer as for a key that does not exist',
  )
  assertProblem(t, await call(foreignAdmin, 'GET', `/api-keys?orgId=${orgId}`), 404, 'ORG_NOT_FOUND', 'listing them')
  t.same(
    (await listKeys(foreignAdmin, foreignOrg)).map((key) => key.id),
    [foreignKey.id],
    'their own org lists only its own key',
  )
  assertProblem(t, await call(owner, 'DELETE', `/api-keys/${foreignKey.id}`), 404, 'API_KEY_NOT_FOUND', 'and back')
  t.equal((await me(app, ownerKey.key)).statusCode, 200, 'the key survived')

  const all = [ownerKey.id, adminKey.id, memberKey.id].sort()
  t.same((await listKeys(owner, orgId)).map((key) => key.id).sort(), all, 'the owner sees every key')
  t.same((await listKeys(admin, orgId)).map((key) => key.id).sort(), all, 'an admin sees every key')
  t.same(
    (await listKeys(member, orgId)).map((key) => key.id),
    [memberKey.id],
    'a member sees only their own',
  )
  const { items } = await walkPages<{ id: string }>(t, (cursor) =>
    call(admin, 'GET', `/api-keys?orgId=${orgId}&limit=1${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`),
  )
  t.same(
    items.map((key) => key.id),
    [...all].reverse(),
    'paged one at a time: each key once, newest first',
  )

  assertProblem(
    t,
    await call(member, 'DELETE', `/api-keys/${adminKey.id}`),
    403,
    'INSUFFICIENT_ROLE',
    "member revokes admin's key",
  )
  t.equal((await me(app, adminKey.key)).statusCode, 200, 'still live')
  t.equal((await call(admin, 'DELETE', `/api-keys/${memberKey.id}`)).statusCode, 204, "an admin revokes a member's key")
  assertInvalidToken(t, await me(app, memberKey.key))
  t.equal((await call(admin, 'DELETE', `/api-keys/${adminKey.id}`)).statusCode, 204, 'a creator revokes their own key')
})

t.test('validation of new keys', async (t) => {
  const owner = await account(app)
  const stranger = await account(app)
  const orgId = await createOrg(app, owner)
  const create = (payload: Record<string, unknown>) => call(owner, 'POST', '/api-keys', payload)
  const valid = { name: 'k', orgId, scopes: ['orgs:read'] }

  const unknownScope = await create({ ...valid, scopes: ['orgs:read', 'root'] })
  assertProblem(t, unknownScope, 400, 'VALIDATION_FAILED', 'unknown scope')
  t.match(unknownScope.json().errors, [{ path: /^\/body\/scopes/ }])
  assertProblem(t, await create({ ...valid, scopes: [] }), 400, 'VALIDATION_FAILED', 'no scopes')
  assertProblem(t, await create({ ...valid, admin: true }), 400, 'VALIDATION_FAILED', 'unknown field')
  assertProblem(t, await create({ ...valid, expiresAt: 'tomorrow' }), 400, 'VALIDATION_FAILED', 'not a date-time')
  const past = await create({ ...valid, expiresAt: new Date(Date.now() - 60_000).toISOString() })
  assertProblem(t, past, 400, 'INVALID_EXPIRY', 'expiresAt in the past')
  t.match(past.json().errors, [{ path: '/body/expiresAt' }])
  assertProblem(
    t,
    await create({ ...valid, orgId: stranger.personalOrgId }),
    404,
    'ORG_NOT_FOUND',
    "someone else's org",
  )
  assertProblem(t, await create({ ...valid, orgId: 'org_nope' }), 404, 'ORG_NOT_FOUND', 'an org that does not exist')
  t.equal((await listKeys(owner, orgId)).length, 0, 'none of these created a key')
  t.equal((await listKeys(stranger, stranger.personalOrgId)).length, 0, 'nor in the other org')
})
