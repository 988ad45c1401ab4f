import { eq, sql } from 'drizzle-orm'
import type { LightMyRequestResponse } from 'fastify'
import t from 'tap'
import { auditLog, outboxEvents, projects } from '../../src/db/schema/index.js'
import { buildTestApp } from '../helper.js'
import {
  type Account,
  account,
  addMember,
  assertInvalidToken,
  assertProblem,
  bearer,
  type CreatedApiKey,
  callAs,
  createApiKey,
  createOrg,
  type Method,
  type Role,
  type Test,
  uniqueAddress,
} from '../auth/support.js'
import type { Project } from './support.js'

const app = await buildTestApp(t)

type Caller = Pick<Account, 'headers'>

const call = (who: Caller, method: Method, url: string, payload?: Record<string, unknown>) =>
  callAs(app, who, method, url, payload)

/** Acts with an API key instead of a user's access token. */
const withKey = (key: CreatedApiKey): Caller => ({ headers: bearer(key.key) })

/** No Authorization header at all. */
const anonymous: Caller = { headers: {} as { authorization: string } }

/** A request with extra headers (If-Match, If-None-Match), which `callAs` does not send. */
function callWith(
  who: Caller,
  method: Method,
  url: string,
  headers: Record<string, string>,
  payload?: Record<string, unknown>,
): Promise<LightMyRequestResponse> {
  return app.inject({
    method,
    url: `/api/v1${url}`,
    headers: { ...who.headers, ...headers },
    ...(payload ? { payload } : {}),
    remoteAddress: uniqueAddress(),
  })
}

type Summary = Omit<Project, 'data'>

async function createProject(who: Caller, payload: Record<string, unknown>): Promise<Project> {
  const response = await call(who, 'POST', '/projects', payload)
  if (response.statusCode !== 201) throw new Error(`create project answered ${response.statusCode}: ${response.body}`)
  return response.json()
}

/** Every project the caller can list (optionally in one org), walked page by page to the end. */
async function listAll(who: Caller, orgId?: string): Promise<Summary[]> {
  const items: Summary[] = []
  let cursor: string | null = null
  for (let page = 0; page < 50; page++) {
    const query = new URLSearchParams({ limit: '100' })
    if (orgId) query.set('orgId', orgId)
    if (cursor) query.set('cursor', cursor)
    const response = await call(who, 'GET', `/projects?${query}`)
    if (response.statusCode !== 200) throw new Error(`list answered ${response.statusCode}: ${response.body}`)
    const body = response.json() as { data: Summary[]; nextCursor: string | null }
    items.push(...body.data)
    if (body.nextCursor === null) return items
    cursor = body.nextCursor
  }
  throw new Error('listing did not end')
}

const idsOf = (items: { id: string }[]) => items.map((item) => item.id)

/**
 * The stored row exactly: every column as Drizzle reads it, plus the timestamps and the document as
 * PostgreSQL prints them (a Date keeps milliseconds only; a change could hide in the microseconds).
 */
async function storedRow(id: string) {
  const [row] = await app.db.select().from(projects).where(eq(projects.id, id))
  const [exact] = await app.db
    .select({
      createdAt: sql<string>`${projects.createdAt}::text`,
      updatedAt: sql<string>`${projects.updatedAt}::text`,
      data: sql<string>`${projects.data}::text`,
    })
    .from(projects)
    .where(eq(projects.id, id))
  return row ? { row, exact } : null
}

/** Ids of every outbox event and audit entry, to show that a refused request added none. */
async function sideEffects() {
  const events = await app.db.select({ id: outboxEvents.id }).from(outboxEvents)
  const audit = await app.db.select({ id: auditLog.id }).from(auditLog)
  return { events: events.map((row) => row.id).sort(), audit: audit.map((row) => row.id).sort() }
}

async function projectCount(orgId: string): Promise<number> {
  const rows = await app.db.select({ id: projects.id }).from(projects).where(eq(projects.orgId, orgId))
  return rows.length
}

/** A problem body without its per-request id, to compare two refusals. */
function withoutRequestId(response: LightMyRequestResponse) {
  const { requestId: _requestId, ...rest } = response.json()
  return { status: response.statusCode, ...rest }
}

