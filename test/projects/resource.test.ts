import { asc, count, eq, sql } from 'drizzle-orm'
import type { LightMyRequestResponse } from 'fastify'
import t from 'tap'
import { auditLog, outboxEvents, projects } from '../../src/db/schema/index.js'
import { MAX_DATA_BYTES, PROJECT_BODY_LIMIT } from '../../src/modules/projects/projects-schemas.js'
import { buildTestApp } from '../helper.js'
import {
  type Account,
  account,
  addMember,
  assertProblem,
  callAs,
  createOrg,
  type Method,
  type Test,
  uniqueAddress,
} from '../auth/support.js'
import type { Project } from './support.js'

const app = await buildTestApp(t)

const ISO = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/

/** A request as `who` with extra headers, or a raw JSON text body (sent as `contentType`). */
function send(
  who: Pick<Account, 'headers'>,
  method: Method,
  url: string,
  options: {
    payload?: Record<string, unknown>
    raw?: string
    contentType?: string
    headers?: Record<string, string>
  } = {},
): Promise<LightMyRequestResponse> {
  const headers: Record<string, string> = { ...who.headers, ...options.headers }
  if (options.raw !== undefined) headers['content-type'] = options.contentType ?? 'application/json'
  const payload = options.raw ?? options.payload
  return app.inject({
    method,
    url: `/api/v1${url}`,
    headers,
    ...(payload !== undefined ? { payload } : {}),
    remoteAddress: uniqueAddress(),
  })
}

async function create(who: Account, payload: Record<string, unknown> = { name: 'Graph' }): Promise<Project> {
  const response = await callAs(app, who, 'POST', '/projects', payload)
  if (response.statusCode !== 201) throw new Error(`create answered ${response.statusCode}: ${response.body}`)
  return response.json()
}

const patch = (who: Account, id: string, payload: Record<string, unknown>, ifMatch?: string) =>
  send(who, 'PATCH', `/projects/${id}`, { payload, ...(ifMatch ? { headers: { 'if-match': ifMatch } } : {}) })

async function row(id: string) {
  const [found] = await app.db.select().from(projects).where(eq(projects.id, id))
  return found
}

async function projectCount(): Promise<number> {
  const [result] = await app.db.select({ n: count() }).from(projects)
  return Number(result?.n)
}

const eventsOf = (id: string) =>
  app.db.select().from(outboxEvents).where(eq(outboxEvents.subjectId, id)).orderBy(asc(outboxEvents.seq))

const auditsOf = (id: string) =>
  app.db.select().from(auditLog).where(eq(auditLog.targetId, id)).orderBy(asc(auditLog.id))

async function auditCount(action: string): Promise<number> {
  const [result] = await app.db.select({ n: count() }).from(auditLog).where(eq(auditLog.action, action))
  return Number(result?.n)
}

function assertFieldError(t: Test, response: LightMyRequestResponse, path: string, label = path) {
  assertProblem(t, response, 400, 'VALIDATION_FAILED', label)
  const paths = ((response.json().errors ?? []) as { path: string }[]).map((error) => error.path)
  t.ok(paths.includes(path), `${label}: errors[] names ${path}`)
}

t.test('create: 201 with Location, ETag "1" and defaults; GET returns the same resource', async (t) => {
  const alice = await account(app)
  const response = await callAs(app, alice, 'POST', '/projects', { name: 'Node graph' })
  t.equal(response.statusCode, 201, 'created')
  const project: Project = response.json()
  t.match(project.id, /^prj_[0-9a-f]{32}$/, 'opaque prefixed id')
  t.equal(response.headers.location, `/api/v1/projects/${project.id}`, 'Location')
  t.equal(response.headers.etag, '"1"', 'ETag "1"')
  t.same(project, {
    id: project.id,
    orgId: alice.personalOrgId,
    name: 'Node graph',
    description: '',
    data: {},
    version: 1,
    createdBy: alice.userId,
    createdAt: project.createdAt,
    updatedAt: project.updatedAt,
  })
  t.match(project.createdAt, ISO, 'createdAt is ISO')
  t.match(project.updatedAt, ISO, 'updatedAt is ISO')
  t.ok(Math.abs(Date.parse(project.createdAt) - Date.now()) < 60_000, 'createdAt is now')
  t.equal(project.updatedAt, project.createdAt, 'a new project was updated when it was created')

  const read = await callAs(app, alice, 'GET', `/projects/${project.id}`)
  t.equal(read.statusCode, 200)
  t.same(read.json(), project, 'GET returns the same body')
  t.equal(read.headers.etag, '"1"')
  t.equal(read.headers['cache-control'], 'private, no-cache')

  const second = await create(alice, { name: 'Another' })
  t.match(second.id, /^prj_[0-9a-f]{32}$/)
  t.not(second.id, project.id, 'ids differ')

  const stranger = await account(app)
  assertProblem(t, await callAs(app, stranger, 'GET', `/projects/${project.id}`), 404, 'PROJECT_NOT_FOUND', 'stranger')
  const orgId = await createOrg(app, alice, 'Team')
  const inOrg = await create(alice, { name: 'Team project', orgId })
  t.equal(inOrg.orgId, orgId, 'a named org is used')
  assertProblem(t, await callAs(app, stranger, 'POST', '/projects', { name: 'x', orgId }), 404, 'ORG_NOT_FOUND')
})

