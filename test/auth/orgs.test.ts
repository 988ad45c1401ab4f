import type { LightMyRequestResponse } from 'fastify'
import t from 'tap'
import { buildTestApp } from '../helper.js'
import {
  type Account,
  account,
  addMember,
  assertProblem,
  b64url,
  createOrg,
  me,
  type Role,
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

interface Member {
  userId: string
  email: string
  name: string | null
  role: Role
  createdAt: string
}

interface AuditEntry {
  id: string
  orgId: string | null
  action: string
  actorUserId: string | null
  actorKeyId: string | null
  targetType: string | null
  targetId: string | null
  ip: string | null
  metadata: Record<string, unknown>
  createdAt: string
}

async function members(who: Account, orgId: string): Promise<Member[]> {
  const response = await call(who, 'GET', `/orgs/${orgId}/members?limit=100`)
  if (response.statusCode !== 200) throw new Error(`members answered ${response.statusCode}: ${response.body}`)
  return response.json().data
}

async function roleOf(who: Account, orgId: string, userId: string): Promise<Role | undefined> {
  return (await members(who, orgId)).find((member) => member.userId === userId)?.role
}

async function auditLog(who: Account, orgId: string): Promise<AuditEntry[]> {
  const response = await call(who, 'GET', `/orgs/${orgId}/audit-log?limit=100`)
  if (response.statusCode !== 200) throw new Error(`audit log answered ${response.statusCode}: ${response.body}`)
  return response.json().data
}

/** A problem body without its per-request id, to compare two refusals. */
function withoutRequestId(response: LightMyRequestResponse) {
  const { requestId: _requestId, ...rest } = response.json()
  return { status: response.statusCode, ...rest }
}

t.test('create an org: 201 with Location, and the caller is its owner', async (t) => {
  const alice = await account(app)
  const response = await call(alice, 'POST', '/orgs', { name: 'Acme Inc' })
  t.equal(response.statusCode, 201)
  const org = response.json()
  t.match(org, { id: /^org_/, name: 'Acme Inc', personal: false, role: 'owner', createdAt: String })
  t.equal(response.headers.location, `/api/v1/orgs/${org.id}`)

  const memberships = (await me(app, alice.accessToken)).json().memberships
  t.match(
    memberships.find((membership: { orgId: string }) => membership.orgId === org.id),
    { role: 'owner', personal: false, orgName: 'Acme Inc' },
    'GET /auth/me shows the new org with the owner role',
  )
  t.same(
    (await members(alice, org.id)).map((member) => [member.userId, member.role]),
    [[alice.userId, 'owner']],
    'the creator is the only member, as owner',
  )

  assertProblem(t, await call(alice, 'POST', '/orgs', { name: '' }), 400, 'VALIDATION_FAILED', 'empty name')
  assertProblem(t, await call(alice, 'POST', '/orgs', { name: 'X', personal: true }), 400, 'VALIDATION_FAILED')
  assertProblem(t, await call({ headers: { authorization: '' } }, 'POST', '/orgs', { name: 'X' }), 401, 'UNAUTHORIZED')
})

t.test('list orgs: personal and created ones, walked one per page', async (t) => {
  const user = await account(app)
  const stranger = await account(app)
  const created = [
    await createOrg(app, user, 'First'),
    await createOrg(app, user, 'Second'),
    await createOrg(app, user, 'Third'),
  ]
  const strangersOrg = await createOrg(app, stranger, 'Not yours')

  const { items, pages } = await walkPages<{ id: string; personal: boolean; role: Role; name: string }>(t, (cursor) =>
    call(user, 'GET', `/orgs?limit=1${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`),
  )
  t.equal(pages.length, 4, 'four pages')
  t.ok(
    pages.every((page) => page.length === 1),
    'one org per page',
  )
  const ids = items.map((org) => org.id)
  t.equal(new Set(ids).size, ids.length, 'no duplicates')
  t.same([...ids].sort(), [user.personalOrgId, ...created].sort(), 'exactly the personal org and the created ones')
  t.notOk(ids.includes(strangersOrg), "another user's org is not listed")
  t.same(
    items.filter((org) => org.personal).map((org) => org.id),
    [user.personalOrgId],
    'only the personal org is personal',
  )
  t.ok(
    items.every((org) => org.role === 'owner'),
    'owner of all of them',
  )

  const all = await call(user, 'GET', '/orgs')
  t.equal(all.statusCode, 200)
  t.equal(all.json().data.length, 4)
  t.equal(all.json().nextCursor, null)
  assertProblem(t, await call(user, 'GET', '/orgs?cursor=garbage!!'), 400, 'INVALID_CURSOR')
})

t.test('members: add an existing user by email, change their role, remove them', async (t) => {
  const owner = await account(app)
  const newcomer = await account(app)
  const orgId = await createOrg(app, owner)

  // Emails are matched as normalised: the upper-case form finds the account.
  const added = await call(owner, 'POST', `/orgs/${orgId}/members`, {
    email: newcomer.email.toUpperCase(),
    role: 'member',
  })
  t.equal(added.statusCode, 201, 'added')
  t.match(added.json(), { userId: newcomer.userId, email: newcomer.email, role: 'member', createdAt: String })
  t.equal(added.headers.location, `/api/v1/orgs/${orgId}/members/${newcomer.userId}`)
  t.equal(await roleOf(owner, orgId, newcomer.userId), 'member', 'listed as member')
  t.match(
    (await me(app, newcomer.accessToken)).json().memberships,
    [{ orgId: String }, { orgId: String }],
    'the newcomer now has two memberships',
  )

  assertProblem(
    t,
    await call(owner, 'POST', `/orgs/${orgId}/members`, { email: 'nobody-at-all@example.com', role: 'member' }),
    404,
    'USER_NOT_FOUND',
    'unknown email',
  )
  assertProblem(
    t,
    await call(owner, 'POST', `/orgs/${orgId}/members`, { email: newcomer.email, role: 'viewer' }),
    409,
    'ALREADY_MEMBER',
    'added twice',
  )
  t.equal(await roleOf(owner, orgId, newcomer.userId), 'member', 'a refused duplicate changes nothing')
  assertProblem(
    t,
    await call(owner, 'POST', `/orgs/${orgId}/members`, { email: newcomer.email, role: 'superuser' }),
    400,
    'VALIDATION_FAILED',
    'unknown role',
  )

  const changed = await call(owner, 'PATCH', `/orgs/${orgId}/members/${newcomer.userId}`, { role: 'viewer' })
  t.equal(changed.statusCode, 200)
  t.match(changed.json(), { userId: newcomer.userId, role: 'viewer' })
  t.equal(await roleOf(owner, orgId, newcomer.userId), 'viewer', 'the new role is stored')
  assertProblem(
    t,
    await call(owner, 'PATCH', `/orgs/${orgId}/members/usr_doesnotexist`, { role: 'viewer' }),
    404,
    'MEMBER_NOT_FOUND',
  )

  const removed = await call(owner, 'DELETE', `/orgs/${orgId}/members/${newcomer.userId}`)
  t.equal(removed.statusCode, 204)
  t.equal(removed.body, '')
  t.equal(await roleOf(owner, orgId, newcomer.userId), undefined, 'no longer listed')
  t.notOk(
    (await me(app, newcomer.accessToken)).json().memberships.some((m: { orgId: string }) => m.orgId === orgId),
    'the org is gone from their memberships',
  )
  assertProblem(t, await call(newcomer, 'GET', `/orgs/${orgId}/members`), 404, 'ORG_NOT_FOUND', 'removed: 404')
  assertProblem(t, await call(owner, 'DELETE', `/orgs/${orgId}/members/${newcomer.userId}`), 404, 'MEMBER_NOT_FOUND')

  // Member lists page too.
  await addMember(app, owner, orgId, newcomer, 'member')
  const third = await account(app)
  await addMember(app, owner, orgId, third, 'viewer')
  const { items } = await walkPages<Member>(t, (cursor) =>
    call(owner, 'GET', `/orgs/${orgId}/members?limit=1${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`),
  )
  t.same(
    items.map((member) => member.userId).sort(),
    [owner.userId, newcomer.userId, third.userId].sort(),
    'members walked one per page, each once',
  )
})

t.test('roles matrix: who may do what in an org, and outsiders see 404', async (t) => {
  const [owner, admin, member, viewer, outsider, target, joinerA, joinerB, stranger] = await Promise.all(
    Array.from({ length: 9 }, () => account(app)),
  )
  if (!owner || !admin || !member || !viewer || !outsider || !target || !joinerA || !joinerB || !stranger) {
    throw new Error('accounts')
  }
  const orgId = await createOrg(app, owner, 'Matrix')
  await addMember(app, owner, orgId, admin, 'admin')
  await addMember(app, owner, orgId, member, 'member')
  await addMember(app, owner, orgId, viewer, 'viewer')
  await addMember(app, owner, orgId, target, 'member')
  await createOrg(app, outsider, "Outsider's own org")

  const expect = async (
    who: Account,
    label: string,
    method: Method,
    url: string,
    payload: Record<string, unknown> | undefined,
    status: number,
    code?: string,
  ) => {
    const response = await call(who, method, url, payload)
    if (code) assertProblem(t, response, status, code, label)
    else t.equal(response.statusCode, status, `${label}: ${status} (${response.body.slice(0, 120)})`)
    return response
  }

  // GET members: every role.
  for (const [who, label] of [
    [owner, 'owner'],
    [admin, 'admin'],
    [member, 'member'],
    [viewer, 'viewer'],
  ] as const) {
    await expect(who, `${label} lists members`, 'GET', `/orgs/${orgId}/members`, undefined, 200)
  }
  // GET audit-log: admins and owners.
  await expect(owner, 'owner reads the audit log', 'GET', `/orgs/${orgId}/audit-log`, undefined, 200)
  await expect(admin, 'admin reads the audit log', 'GET', `/orgs/${orgId}/audit-log`, undefined, 200)
  await expect(member, 'member reads audit', 'GET', `/orgs/${orgId}/audit-log`, undefined, 403, 'INSUFFICIENT_ROLE')
  await expect(viewer, 'viewer reads audit', 'GET', `/orgs/${orgId}/audit-log`, undefined, 403, 'INSUFFICIENT_ROLE')

  // POST members.
  const add = (email: string, role: Role = 'member') => ({ email, role })
  await expect(owner, 'owner adds', 'POST', `/orgs/${orgId}/members`, add(joinerA.email), 201)
  await expect(admin, 'admin adds', 'POST', `/orgs/${orgId}/members`, add(joinerB.email), 201)
  for (const [who, label] of [
    [member, 'member'],
    [viewer, 'viewer'],
  ] as const) {
    await expect(who, `${label} adds`, 'POST', `/orgs/${orgId}/members`, add(stranger.email), 403, 'INSUFFICIENT_ROLE')
    await expect(
      who,
      `${label} adds as viewer`,
      'POST',
      `/orgs/${orgId}/members`,
      add(stranger.email, 'viewer'),
      403,
      'INSUFFICIENT_ROLE',
    )
    // The role check comes first: no probing which emails have accounts.
    await expect(
      who,
      `${label} adds an unknown email`,
      'POST',
      `/orgs/${orgId}/members`,
      add('no-such-user@example.com'),
      403,
      'INSUFFICIENT_ROLE',
    )
  }

  // PATCH members.
  await expect(
    owner,
    'owner changes a role',
    'PATCH',
    `/orgs/${orgId}/members/${target.userId}`,
    { role: 'viewer' },
    200,
  )
  await expect(
    admin,
    'admin changes a role',
    'PATCH',
    `/orgs/${orgId}/members/${target.userId}`,
    { role: 'member' },
    200,
  )
  for (const [who, label] of [
    [member, 'member'],
    [viewer, 'viewer'],
  ] as const) {
    const url = `/orgs/${orgId}/members/${target.userId}`
    await expect(who, `${label} changes a role`, 'PATCH', url, { role: 'viewer' }, 403, 'INSUFFICIENT_ROLE')
    await expect(
      who,
      `${label} promotes self`,
      'PATCH',
      `/orgs/${orgId}/members/${who.userId}`,
      { role: 'admin' },
      403,
      'INSUFFICIENT_ROLE',
    )
  }

  // DELETE members (someone else).
  await expect(owner, 'owner removes', 'DELETE', `/orgs/${orgId}/members/${joinerA.userId}`, undefined, 204)
  await expect(admin, 'admin removes', 'DELETE', `/orgs/${orgId}/members/${joinerB.userId}`, undefined, 204)
  for (const [who, label] of [
    [member, 'member'],
    [viewer, 'viewer'],
  ] as const) {
    const url = `/orgs/${orgId}/members/${target.userId}`
    await expect(who, `${label} removes another`, 'DELETE', url, undefined, 403, 'INSUFFICIENT_ROLE')
  }

  // Admins manage members and admins, never ownership.
  await expect(
    admin,
    'admin adds an owner',
    'POST',
    `/orgs/${orgId}/members`,
    add(stranger.email, 'owner'),
    403,
    'INSUFFICIENT_ROLE',
  )
  await expect(
    admin,
    'admin grants owner',
    'PATCH',
    `/orgs/${orgId}/members/${target.userId}`,
    { role: 'owner' },
    403,
    'INSUFFICIENT_ROLE',
  )
  await expect(
    admin,
    'admin promotes self to owner',
    'PATCH',
    `/orgs/${orgId}/members/${admin.userId}`,
    { role: 'owner' },
    403,
    'INSUFFICIENT_ROLE',
  )
  await expect(
    admin,
    'admin demotes the owner',
    'PATCH',
    `/orgs/${orgId}/members/${owner.userId}`,
    { role: 'admin' },
    403,
    'INSUFFICIENT_ROLE',
  )
  await expect(
    admin,
    'admin removes the owner',
    'DELETE',
    `/orgs/${orgId}/members/${owner.userId}`,
    undefined,
    403,
    'INSUFFICIENT_ROLE',
  )
  await expect(
    owner,
    'owner makes target admin',
    'PATCH',
    `/orgs/${orgId}/members/${target.userId}`,
    { role: 'admin' },
    200,
  )
  await expect(
    admin,
    'admin demotes an admin',
    'PATCH',
    `/orgs/${orgId}/members/${target.userId}`,
    { role: 'member' },
    200,
  )
  await expect(owner, 'owner adds an owner', 'POST', `/orgs/${orgId}/members`, add(stranger.email, 'owner'), 201)

  const roles = new Map((await members(owner, orgId)).map((m) => [m.userId, m.role]))
  t.same(
    Object.fromEntries(roles),
    {
      [owner.userId]: 'owner',
      [admin.userId]: 'admin',
      [member.userId]: 'member',
      [viewer.userId]: 'viewer',
      [target.userId]: 'member',
      [stranger.userId]: 'owner',
    },
    'refused requests changed nothing; allowed ones took effect',
  )

  // A user of another org gets 404 on every route of this org, never 403, whatever the input.
  const missingOrg = 'org_00000000000000000000000000000000'
  const routes: [Method, string, Record<string, unknown> | undefined][] = [
    ['GET', 'members', undefined],
    ['POST', 'members', add(outsider.email)],
    ['POST', 'members', add('no-such-user@example.com')],
    ['POST', 'members', add(stranger.email, 'owner')],
    ['PATCH', `members/${target.userId}`, { role: 'viewer' }],
    ['PATCH', `members/${outsider.userId}`, { role: 'owner' }],
    ['DELETE', `members/${target.userId}`, undefined],
    ['DELETE', `members/${outsider.userId}`, undefined],
    ['GET', 'audit-log', undefined],
  ]
  for (const [method, path, payload] of routes) {
    const label = `outsider ${method} ${path}`
    const response = await expect(outsider, label, method, `/orgs/${orgId}/${path}`, payload, 404, 'ORG_NOT_FOUND')
    const missing = await call(outsider, method, `/orgs/${missingOrg}/${path}`, payload)
    t.same(
      withoutRequestId(response),
      withoutRequestId(missing),
      `${label}: same answer as for an org that does not exist`,
    )
  }
  t.same(
    Object.fromEntries((await members(owner, orgId)).map((m) => [m.userId, m.role])),
    Object.fromEntries(roles),
    "the outsider's attempts changed nothing",
  )
})

t.test('the last owner can be neither demoted nor removed, until there is another', async (t) => {
  const first = await account(app)
  const second = await account(app)
  const orgId = await createOrg(app, first)

  assertProblem(
    t,
    await call(first, 'PATCH', `/orgs/${orgId}/members/${first.userId}`, { role: 'admin' }),
    409,
    'LAST_OWNER',
    'demote the last owner',
  )
  assertProblem(t, await call(first, 'DELETE', `/orgs/${orgId}/members/${first.userId}`), 409, 'LAST_OWNER', 'leave')
  t.equal(await roleOf(first, orgId, first.userId), 'owner', 'still the owner')

  await addMember(app, first, orgId, second, 'owner')
  const demoted = await call(first, 'PATCH', `/orgs/${orgId}/members/${first.userId}`, { role: 'admin' })
  t.equal(demoted.statusCode, 200, 'with a second owner, the first may step down')
  t.equal(demoted.json().role, 'admin')
  assertProblem(
    t,
    await call(second, 'PATCH', `/orgs/${orgId}/members/${second.userId}`, { role: 'member' }),
    409,
    'LAST_OWNER',
    'now the second one is the last owner',
  )
  t.equal((await call(second, 'PATCH', `/orgs/${orgId}/members/${first.userId}`, { role: 'owner' })).statusCode, 200)
  t.equal((await call(first, 'DELETE', `/orgs/${orgId}/members/${first.userId}`)).statusCode, 204, 'an owner leaves')
  assertProblem(t, await call(second, 'DELETE', `/orgs/${orgId}/members/${second.userId}`), 409, 'LAST_OWNER')
  t.same(
    (await members(second, orgId)).map((m) => [m.userId, m.role]),
    [[second.userId, 'owner']],
  )
})

t.test('two owners demoting each other at once leave exactly one owner', async (t) => {
  const a = await account(app)
  const b = await account(app)
  const orgId = await createOrg(app, a)
  await addMember(app, a, orgId, b, 'owner')
  for (let round = 1; round <= 5; round++) {
    const [byA, byB] = await Promise.all([
      call(a, 'PATCH', `/orgs/${orgId}/members/${b.userId}`, { role: 'admin' }),
      call(b, 'PATCH', `/orgs/${orgId}/members/${a.userId}`, { role: 'admin' }),
    ])
    const statuses = [byA.statusCode, byB.statusCode]
    t.equal(statuses.filter((status) => status === 200).length, 1, `round ${round}: exactly one demotion wins`)
    const loser = byA.statusCode === 200 ? byB : byA
    // The loser either saw one owner left (409), or was already demoted when it was authorised (403).
    t.ok(
      (loser.statusCode === 409 && loser.json().code === 'LAST_OWNER') ||
        (loser.statusCode === 403 && loser.json().code === 'INSUFFICIENT_ROLE'),
      `round ${round}: the other is refused (${loser.statusCode} ${loser.body.slice(0, 100)})`,
    )
    const owners = (await members(a, orgId)).filter((m) => m.role === 'owner')
    t.equal(owners.length, 1, `round ${round}: one owner left`)
    const [remaining] = owners
    const survivor = remaining?.userId === a.userId ? a : b
    const other = survivor === a ? b : a
    t.equal(
      (await call(survivor, 'PATCH', `/orgs/${orgId}/members/${other.userId}`, { role: 'owner' })).statusCode,
      200,
      'restore two owners',
    )
  }
})

t.test('a member can leave an org, but nobody can leave their personal org', async (t) => {
  const owner = await account(app)
  const leaver = await account(app)
  const orgId = await createOrg(app, owner)
  await addMember(app, owner, orgId, leaver, 'viewer')

  const left = await call(leaver, 'DELETE', `/orgs/${orgId}/members/${leaver.userId}`)
  t.equal(left.statusCode, 204, 'a viewer leaves')
  t.equal(await roleOf(owner, orgId, leaver.userId), undefined)
  assertProblem(t, await call(leaver, 'GET', `/orgs/${orgId}/members`), 404, 'ORG_NOT_FOUND', 'gone for them')

  assertProblem(
    t,
    await call(leaver, 'DELETE', `/orgs/${leaver.personalOrgId}/members/${leaver.userId}`),
    409,
    'PERSONAL_ORG',
    'leaving the personal org',
  )
  // Even with a co-owner, the personal org keeps its person.
  await addMember(app, leaver, leaver.personalOrgId, owner, 'owner')
  assertProblem(
    t,
    await call(leaver, 'DELETE', `/orgs/${leaver.personalOrgId}/members/${leaver.userId}`),
    409,
    'PERSONAL_ORG',
    'leaving the personal org that has another owner',
  )
  assertProblem(
    t,
    await call(owner, 'DELETE', `/orgs/${leaver.personalOrgId}/members/${leaver.userId}`),
    409,
    'PERSONAL_ORG',
    'a co-owner removing the person from their personal org',
  )
  t.equal(await roleOf(leaver, leaver.personalOrgId, leaver.userId), 'owner', 'still there')
})

t.test('the audit log records who did what, from where, and only admins read it', async (t) => {
  const signupAddress = uniqueAddress()
  const actor = await account(app, { address: signupAddress })
  const colleague = await account(app)
  const outsider = await account(app)

  // Sign-in events land in the personal org.
  const loginAddress = uniqueAddress()
  const failAddress = uniqueAddress()
  const login = (password: string, remoteAddress: string) =>
    app.inject({
      method: 'POST',
      url: '/api/v1/auth/login',
      remoteAddress,
      payload: { email: actor.email, password },
    })
  t.equal((await login('definitely wrong', failAddress)).statusCode, 401)
  t.equal((await login(actor.password, loginAddress)).statusCode, 200)
  const personal = await auditLog(actor, actor.personalOrgId)
  const find = (entries: AuditEntry[], action: string) => entries.find((entry) => entry.action === action)
  t.match(find(personal, 'auth.signup'), {
    orgId: actor.personalOrgId,
    actorUserId: actor.userId,
    ip: signupAddress,
  })
  t.match(find(personal, 'auth.login_failed'), {
    orgId: actor.personalOrgId,
    actorUserId: actor.userId,
    ip: failAddress,
  })
  t.match(find(personal, 'auth.login'), { orgId: actor.personalOrgId, actorUserId: actor.userId, ip: loginAddress })

  // Org events: keys and memberships.
  const orgId = await createOrg(app, actor, 'Audited')
  const address = uniqueAddress()
  const key = await call(actor, 'POST', '/api-keys', { name: 'ci', orgId, scopes: ['orgs:read'] }, address)
  t.equal(key.statusCode, 201)
  const keyId = key.json().id
  t.equal((await call(actor, 'DELETE', `/api-keys/${keyId}`, undefined, address)).statusCode, 204)
  const added = await call(actor, 'POST', `/orgs/${orgId}/members`, { email: colleague.email, role: 'member' }, address)
  t.equal(added.statusCode, 201)
  const patched = await call(actor, 'PATCH', `/orgs/${orgId}/members/${colleague.userId}`, { role: 'admin' }, address)
  t.equal(patched.statusCode, 200)

  // The colleague, now admin, reads the log; then is demoted to member and no longer can.
  const entries = await auditLog(colleague, orgId)
  const common = { orgId, actorUserId: actor.userId, ip: address }
  t.match(find(entries, 'api_key.created'), { ...common, targetType: 'api_key', targetId: keyId })
  t.match(find(entries, 'api_key.revoked'), { ...common, targetType: 'api_key', targetId: keyId })
  t.match(find(entries, 'member.added'), { ...common, targetType: 'user', targetId: colleague.userId })
  t.match(find(entries, 'member.role_changed'), {
    ...common,
    targetId: colleague.userId,
    metadata: { from: 'member', to: 'admin' },
  })
  t.equal(
    (await call(actor, 'PATCH', `/orgs/${orgId}/members/${colleague.userId}`, { role: 'member' })).statusCode,
    200,
  )
  assertProblem(t, await call(colleague, 'GET', `/orgs/${orgId}/audit-log`), 403, 'INSUFFICIENT_ROLE', 'member reads')
  assertProblem(t, await call(outsider, 'GET', `/orgs/${orgId}/audit-log`), 404, 'ORG_NOT_FOUND', 'outsider reads')
  assertProblem(
    t,
    await call(colleague, 'GET', `/orgs/${actor.personalOrgId}/audit-log`),
    404,
    'ORG_NOT_FOUND',
    "someone else's personal org",
  )

  t.equal(
    (await call(actor, 'DELETE', `/orgs/${orgId}/members/${colleague.userId}`, undefined, address)).statusCode,
    204,
  )
  const all = await auditLog(actor, orgId)
  t.match(find(all, 'member.removed'), { ...common, targetType: 'user', targetId: colleague.userId })
  t.ok(
    all.every((entry) => entry.orgId === orgId),
    'only this org',
  )

  // Newest first, and limit=2 pages walk exactly the same entries.
  const ids = all.map((entry) => entry.id)
  t.ok(ids.length >= 7, `enough entries to page (${ids.length})`)
  t.same(ids, [...ids].sort().reverse(), 'newest first (ids are time-ordered)')
  t.ok(
    all.every((entry, i) => i === 0 || Date.parse(entry.createdAt) <= Date.parse(all[i - 1]?.createdAt ?? '')),
    'createdAt never increases down the list',
  )
  t.equal(all[0]?.action, 'member.removed', 'the latest event comes first')
  const { items, pages } = await walkPages<AuditEntry>(t, (cursor) =>
    call(actor, 'GET', `/orgs/${orgId}/audit-log?limit=2${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`),
  )
  t.ok(
    pages.every((page) => page.length <= 2),
    'at most 2 per page',
  )
  t.equal(pages.length, Math.ceil(ids.length / 2), 'as many pages as needed, no more')
  t.same(
    items.map((entry) => entry.id),
    ids,
    'the pages, in order, are the whole log without duplicates',
  )

  for (const cursor of ['not-a-cursor', b64url({ id: 'x' }), b64url([1, 2]), '%%%']) {
    assertProblem(
      t,
      await call(actor, 'GET', `/orgs/${orgId}/audit-log?limit=2&cursor=${encodeURIComponent(cursor)}`),
      400,
      'INVALID_CURSOR',
      `cursor ${cursor}`,
    )
  }
})