t.test('another tenant gets 404 for every verb on a project, and nothing changes', async (t) => {
  const [alice, bob, carol] = await Promise.all([account(app), account(app), account(app)])
  if (!alice || !bob || !carol) throw new Error('accounts')
  const aliceOrg = await createOrg(app, alice, 'Alice Co')
  // Bob is an admin of his own tenant (Carol's org) and owner of his personal org.
  const bobOrg = await createOrg(app, carol, 'Bob Co')
  await addMember(app, carol, bobOrg, bob, 'admin')
  const bobsKey = await createApiKey(app, bob, bobOrg, ['projects:read', 'projects:write'])
  const bobsProject = await createProject(bob, { orgId: bobOrg, name: 'Bob project' })

  const target = await createProject(alice, {
    orgId: aliceOrg,
    name: 'Secret plans',
    description: 'for Alice only',
    data: { nodes: [{ id: 1, label: 'x' }], nested: { deep: true } },
  })
  const exported = (await call(alice, 'GET', `/projects/${target.id}`)).json() as Project
  const missing = await call(alice, 'GET', '/projects/prj_0000000000000000000000000000dead')
  assertProblem(t, missing, 404, 'PROJECT_NOT_FOUND', 'a project that does not exist')

  const rowBefore = await storedRow(target.id)
  t.ok(rowBefore, 'the project is stored')
  const effectsBefore = await sideEffects()
  const aliceCountBefore = await projectCount(aliceOrg)

  for (const [who, label] of [
    [bob, 'Bob (admin of another org)'],
    [withKey(bobsKey), "Bob's API key (projects:read+write)"],
  ] as const) {
    const url = `/projects/${target.id}`
    const get = await call(who, 'GET', url)
    assertProblem(t, get, 404, 'PROJECT_NOT_FOUND', `${label}: GET`)
    t.same(
      withoutRequestId(get),
      withoutRequestId(missing),
      `${label}: same answer as for a project that does not exist`,
    )
    assertProblem(
      t,
      await callWith(who, 'GET', url, { 'if-none-match': '"1"' }),
      404,
      'PROJECT_NOT_FOUND',
      `${label}: GET with the current ETag in If-None-Match (no 304)`,
    )
    assertProblem(t, await call(who, 'PATCH', url, { name: 'pwned' }), 404, 'PROJECT_NOT_FOUND', `${label}: PATCH`)
    for (const ifMatch of ['"1"', '*', '"999"']) {
      assertProblem(
        t,
        await callWith(who, 'PATCH', url, { 'if-match': ifMatch }, { name: 'pwned', data: null }),
        404,
        'PROJECT_NOT_FOUND',
        `${label}: PATCH with If-Match ${ifMatch} (no 412 either)`,
      )
    }
    assertProblem(t, await call(who, 'DELETE', url), 404, 'PROJECT_NOT_FOUND', `${label}: DELETE`)
    for (const ifMatch of ['"1"', '*', '"999"']) {
      assertProblem(
        t,
        await callWith(who, 'DELETE', url, { 'if-match': ifMatch }),
        404,
        'PROJECT_NOT_FOUND',
        `${label}: DELETE with If-Match ${ifMatch}`,
      )
    }
    assertProblem(
      t,
      await call(who, 'POST', '/projects', { orgId: aliceOrg, name: 'planted' }),
      404,
      'ORG_NOT_FOUND',
      `${label}: create in Alice's org`,
    )
    assertProblem(
      t,
      await call(who, 'POST', `/projects/import?orgId=${aliceOrg}`, { ...exported, name: 'planted import' }),
      404,
      'ORG_NOT_FOUND',
      `${label}: import into Alice's org`,
    )
    assertProblem(
      t,
      await call(who, 'GET', `/projects?orgId=${aliceOrg}`),
      404,
      'ORG_NOT_FOUND',
      `${label}: list with Alice's orgId`,
    )
    const listed = await listAll(who)
    t.notOk(idsOf(listed).includes(target.id), `${label}: the unfiltered list does not contain Alice's project`)
    t.ok(idsOf(listed).includes(bobsProject.id), `${label}: the unfiltered list does contain Bob's own project`)
    t.notOk(
      listed.some((item) => item.orgId === aliceOrg),
      `${label}: nothing of Alice's org is listed`,
    )
    const inOwnOrg = await listAll(who, bobOrg)
    t.same(idsOf(inOwnOrg), [bobsProject.id], `${label}: the list of Bob's org holds only Bob's project`)
  }

  t.same(await storedRow(target.id), rowBefore, 'the row is exactly as before, to the microsecond')
  t.same(await sideEffects(), effectsBefore, 'no outbox event and no audit entry was added')
  t.equal(await projectCount(aliceOrg), aliceCountBefore, "no project was added to Alice's org")
  const stillThere = await call(alice, 'GET', `/projects/${target.id}`)
  t.equal(stillThere.statusCode, 200, 'Alice still reads her project')
  t.same(stillThere.json(), exported, 'unchanged for Alice too')
  t.equal(stillThere.headers.etag, '"1"', 'still version 1')

  // Importing Alice's export as it is (it names her org and the project's id) creates a new
  // project in Bob's own org: the export's server-owned fields are ignored, never followed.
  const imported = await call(bob, 'POST', '/projects/import', exported as unknown as Record<string, unknown>)
  t.equal(imported.statusCode, 201, 'Bob may import a copy of the export into his own org')
  t.match(imported.json(), { orgId: bob.personalOrgId, createdBy: bob.userId, version: 1, name: exported.name })
  t.not(imported.json().id, target.id, 'under a new id')
  t.equal(await projectCount(aliceOrg), aliceCountBefore, "still nothing added to Alice's org")
  t.same(await storedRow(target.id), rowBefore, "and Alice's project is untouched")
})