t.test('create refuses server-owned fields and out-of-range name/description; nothing inserted', async (t) => {
  const alice = await account(app)
  const other = await account(app)
  const before = await projectCount()
  const past = '2000-01-01T00:00:00.000Z'
  const sneaky = { id: `prj_${'0'.repeat(32)}`, version: 99, createdBy: other.userId, createdAt: past, updatedAt: past }
  for (const [field, value] of Object.entries(sneaky)) {
    const response = await callAs(app, alice, 'POST', '/projects', { name: 'Sneaky', [field]: value })
    assertFieldError(t, response, `/body/${field}`)
  }
  assertFieldError(t, await callAs(app, alice, 'POST', '/projects', { name: '' }), '/body/name', 'empty name')
  assertFieldError(t, await callAs(app, alice, 'POST', '/projects', { name: 'n'.repeat(201) }), '/body/name', '201')
  assertFieldError(t, await callAs(app, alice, 'POST', '/projects', {}), '/body/name', 'missing name')
  assertFieldError(
    t,
    await callAs(app, alice, 'POST', '/projects', { name: 'x', description: 'd'.repeat(2001) }),
    '/body/description',
    'description 2001',
  )
  t.equal(await projectCount(), before, 'no refused create inserted a row')

  // `data: null` is a client's choice, never a server error: refused, or the empty document.
  for (const url of ['/projects', '/projects/import']) {
    const response = await callAs(app, alice, 'POST', url, { name: 'Null data', data: null })
    t.not(response.statusCode, 500, `${url} with data null is no server error`)
    if (response.statusCode === 201) t.same(response.json().data, {}, 'data null → {}')
    else if (response.statusCode !== 500) assertFieldError(t, response, '/body/data', `${url} data null`)
  }
  const nullCreated = (await projectCount()) - before

  const longest = await create(alice, { name: 'n'.repeat(200), description: 'd'.repeat(2000) })
  t.equal(longest.name.length, 200, 'a 200-char name is accepted')
  t.equal(longest.description.length, 2000, 'a 2000-char description is accepted')
  t.equal(await projectCount(), before + nullCreated + 1)
})

t.test('PATCH refuses server-owned and invalid fields; the row is unchanged', async (t) => {
  const alice = await account(app)
  const project = await create(alice, { name: 'Stable', data: { a: 1 } })
  const stored = await row(project.id)
  const otherOrg = await createOrg(app, alice, 'Elsewhere')
  const refused = { version: 7, orgId: otherOrg, id: `prj_${'f'.repeat(32)}`, createdBy: null, createdAt: 'now' }
  for (const [field, value] of Object.entries(refused)) {
    assertFieldError(t, await patch(alice, project.id, { [field]: value }), `/body/${field}`)
  }
  assertFieldError(t, await patch(alice, project.id, { name: '' }), '/body/name', 'empty name')
  assertFieldError(t, await patch(alice, project.id, { name: null }), '/body/name', 'null name')
  assertFieldError(t, await patch(alice, project.id, { description: 'd'.repeat(2001) }), '/body/description')
  t.same(await row(project.id), stored, 'row unchanged')
  const types = (await eventsOf(project.id)).map((event) => event.type)
  t.same(types, ['project.created'], 'no update event')
})