t.test('roles in a shared org: everyone reads, viewers cannot write, members and up can', async (t) => {
  const [owner, admin, member, viewer] = await Promise.all([account(app), account(app), account(app), account(app)])
  if (!owner || !admin || !member || !viewer) throw new Error('accounts')
  const orgId = await createOrg(app, owner, 'Shared')
  await addMember(app, owner, orgId, admin, 'admin')
  await addMember(app, owner, orgId, member, 'member')
  await addMember(app, owner, orgId, viewer, 'viewer')
  const shared = await createProject(owner, { orgId, name: 'Shared doc', data: { a: 1 } })

  const everyone: [Account, Role][] = [
    [owner, 'owner'],
    [admin, 'admin'],
    [member, 'member'],
    [viewer, 'viewer'],
  ]
  for (const [who, role] of everyone) {
    const get = await call(who, 'GET', `/projects/${shared.id}`)
    t.equal(get.statusCode, 200, `${role}: GET`)
    t.same(get.json().data, { a: 1 }, `${role}: reads the data`)
    t.ok(idsOf(await listAll(who, orgId)).includes(shared.id), `${role}: listed with orgId`)
    t.ok(idsOf(await listAll(who)).includes(shared.id), `${role}: listed without orgId`)
  }

  // The viewer: every write refused with 403, and nothing changes.
  const rowBefore = await storedRow(shared.id)
  const effectsBefore = await sideEffects()
  const countBefore = await projectCount(orgId)
  const url = `/projects/${shared.id}`
  assertProblem(
    t,
    await call(viewer, 'POST', '/projects', { orgId, name: 'by viewer' }),
    403,
    'INSUFFICIENT_ROLE',
    'viewer: create',
  )
  assertProblem(
    t,
    await call(viewer, 'POST', `/projects/import?orgId=${orgId}`, { name: 'imported by viewer' }),
    403,
    'INSUFFICIENT_ROLE',
    'viewer: import',
  )
  assertProblem(t, await call(viewer, 'PATCH', url, { name: 'renamed' }), 403, 'INSUFFICIENT_ROLE', 'viewer: PATCH')
  assertProblem(
    t,
    await callWith(viewer, 'PATCH', url, { 'if-match': '"1"' }, { data: { a: 2 } }),
    403,
    'INSUFFICIENT_ROLE',
    'viewer: PATCH with a current If-Match',
  )
  assertProblem(t, await call(viewer, 'DELETE', url), 403, 'INSUFFICIENT_ROLE', 'viewer: DELETE')
  assertProblem(
    t,
    await callWith(viewer, 'DELETE', url, { 'if-match': '*' }),
    403,
    'INSUFFICIENT_ROLE',
    'viewer: DELETE with If-Match *',
  )
  t.same(await storedRow(shared.id), rowBefore, 'the project is exactly as before')
  t.same(await sideEffects(), effectsBefore, 'no outbox event and no audit entry')
  t.equal(await projectCount(orgId), countBefore, 'no project was added')
  const ownProject = await createProject(viewer, { name: 'mine' })
  t.equal(ownProject.orgId, viewer.personalOrgId, 'the viewer still writes in their personal org (the default)')

  // Members, admins and owners: create, import, patch and delete.
  const created = new Map<Role, Project>()
  let version = 1
  for (const [who, role] of everyone.filter(([, role]) => role !== 'viewer')) {
    const response = await call(who, 'POST', '/projects', { orgId, name: `by ${role}`, data: { role } })
    t.equal(response.statusCode, 201, `${role}: create`)
    const project = response.json() as Project
    t.match(project, { orgId, name: `by ${role}`, createdBy: who.userId, version: 1, data: { role } })
    created.set(role, project)

    const imported = await call(who, 'POST', `/projects/import?orgId=${orgId}`, { ...shared, name: `import ${role}` })
    t.equal(imported.statusCode, 201, `${role}: import`)
    t.match(imported.json(), { orgId, name: `import ${role}`, createdBy: who.userId, version: 1 })
    t.not(imported.json().id, shared.id, `${role}: the import is a new project`)

    const patched = await callWith(
      who,
      'PATCH',
      `/projects/${shared.id}`,
      { 'if-match': `"${version}"` },
      { name: `renamed by ${role}`, data: { [role]: true } },
    )
    t.equal(patched.statusCode, 200, `${role}: PATCH the shared project (${patched.body.slice(0, 100)})`)
    version += 1
    t.match(patched.json(), { name: `renamed by ${role}`, version }, `${role}: the change is applied`)
    t.equal((await storedRow(shared.id))?.row.name, `renamed by ${role}`, `${role}: and stored`)
  }
  t.same(
    (await call(viewer, 'GET', `/projects/${shared.id}`)).json().data,
    { a: 1, owner: true, admin: true, member: true },
    'the three merge patches all landed; the viewer sees them',
  )

  // Each deletes a project another role created.
  for (const [who, role, victim] of [
    [member, 'member', 'owner'],
    [admin, 'admin', 'member'],
    [owner, 'owner', 'admin'],
  ] as const) {
    const project = created.get(victim)
    if (!project) throw new Error('created')
    const response = await call(who, 'DELETE', `/projects/${project.id}`)
    t.equal(response.statusCode, 204, `${role} deletes the ${victim}'s project`)
    t.equal(await storedRow(project.id), null, 'gone from the database')
    assertProblem(t, await call(viewer, 'GET', `/projects/${project.id}`), 404, 'PROJECT_NOT_FOUND', 'gone for others')
  }

  const audit = await app.db.select().from(auditLog).where(eq(auditLog.orgId, orgId))
  for (const [who, role] of everyone.filter(([, role]) => role !== 'viewer')) {
    const mine = audit.filter(
      (entry) => entry.actorUserId === who.userId && entry.targetType === 'project' && entry.targetId !== shared.id,
    )
    t.same(
      mine.map((entry) => entry.action).sort(),
      ['project.created', 'project.created', 'project.deleted'],
      `${role}: the audit log holds their create, import and delete`,
    )
    t.same(
      audit
        .filter((entry) => entry.actorUserId === who.userId && entry.targetId === shared.id)
        .map((entry) => entry.action)
        .sort(),
      role === 'owner' ? ['project.created', 'project.updated'] : ['project.updated'],
      `${role}: and their update of the shared project`,
    )
  }
  t.notOk(
    audit.some((entry) => entry.actorUserId === viewer.userId),
    'the viewer has no audit entry in the shared org',
  )
})

t.test('API key scopes: read, write, neither, and the key only reaches its own org', async (t) => {
  const owner = await account(app)
  const orgId = await createOrg(app, owner, 'Keyed')
  const inOrg = await createProject(owner, { orgId, name: 'Org project', data: { k: 'v' } })
  const personal = await createProject(owner, { name: 'Personal project' })
  t.equal(personal.orgId, owner.personalOrgId, "a user's project defaults to their personal org")

  const readKey = await createApiKey(app, owner, orgId, ['projects:read'])
  const writeKey = await createApiKey(app, owner, orgId, ['projects:write'])
  const noneKey = await createApiKey(app, owner, orgId, ['orgs:read', 'documents:read', 'documents:write'])
  const bothKey = await createApiKey(app, owner, orgId, ['projects:read', 'projects:write'])

  const writes = (who: Caller, label: string, code: string, status: number) => async (t: Test) => {
    assertProblem(t, await call(who, 'POST', '/projects', { name: 'x' }), status, code, `${label}: create`)
    assertProblem(t, await call(who, 'POST', '/projects', { orgId, name: 'x' }), status, code, `${label}: create`)
    assertProblem(
      t,
      await call(who, 'POST', `/projects/import?orgId=${orgId}`, { name: 'x' }),
      status,
      code,
      `${label}: import`,
    )
    assertProblem(t, await call(who, 'PATCH', `/projects/${inOrg.id}`, { name: 'y' }), status, code, `${label}: PATCH`)
    assertProblem(t, await call(who, 'DELETE', `/projects/${inOrg.id}`), status, code, `${label}: DELETE`)
  }

  const rowBefore = await storedRow(inOrg.id)
  const effectsBefore = await sideEffects()
  const countBefore = await projectCount(orgId)

  // projects:read only.
  const read = withKey(readKey)
  const got = await call(read, 'GET', `/projects/${inOrg.id}`)
  t.equal(got.statusCode, 200, 'read key: GET')
  t.same(got.json().data, { k: 'v' })
  t.same(idsOf(await listAll(read)), [inOrg.id], 'read key: the list holds the org project only')
  t.same(idsOf(await listAll(read, orgId)), [inOrg.id], 'read key: the same with orgId')
  await writes(read, 'read key', 'INSUFFICIENT_SCOPE', 403)(t)

  // Neither projects scope.
  const none = withKey(noneKey)
  assertProblem(t, await call(none, 'GET', `/projects/${inOrg.id}`), 403, 'INSUFFICIENT_SCOPE', 'no scope: GET')
  assertProblem(t, await call(none, 'GET', '/projects'), 403, 'INSUFFICIENT_SCOPE', 'no scope: list')
  assertProblem(t, await call(none, 'GET', `/projects?orgId=${orgId}`), 403, 'INSUFFICIENT_SCOPE', 'no scope: list')
  await writes(none, 'no projects scope', 'INSUFFICIENT_SCOPE', 403)(t)

  // projects:write only: no reads.
  const write = withKey(writeKey)
  assertProblem(t, await call(write, 'GET', `/projects/${inOrg.id}`), 403, 'INSUFFICIENT_SCOPE', 'write key: GET')
  assertProblem(t, await call(write, 'GET', '/projects'), 403, 'INSUFFICIENT_SCOPE', 'write key: list')
  assertProblem(t, await call(write, 'GET', `/projects?orgId=${orgId}`), 403, 'INSUFFICIENT_SCOPE', 'write key: list')

  t.same(await storedRow(inOrg.id), rowBefore, 'refused keys changed nothing')
  t.same(await sideEffects(), effectsBefore, 'no outbox event and no audit entry')
  t.equal(await projectCount(orgId), countBefore, 'no project was added')

  // ... but writes, as the service allows with projects:write alone.
  const createdByKey = await call(write, 'POST', '/projects', { name: 'via write key' })
  t.equal(createdByKey.statusCode, 201, 'write key: create')
  const keyProject = createdByKey.json() as Project
  t.equal(keyProject.orgId, orgId, "a key's project defaults to the key's org, not the personal org")
  t.equal(keyProject.createdBy, owner.userId, 'authored by the key creator')
  const importedByKey = await call(write, 'POST', '/projects/import', { name: 'imported via key' })
  t.equal(importedByKey.statusCode, 201, 'write key: import')
  t.equal(importedByKey.json().orgId, orgId, "an import defaults to the key's org too")
  const patchedByKey = await callWith(write, 'PATCH', `/projects/${inOrg.id}`, { 'if-match': '"1"' }, { name: 'z' })
  t.equal(patchedByKey.statusCode, 200, 'write key: PATCH')
  t.match(patchedByKey.json(), { name: 'z', version: 2 })
  t.equal((await call(write, 'DELETE', `/projects/${keyProject.id}`)).statusCode, 204, 'write key: DELETE')
  t.equal(await storedRow(keyProject.id), null, 'deleted')
  const keyAudit = await app.db.select().from(auditLog).where(eq(auditLog.actorKeyId, writeKey.id))
  t.same(
    keyAudit.map((entry) => entry.action).sort(),
    ['project.created', 'project.created', 'project.deleted', 'project.updated'],
    "the audit log names the key as the actor of the key's writes",
  )
  t.ok(
    keyAudit.every((entry) => entry.actorUserId === owner.userId && entry.orgId === orgId),
    'with its creator as the user, in its org',
  )

  // A key never reaches its creator's other orgs (here the personal org).
  const both = withKey(bothKey)
  const personalRow = await storedRow(personal.id)
  const personalEffects = await sideEffects()
  assertProblem(t, await call(both, 'GET', `/projects/${personal.id}`), 404, 'PROJECT_NOT_FOUND', 'key: GET personal')
  assertProblem(
    t,
    await call(both, 'PATCH', `/projects/${personal.id}`, { name: 'n' }),
    404,
    'PROJECT_NOT_FOUND',
    'key: PATCH personal',
  )
  assertProblem(
    t,
    await call(both, 'DELETE', `/projects/${personal.id}`),
    404,
    'PROJECT_NOT_FOUND',
    'key: DELETE personal',
  )
  assertProblem(
    t,
    await call(both, 'GET', `/projects?orgId=${owner.personalOrgId}`),
    404,
    'ORG_NOT_FOUND',
    'key: list the personal org',
  )
  assertProblem(
    t,
    await call(both, 'POST', '/projects', { orgId: owner.personalOrgId, name: 'n' }),
    404,
    'ORG_NOT_FOUND',
    'key: create in the personal org',
  )
  assertProblem(
    t,
    await call(both, 'POST', `/projects/import?orgId=${owner.personalOrgId}`, { name: 'n' }),
    404,
    'ORG_NOT_FOUND',
    'key: import into the personal org',
  )
  const keyList = await listAll(both)
  t.notOk(idsOf(keyList).includes(personal.id), "the key's list lacks the personal project")
  t.ok(
    keyList.length > 0 && keyList.every((item) => item.orgId === orgId),
    "the key's list holds only its org's projects",
  )
  t.same(await storedRow(personal.id), personalRow, 'the personal project is unchanged')
  t.same(await sideEffects(), personalEffects, 'and no event or audit entry was added')
  const byBoth = await createProject(both, { name: 'default org' })
  t.equal(byBoth.orgId, orgId, "a project created by a key (no orgId) goes to the key's org")
  t.equal(idsOf(await listAll(owner, owner.personalOrgId)).length, 1, 'the personal org still has one project')

  // A key is never more than its creator: a viewer's key with projects:write cannot write.
  const viewer = await account(app)
  await addMember(app, owner, orgId, viewer, 'viewer')
  const viewersKey = withKey(await createApiKey(app, viewer, orgId, ['projects:read', 'projects:write']))
  t.equal((await call(viewersKey, 'GET', `/projects/${inOrg.id}`)).statusCode, 200, "viewer's key: GET")
  await writes(viewersKey, "viewer's key", 'INSUFFICIENT_ROLE', 403)(t)
})