t.test('data size: up to 1 MiB of compact JSON; more is 413 DATA_TOO_LARGE or PAYLOAD_TOO_LARGE', async (t) => {
  const alice = await account(app)
  const before = await projectCount()

  const exact = 'x'.repeat(MAX_DATA_BYTES - 2) // with its quotes exactly MAX_DATA_BYTES
  const accepted = await callAs(app, alice, 'POST', '/projects', { name: 'Exactly 1 MiB', data: exact })
  t.equal(accepted.statusCode, 201, 'data of exactly 1 MiB is accepted')
  const stored = await callAs(app, alice, 'GET', `/projects/${accepted.json().id}`)
  t.equal(stored.json().data, exact, 'and stored whole')

  const overByOne = { name: 'One byte over', data: 'x'.repeat(MAX_DATA_BYTES - 1) }
  t.ok(JSON.stringify(overByOne).length < PROJECT_BODY_LIMIT, '(the body is within the body limit)')
  assertProblem(t, await callAs(app, alice, 'POST', '/projects', overByOne), 413, 'DATA_TOO_LARGE', 'one byte over')

  // Measured in UTF-8 bytes, not characters: 530 000 two-byte characters are over 1 MiB.
  const wide = { name: 'Wide', data: { text: 'é'.repeat(530_000) } }
  t.ok(Buffer.byteLength(JSON.stringify(wide)) < PROJECT_BODY_LIMIT, '(the body is within the body limit)')
  assertProblem(t, await callAs(app, alice, 'POST', '/projects', wide), 413, 'DATA_TOO_LARGE', 'bytes, not characters')

  const huge = { name: 'Huge', data: 'x'.repeat(PROJECT_BODY_LIMIT) }
  assertProblem(t, await callAs(app, alice, 'POST', '/projects', huge), 413, 'PAYLOAD_TOO_LARGE', 'body over the limit')
  assertProblem(t, await callAs(app, alice, 'POST', '/projects/import', huge), 413, 'PAYLOAD_TOO_LARGE', 'import')
  t.equal(await projectCount(), before + 1, 'only the 1 MiB project was inserted')

  // Each patch is small enough; the merged document is not.
  const growing = await create(alice, { name: 'Growing', data: { a: 'a'.repeat(600_000) } })
  const grown = await row(growing.id)
  const overflow = await patch(alice, growing.id, { data: { b: 'b'.repeat(500_000) } })
  assertProblem(t, overflow, 413, 'DATA_TOO_LARGE', 'merge past 1 MiB')
  t.same(await row(growing.id), grown, 'row unchanged')
  const swapped = await patch(alice, growing.id, { data: { a: null, b: 'b'.repeat(500_000) } })
  t.equal(swapped.statusCode, 200, 'a patch whose merged result fits is accepted')
  t.same(Object.keys(swapped.json().data), ['b'])
  t.equal(swapped.json().version, 2)
})

t.test('over-deep data and NUL characters are refused before anything is stored', async (t) => {
  const alice = await account(app)
  const before = await projectCount()
  const deep = `{"name":"Deep","data":${'['.repeat(100)}${']'.repeat(100)}}`
  assertProblem(t, await send(alice, 'POST', '/projects', { raw: deep }), 400, 'JSON_TOO_DEEP', '100 levels')

  const nulBodies = [
    '{"name":"Nul","data":{"text":"a\\u0000b"}}',
    '{"name":"a\\u0000b"}',
    '{"name":"Nul key","data":{"k\\u0000":1}}',
    '{"name":"Nul","description":"\\u0000"}',
  ]
  for (const body of nulBodies) {
    assertProblem(t, await send(alice, 'POST', '/projects', { raw: body }), 400, 'INVALID_CHARACTER', body)
  }
  assertProblem(t, await send(alice, 'POST', '/projects/import', { raw: nulBodies[0] }), 400, 'INVALID_CHARACTER')
  t.equal(await projectCount(), before, 'nothing inserted')

  // A lone UTF-16 surrogate is valid JSON but no Unicode text: PostgreSQL cannot store it in jsonb.
  for (const body of ['{"name":"Lone","data":{"text":"a\\ud800b"}}', '{"name":"Lone key","data":{"\\udc00":1}}']) {
    const response = await send(alice, 'POST', '/projects', { raw: body })
    t.equal(response.statusCode, 400, `${body}: refused as the client's error, not a 500`)
    t.match(response.headers['content-type'], /^application\/problem\+json/)
  }
  t.equal(await projectCount(), before, 'nothing inserted')
  const loneName = await send(alice, 'POST', '/projects', { raw: '{"name":"a\\ud800"}' })
  if (loneName.statusCode === 201) t.equal(loneName.json().name, 'a\ud800', 'a name is never silently altered')
  else t.equal(loneName.statusCode, 400, 'a lone surrogate in the name is refused')

  // An escaped backslash followed by "u0000" is six ordinary characters, not a NUL.
  const literal = await send(alice, 'POST', '/projects', { raw: '{"name":"Literal","data":{"text":"\\\\u0000"}}' })
  t.equal(literal.statusCode, 201, 'a literal backslash-u0000 is accepted')
  t.equal(literal.json().data.text, '\\u0000')

  const project: Project = literal.json()
  const stored = await row(project.id)
  const nulPatch = await send(alice, 'PATCH', `/projects/${project.id}`, {
    raw: '{"data":{"text":"\\u0000"}}',
    contentType: 'application/merge-patch+json',
  })
  assertProblem(t, nulPatch, 400, 'INVALID_CHARACTER', 'merge patch with NUL')
  const deepPatch = await send(alice, 'PATCH', `/projects/${project.id}`, {
    raw: `{"data":{"k":${'{"k":'.repeat(99)}1${'}'.repeat(99)}}}`,
  })
  assertProblem(t, deepPatch, 400, 'JSON_TOO_DEEP', 'deep merge patch')
  t.same(await row(project.id), stored, 'row unchanged')
})

t.test('merge patch (RFC 7396): objects merge, null removes, arrays replace; one version per change', async (t) => {
  const alice = await account(app)
  const project = await create(alice, {
    name: 'Pipeline',
    description: 'stages',
    data: { graph: { nodes: [1, 2, 3], meta: { a: 1, b: 2 } }, keep: true, drop: 'x' },
  })

  const merged = await send(alice, 'PATCH', `/projects/${project.id}`, {
    raw: JSON.stringify({ data: { graph: { nodes: [9], meta: { b: null, c: 3 } }, drop: null, added: [{ x: 1 }] } }),
    contentType: 'application/merge-patch+json',
  })
  t.equal(merged.statusCode, 200, 'application/merge-patch+json accepted')
  t.same(merged.json().data, { graph: { nodes: [9], meta: { a: 1, c: 3 } }, keep: true, added: [{ x: 1 }] })
  t.equal(merged.json().version, 2)
  t.equal(merged.headers.etag, '"2"')
  t.equal(merged.json().name, 'Pipeline', 'name untouched')
  t.equal(merged.json().description, 'stages', 'description untouched')
  t.equal(merged.json().createdAt, project.createdAt, 'createdAt untouched')
  t.ok(Date.parse(merged.json().updatedAt) >= Date.parse(project.updatedAt), 'updatedAt moves on')

  const steps: [Record<string, unknown>, Partial<Project>][] = [
    [{ name: 'Renamed' }, { name: 'Renamed', version: 3 }],
    [{ description: null }, { description: '', version: 4 }],
    [{ data: null }, { data: {}, version: 5 }],
    [{ data: { x: 1, y: { z: 2 } } }, { data: { x: 1, y: { z: 2 } }, version: 6 }],
    [{ data: [1, 2] }, { data: [1, 2], version: 7 }],
    [{ data: { a: 1 } }, { data: { a: 1 }, version: 8 }], // an object replaces a non-object target
  ]
  for (const [body, expected] of steps) {
    const response = await patch(alice, project.id, body)
    t.equal(response.statusCode, 200, JSON.stringify(body))
    t.match(response.json(), expected, JSON.stringify(body))
    t.equal(response.headers.etag, `"${expected.version}"`, 'ETag follows the version')
  }
  const updates = () => eventsOf(project.id).then((events) => events.filter((e) => e.type === 'project.updated'))
  t.equal((await updates()).length, 7, 'one event per effective change')
  const audits = (await auditsOf(project.id)).length

  const noops = [
    {},
    { name: 'Renamed' },
    { description: '' },
    { data: { a: 1 } },
    { data: { missing: null } },
    { data: {} },
  ]
  for (const body of noops) {
    const response = await patch(alice, project.id, body)
    t.equal(response.statusCode, 200, `no-op ${JSON.stringify(body)}`)
    t.equal(response.json().version, 8, 'version unchanged')
    t.equal(response.headers.etag, '"8"')
  }
  // An array replaces whole; objects inside it with their keys in another order are the same content.
  const reordered = await create(alice, { name: 'Order', data: { list: [{ a: 1, bb: 2 }], y: { a: 1, bb: 2 } } })
  const sameContent = await patch(alice, reordered.id, { data: { list: [{ bb: 2, a: 1 }], y: { bb: 2, a: 1 } } })
  t.equal(sameContent.json().version, 1, 'the same content in another key order is no change')
  t.equal((await eventsOf(reordered.id)).length, 1)
  t.equal((await updates()).length, 7, 'no-op patches write no event')
  t.equal((await auditsOf(project.id)).length, audits, 'and no audit entry')
  t.equal((await row(project.id))?.version, 8)
  assertProblem(
    t,
    await send(alice, 'PATCH', `/projects/${project.id}`, { raw: '{"name":"x"}', contentType: 'text/plain' }),
    415,
    'UNSUPPORTED_MEDIA_TYPE',
  )
})