t.test('no credential: 401 on every verb; a bad one: 401 INVALID_TOKEN', async (t) => {
  const owner = await account(app)
  const project = await createProject(owner, { name: 'guarded' })
  const rowBefore = await storedRow(project.id)
  const url = `/projects/${project.id}`
  const requests: [Method, string, Record<string, unknown>?][] = [
    ['GET', url],
    ['GET', '/projects'],
    ['GET', `/projects?orgId=${owner.personalOrgId}`],
    ['POST', '/projects', { name: 'anon' }],
    ['POST', `/projects/import?orgId=${owner.personalOrgId}`, { name: 'anon' }],
    ['PATCH', url, { name: 'anon' }],
    ['DELETE', url],
    ['GET', '/projects/prj_doesnotexist'],
  ]
  for (const [method, path, payload] of requests) {
    const response = await call(anonymous, method, path, payload)
    assertProblem(t, response, 401, 'UNAUTHORIZED', `${method} ${path} without a credential`)
    t.equal(response.headers['www-authenticate'], 'Bearer', 'WWW-Authenticate: Bearer')
    assertInvalidToken(
      t,
      await call({ headers: bearer('not-a-real-token') }, method, path, payload),
      `${method} ${path} with a bad token`,
    )
  }
  t.same(await storedRow(project.id), rowBefore, 'nothing changed')
  t.equal(await projectCount(owner.personalOrgId), 1, 'nothing was created')
})