t.test('GET with If-None-Match: 304 for the current tag (strong, weak, *), 200 otherwise', async (t) => {
  const alice = await account(app)
  const project = await create(alice)
  const get = (tag: string) => send(alice, 'GET', `/projects/${project.id}`, { headers: { 'if-none-match': tag } })
  for (const tag of ['"1"', 'W/"1"', '*', '"5", W/"1"']) {
    const response = await get(tag)
    t.equal(response.statusCode, 304, `${tag} → 304`)
    t.equal(response.body, '', 'empty body')
    t.equal(response.headers.etag, '"1"', 'with the ETag')
  }
  const stale = await get('"0"')
  t.equal(stale.statusCode, 200, 'a stale tag gets the body')
  t.same(stale.json(), project)

  await patch(alice, project.id, { name: 'Changed' })
  const changed = await get('"1"')
  t.equal(changed.statusCode, 200, 'after a change the old tag no longer matches')
  t.equal(changed.headers.etag, '"2"')
  t.equal(changed.json().name, 'Changed')
  t.equal((await get('"2"')).statusCode, 304)
})

t.test('If-Match on PATCH/DELETE: stale → 412, nothing changed; current, * or a listed tag succeed', async (t) => {
  const alice = await account(app)
  const project = await create(alice, { name: 'v1' })
  t.equal((await patch(alice, project.id, { name: 'v2' })).statusCode, 200)
  const atTwo = await row(project.id)

  assertProblem(t, await patch(alice, project.id, { name: 'lost' }, '"1"'), 412, 'PRECONDITION_FAILED', 'stale')
  assertProblem(t, await patch(alice, project.id, { name: 'lost' }, 'W/"2"'), 412, 'PRECONDITION_FAILED', 'weak tag')
  assertProblem(t, await patch(alice, project.id, { name: 'lost' }, '"1", "3"'), 412, 'PRECONDITION_FAILED', 'list')
  const del = (ifMatch: string) =>
    send(alice, 'DELETE', `/projects/${project.id}`, { headers: { 'if-match': ifMatch } })
  assertProblem(t, await del('"1"'), 412, 'PRECONDITION_FAILED', 'stale DELETE')
  t.same(await row(project.id), atTwo, 'row and version unchanged')
  t.equal((await eventsOf(project.id)).length, 2, 'no event for refused writes')

  const current = await patch(alice, project.id, { name: 'v3' }, '"2"')
  t.equal(current.statusCode, 200, 'current tag')
  t.equal(current.json().version, 3)
  const star = await patch(alice, project.id, { name: 'v4' }, '*')
  t.equal(star.statusCode, 200, '*')
  t.equal(star.json().version, 4)
  const listed = await patch(alice, project.id, { name: 'v5' }, '"7", "4"')
  t.equal(listed.statusCode, 200, 'a list containing the current tag')
  t.equal(listed.headers.etag, '"5"')

  const deleted = await del('"5"')
  t.equal(deleted.statusCode, 204, 'DELETE with the current tag')
  t.equal(deleted.body, '')
  t.equal(await row(project.id), undefined, 'row gone')
  assertProblem(t, await callAs(app, alice, 'GET', `/projects/${project.id}`), 404, 'PROJECT_NOT_FOUND', 'GET')
  assertProblem(t, await patch(alice, project.id, { name: 'ghost' }), 404, 'PROJECT_NOT_FOUND', 'PATCH')
  assertProblem(t, await del('*'), 404, 'PROJECT_NOT_FOUND', 'DELETE again')

  const other = await create(alice)
  const starDelete = await send(alice, 'DELETE', `/projects/${other.id}`, { headers: { 'if-match': '*' } })
  t.equal(starDelete.statusCode, 204, 'DELETE with *')
})

t.test('two PATCHes racing with the same If-Match: exactly one wins, the other gets 412', async (t) => {
  const alice = await account(app)
  for (let round = 0; round < 5; round++) {
    const project = await create(alice, { name: 'race' })
    const names = [`left-${round}`, `right-${round}`]
    const responses = await Promise.all(names.map((name) => patch(alice, project.id, { name }, '"1"')))
    t.same(responses.map((response) => response.statusCode).sort(), [200, 412], `round ${round}: one 200, one 412`)
    const winner = responses.findIndex((response) => response.statusCode === 200)
    const loser = responses[1 - winner]
    if (loser) assertProblem(t, loser, 412, 'PRECONDITION_FAILED', `round ${round} loser`)
    t.equal(responses[winner]?.json().version, 2)
    const stored = await row(project.id)
    t.equal(stored?.version, 2, 'final version 2')
    t.equal(stored?.name, names[winner], "the winner's name")
    t.equal((await eventsOf(project.id)).filter((e) => e.type === 'project.updated').length, 1, 'one update event')
  }
})

t.test('ten concurrent PATCHes without If-Match: no lost update, versions and updatedAt in order', async (t) => {
  const alice = await account(app)
  const project = await create(alice, { name: 'counter', data: { base: true } })
  const keys = Array.from({ length: 10 }, (_, i) => `k${i}`)
  const responses = await Promise.all(keys.map((key, i) => patch(alice, project.id, { data: { [key]: i } })))
  const statuses = responses.map((response) => response.statusCode)
  t.same(statuses, Array(10).fill(200), 'all 200')
  t.same(
    responses.map((response) => response.json().version).sort((a: number, b: number) => a - b),
    [2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
    'each write got its own version',
  )
  const stored = await row(project.id)
  t.equal(stored?.version, 11)
  t.same(stored?.data, { base: true, ...Object.fromEntries(keys.map((key, i) => [key, i])) }, 'every key is kept')
  // A later version is never older: updatedAt is when the change was made, not when its request began.
  const byVersion = responses.map((response) => response.json() as Project).sort((a, b) => a.version - b.version)
  for (const [i, later] of byVersion.entries()) {
    const earlier = byVersion[i - 1]
    if (!earlier) continue
    const inOrder = Date.parse(later.updatedAt) >= Date.parse(earlier.updatedAt)
    t.ok(inOrder, `updatedAt of v${later.version} (${later.updatedAt}) ≥ v${earlier.version} (${earlier.updatedAt})`)
  }
  const updates = (await eventsOf(project.id)).filter((e) => e.type === 'project.updated')
  t.same(
    updates.map((e) => (e.data as Project).version).sort((a, b) => a - b),
    [2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
  )
})

t.test('create, update and delete each write one outbox event and one audit entry', async (t) => {
  const alice = await account(app)
  const bob = await account(app)
  const viewer = await account(app)
  const orgId = await createOrg(app, alice, 'Events')
  await addMember(app, alice, orgId, bob, 'member')
  await addMember(app, alice, orgId, viewer, 'viewer')

  const created = await callAs(app, alice, 'POST', '/projects', { name: 'Evented', orgId, data: { n: 1 } })
  const project: Project = created.json()
  const updated = await patch(bob, project.id, { data: { n: 2 } })
  t.equal(updated.statusCode, 200, 'a member may update')
  assertProblem(t, await patch(viewer, project.id, { name: 'no' }), 403, 'INSUFFICIENT_ROLE', 'viewer')
  assertProblem(t, await send(viewer, 'DELETE', `/projects/${project.id}`), 403, 'INSUFFICIENT_ROLE', 'viewer')
  const lastState = (await callAs(app, alice, 'GET', `/projects/${project.id}`)).json()
  t.equal((await callAs(app, bob, 'DELETE', `/projects/${project.id}`)).statusCode, 204)

  const events = await eventsOf(project.id)
  t.same(
    events.map((event) => event.type),
    ['project.created', 'project.updated', 'project.deleted'],
    'exactly one event per change',
  )
  const expectedData = [project, updated.json(), lastState]
  events.forEach((event, i) => {
    // dispatchedAt is set once the webhooks worker has fanned the event out (test/webhooks/deliveries.test.ts).
    t.match(event, { id: /^evt_/, orgId, subjectType: 'project', subjectId: project.id })
    t.ok(event.occurredAt instanceof Date, 'occurredAt set')
    t.same(event.data, expectedData[i], `${event.type}: data is the resource as the API renders it`)
  })
  t.equal((events[1]?.data as Project).version, 2)
  t.equal((events[2]?.data as Project).version, 2, 'delete carries the last state')

  const audits = await auditsOf(project.id)
  t.same(
    audits.map((entry) => [entry.action, entry.actorUserId]),
    [
      ['project.created', alice.userId],
      ['project.updated', bob.userId],
      ['project.deleted', bob.userId],
    ],
    'one audit entry per change, with its actor',
  )
  for (const entry of audits) t.match(entry, { orgId, targetType: 'project', targetId: project.id })
})

t.test('a failing outbox insert rolls the whole change back (500, masked)', async (t) => {
  const alice = await account(app)
  const project = await create(alice, { name: 'Before', data: { a: 1 } })
  const stored = await row(project.id)
  const projectsBefore = await projectCount()
  const createdAudits = await auditCount('project.created')

  await app.db.execute(
    sql`create function fail_insert() returns trigger language plpgsql as $$ begin raise exception 'outbox down'; end $$`,
  )
  t.teardown(() => app.db.execute(sql`drop function if exists fail_insert() cascade`))
  /** Runs `fn` while every insert into `table` raises. */
  async function failingInsertsInto(table: 'outbox_events' | 'audit_log', fn: () => Promise<void>) {
    await app.db.execute(
      sql.raw(`create trigger fail_${table} before insert on ${table} for each row execute function fail_insert()`),
    )
    try {
      await fn()
    } finally {
      await app.db.execute(sql.raw(`drop trigger fail_${table} on ${table}`))
    }
  }

  await failingInsertsInto('outbox_events', async () => {
    const failedCreate = await callAs(app, alice, 'POST', '/projects', { name: 'Doomed' })
    assertProblem(t, failedCreate, 500, 'INTERNAL_ERROR', 'create')
    t.notMatch(failedCreate.body, /outbox down|fail_insert|insert into/i, 'the database error is masked')
    const failedImport = await callAs(app, alice, 'POST', '/projects/import', { name: 'Doomed import' })
    assertProblem(t, failedImport, 500, 'INTERNAL_ERROR', 'import')
    t.equal(await projectCount(), projectsBefore, 'no project row')
    t.equal(await auditCount('project.created'), createdAudits, 'no audit row')

    const failedPatch = await patch(alice, project.id, { name: 'After', data: { a: 2 } })
    assertProblem(t, failedPatch, 500, 'INTERNAL_ERROR', 'update')
    t.notMatch(failedPatch.body, /outbox down/)
    t.same(await row(project.id), stored, 'row (name, data, version) unchanged')

    assertProblem(t, await send(alice, 'DELETE', `/projects/${project.id}`), 500, 'INTERNAL_ERROR', 'delete')
    t.same(await row(project.id), stored, 'row still exists')
    t.equal((await auditsOf(project.id)).length, 1, 'only the audit entry of the creation')
  })

  const fresh = await callAs(app, alice, 'POST', '/projects', { name: 'Recovered' })
  t.equal(fresh.statusCode, 201, 'create works again')
  const retried = await patch(alice, project.id, { name: 'After' })
  t.equal(retried.statusCode, 200, 'update works again')
  t.equal(retried.json().version, 2)
  t.equal((await send(alice, 'DELETE', `/projects/${project.id}`)).statusCode, 204, 'delete works again')
  t.same(
    (await eventsOf(project.id)).map((event) => event.type),
    ['project.created', 'project.updated', 'project.deleted'],
    'events only for committed changes',
  )
  t.equal((await eventsOf(fresh.json().id)).length, 1)

  // The event is inside the transaction too: when the audit insert after it fails, no event remains.
  const eventCount = async () => Number((await app.db.select({ n: count() }).from(outboxEvents))[0]?.n)
  const eventsBefore = await eventCount()
  const projectsNow = await projectCount()
  await failingInsertsInto('audit_log', async () => {
    assertProblem(t, await callAs(app, alice, 'POST', '/projects', { name: 'No audit' }), 500, 'INTERNAL_ERROR')
  })
  t.equal(await eventCount(), eventsBefore, 'no outbox event without its change')
  t.equal(await projectCount(), projectsNow, 'no project without its audit entry')
})

t.test('export/import: GET body re-created as a new project; server-owned fields ignored', async (t) => {
  const alice = await account(app)
  const bob = await account(app)
  const carol = await account(app)
  const viewer = await account(app)
  const source = await create(alice, { name: 'Course', description: 'outline', data: { units: [{ t: 'intro' }] } })
  await patch(alice, source.id, { data: { level: 2 } })
  const exported: Project = (await callAs(app, alice, 'GET', `/projects/${source.id}`)).json()
  t.equal(exported.version, 2)
  await new Promise((resolve) => setTimeout(resolve, 20))

  // Bob is no member of the export's org: its orgId is ignored, the copy goes to his personal org.
  const imported = await callAs(app, bob, 'POST', '/projects/import', { ...exported })
  t.equal(imported.statusCode, 201, 'imported')
  const copy: Project = imported.json()
  t.match(copy.id, /^prj_[0-9a-f]{32}$/)
  t.not(copy.id, exported.id, 'a new id')
  t.equal(imported.headers.location, `/api/v1/projects/${copy.id}`)
  t.equal(imported.headers.etag, '"1"')
  t.match(copy, { version: 1, createdBy: bob.userId, orgId: bob.personalOrgId })
  t.same(
    [copy.name, copy.description, copy.data],
    [exported.name, exported.description, exported.data],
    'same name, description and data',
  )
  t.ok(Date.parse(copy.createdAt) > Date.parse(exported.updatedAt), 'fresh createdAt')
  t.equal(copy.updatedAt, copy.createdAt, 'fresh updatedAt')
  t.same((await callAs(app, bob, 'GET', `/projects/${copy.id}`)).json(), copy)
  const copyEvents = (await eventsOf(copy.id)).map((event) => event.type)
  t.same(copyEvents, ['project.created'], 'one creation event')
  t.equal((await row(source.id))?.version, 2, 'the source is untouched')

  const orgId = await createOrg(app, alice, 'Shared')
  await addMember(app, alice, orgId, bob, 'member')
  await addMember(app, alice, orgId, viewer, 'viewer')
  const intoOrg = await callAs(app, bob, 'POST', `/projects/import?orgId=${orgId}`, { ...exported })
  t.equal(intoOrg.statusCode, 201, 'a member imports into another org')
  t.equal(intoOrg.json().orgId, orgId)
  t.equal(intoOrg.json().createdBy, bob.userId)

  const before = await projectCount()
  const outsider = await callAs(app, carol, 'POST', `/projects/import?orgId=${orgId}`, { ...exported })
  assertProblem(t, outsider, 404, 'ORG_NOT_FOUND', 'non-member')
  const readOnly = await callAs(app, viewer, 'POST', `/projects/import?orgId=${orgId}`, { ...exported })
  assertProblem(t, readOnly, 403, 'INSUFFICIENT_ROLE', 'viewer')

  const asCreate = await callAs(app, alice, 'POST', '/projects', { ...exported })
  assertProblem(t, asCreate, 400, 'VALIDATION_FAILED', 'export sent to create')
  const paths = (asCreate.json().errors as { path: string }[]).map((error) => error.path)
  for (const field of ['id', 'version', 'createdBy', 'createdAt', 'updatedAt']) {
    t.ok(paths.includes(`/body/${field}`), `create names /body/${field}`)
  }
  assertFieldError(t, await callAs(app, bob, 'POST', '/projects/import', { ...exported, name: '' }), '/body/name')
  assertFieldError(t, await callAs(app, bob, 'POST', '/projects/import', { ...exported, extra: 1 }), '/body/extra')
  t.equal(await projectCount(), before, 'refused imports insert nothing')
})