t.test('a demoted member loses write access and a removed member loses all access at once', async (t) => {
  const [owner, member] = await Promise.all([account(app), account(app)])
  if (!owner || !member) throw new Error('accounts')
  const orgId = await createOrg(app, owner, 'Revocable')
  await addMember(app, owner, orgId, member, 'member')
  const project = await createProject(owner, { orgId, name: 'Team doc' })
  const membersKey = withKey(await createApiKey(app, member, orgId, ['projects:read', 'projects:write']))
  const url = `/projects/${project.id}`

  t.equal((await call(member, 'GET', url)).statusCode, 200, 'the member reads')
  t.equal((await call(member, 'PATCH', url, { description: 'edited' })).statusCode, 200, 'and writes')
  t.equal((await call(membersKey, 'GET', url)).statusCode, 200, "and so does the member's key")

  const demoted = await call(owner, 'PATCH', `/orgs/${orgId}/members/${member.userId}`, { role: 'viewer' })
  t.equal(demoted.statusCode, 200, 'demoted to viewer')
  t.equal((await call(member, 'GET', url)).statusCode, 200, 'the viewer still reads with the same token')
  assertProblem(t, await call(member, 'PATCH', url, { name: 'n' }), 403, 'INSUFFICIENT_ROLE', 'but no longer writes')
  assertProblem(t, await call(membersKey, 'DELETE', url), 403, 'INSUFFICIENT_ROLE', 'nor does their key')

  const removed = await call(owner, 'DELETE', `/orgs/${orgId}/members/${member.userId}`)
  t.equal(removed.statusCode, 204, 'removed')
  const rowBefore = await storedRow(project.id)
  assertProblem(t, await call(member, 'GET', url), 404, 'PROJECT_NOT_FOUND', 'GET with the same token: 404')
  assertProblem(t, await call(member, 'PATCH', url, { name: 'n' }), 404, 'PROJECT_NOT_FOUND', 'PATCH: 404')
  assertProblem(t, await call(member, 'DELETE', url), 404, 'PROJECT_NOT_FOUND', 'DELETE: 404')
  assertProblem(t, await call(member, 'GET', `/projects?orgId=${orgId}`), 404, 'ORG_NOT_FOUND', 'list the org: 404')
  assertProblem(
    t,
    await call(member, 'POST', '/projects', { orgId, name: 'n' }),
    404,
    'ORG_NOT_FOUND',
    'create in the org: 404',
  )
  t.notOk(idsOf(await listAll(member)).includes(project.id), 'the unfiltered list no longer shows it')
  assertInvalidToken(t, await call(membersKey, 'GET', url), "the member's key stopped working")
  t.same(await storedRow(project.id), rowBefore, 'nothing changed')
  t.equal((await call(owner, 'GET', url)).statusCode, 200, 'the owner still reads it')
})
