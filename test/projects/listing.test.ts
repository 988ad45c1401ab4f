import { inArray, sql } from 'drizzle-orm'
import t from 'tap'
import { projects } from '../../src/db/schema/index.js'
import { buildTestApp } from '../helper.js'
import {
  type Account,
  account,
  addMember,
  assertProblem,
  b64url,
  callAs,
  createOrg,
  type Method,
  type Test,
  walkPages,
} from '../auth/support.js'
import type { ProjectSummary } from './support.js'

const app = await buildTestApp(t)

const call = (who: Pick<Account, 'headers'>, method: Method, url: string, payload?: Record<string, unknown>) =>
  callAs(app, who, method, url, payload)

type Summary = ProjectSummary

type Sort = 'updatedAt' | 'name'
type Order = 'asc' | 'desc'

const SUMMARY_FIELDS = ['createdAt', 'createdBy', 'description', 'id', 'name', 'orgId', 'updatedAt', 'version']

async function createProject(who: Account, payload: Record<string, unknown>): Promise<Summary & { data: unknown }> {
  const response = await call(who, 'POST', '/projects', payload)
  if (response.statusCode !== 201) throw new Error(`create project answered ${response.statusCode}: ${response.body}`)
  return response.json()
}

async function createMany(who: Account, names: string[], orgId?: string) {
  const created: Summary[] = []
  for (const name of names) created.push(await createProject(who, { name, ...(orgId ? { orgId } : {}) }))
  return created
}

/** `/projects?...` from the given parameters (URL-encoded), leaving out the undefined ones. */
function listUrl(params: Record<string, string | number | undefined | null>): string {
  const query = new URLSearchParams()
  for (const [key, value] of Object.entries(params))
    if (value !== undefined && value !== null) query.set(key, `${value}`)
  const text = query.toString()
  return text ? `/projects?${text}` : '/projects'
}

const ids = (items: readonly { id: string }[]) => items.map((item) => item.id)

const compare = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0)

/**
 * The sort keys as stored: the name, and updated_at to the microsecond as fixed-width text (the
 * API shows milliseconds only, so equal-looking timestamps may still differ).
 */
async function sortKeys(projectIds: string[]) {
  const rows = await app.db
    .select({
      id: projects.id,
      name: projects.name,
      at: sql<string>`to_char(${projects.updatedAt} at time zone 'UTC', 'YYYYMMDDHH24MISSUS')`,
    })
    .from(projects)
    .where(inArray(projects.id, projectIds))
  return rows
}

/** The order the list must follow: the sort key, then the id, both in the requested direction. */
function expectedOrder(rows: { id: string; name: string; at: string }[], sort: Sort, order: Order): string[] {
  const sorted = [...rows].sort(
    (a, b) => compare(sort === 'name' ? a.name : a.at, sort === 'name' ? b.name : b.at) || compare(a.id, b.id),
  )
  if (order === 'desc') sorted.reverse()
  return ids(sorted)
}

function assertNoDuplicates(t: Test, items: { id: string }[], message = 'no project appears twice') {
  const all = ids(items)
  t.equal(new Set(all).size, all.length, message)
}

t.test('limit and cursor validation', async (t) => {
  const user = await account(app)
  const otherOrg = await createOrg(app, user, 'Second org')
  const created = await createMany(
    user,
    Array.from({ length: 25 }, (_, i) => `p${String(i).padStart(2, '0')}`),
  )

  for (const limit of ['0', '101', '-1', '1.5', 'abc', '']) {
    assertProblem(t, await call(user, 'GET', `/projects?limit=${limit}`), 400, 'VALIDATION_FAILED', `limit=${limit}`)
  }
  for (const [param, value] of [
    ['sort', 'createdAt'],
    ['order', 'up'],
    ['q', ''],
    ['cursor', ''],
    ['cursor', 'x'.repeat(501)],
  ] as const) {
    assertProblem(
      t,
      await call(user, 'GET', listUrl({ [param]: value })),
      400,
      'VALIDATION_FAILED',
      `${param}=${value.slice(0, 10)}`,
    )
  }

  // No limit: pages of 20.
  const first = await call(user, 'GET', '/projects')
  t.equal(first.statusCode, 200)
  t.equal(first.json().data.length, 20, 'the default page holds 20 projects')
  t.type(first.json().nextCursor, 'string', 'and a cursor to the rest')
  const rest = await call(user, 'GET', listUrl({ cursor: first.json().nextCursor }))
  t.equal(rest.json().data.length, 5, 'the second page holds the other 5')
  t.equal(rest.json().nextCursor, null, 'and is the last')
  t.same(
    [...ids(first.json().data), ...ids(rest.json().data)].sort(),
    ids(created).sort(),
    'together: every project once',
  )

  for (const [limit, size, more] of [
    [1, 1, true],
    [24, 24, true],
    [25, 25, false],
    [100, 25, false],
  ] as const) {
    const page = await call(user, 'GET', listUrl({ limit }))
    t.equal(page.statusCode, 200, `limit=${limit}`)
    t.equal(page.json().data.length, size, `limit=${limit}: ${size} projects`)
    t.equal(page.json().nextCursor !== null, more, `limit=${limit}: ${more ? 'a' : 'no'} next cursor`)
  }

  // Cursors this server did not issue.
  for (const [label, cursor] of [
    ['garbage', 'garbage!!'],
    ['not JSON', b64url('not json')],
    ['an object', b64url({ k: 'x', id: 'prj_x' })],
    ['numbers', b64url([1, 2])],
    ['one element', b64url(['x'])],
    ['no scope', b64url(['p01', created[1]?.id])],
    ['a forged scope', b64url(['p01', created[1]?.id, 'AAAAAAAAAAAAAAAA'])],
  ] as const) {
    assertProblem(t, await call(user, 'GET', listUrl({ cursor })), 400, 'INVALID_CURSOR', label)
  }

  // A cursor the server issued, altered by the client: its sort key must still be a timestamp when
  // the list is sorted by updatedAt (the database would refuse to compare it otherwise).
  const issued = (await call(user, 'GET', listUrl({ limit: 3 }))).json().nextCursor as string
  const [issuedKey, issuedId, issuedScope] = JSON.parse(Buffer.from(issued, 'base64url').toString('utf8'))
  t.type(issuedKey, 'string', 'an issued cursor decodes to [key, id, scope]')
  const resumed = await call(user, 'GET', listUrl({ limit: 3, cursor: b64url([issuedKey, issuedId, issuedScope]) }))
  t.equal(resumed.statusCode, 200, 'the re-encoded cursor is accepted')
  for (const key of ['not a timestamp', '2024-13-45 00:00', '', 'NUL \u0000']) {
    const tampered = b64url([key, issuedId, issuedScope])
    assertProblem(
      t,
      await call(user, 'GET', listUrl({ limit: 3, cursor: tampered })),
      400,
      'INVALID_CURSOR',
      `an updatedAt cursor whose key is ${JSON.stringify(key)}`,
    )
  }

  // A cursor continues only the listing it came from.
  const byName = await call(user, 'GET', listUrl({ sort: 'name', order: 'asc', limit: 5 }))
  const cursor = byName.json().nextCursor as string
  t.type(cursor, 'string')
  const continued = await call(user, 'GET', listUrl({ sort: 'name', order: 'asc', limit: 5, cursor }))
  t.equal(continued.statusCode, 200, 'the same listing continues')
  t.same(
    ids(continued.json().data),
    ['p05', 'p06', 'p07', 'p08', 'p09'].map((name) => created.find((p) => p.name === name)?.id),
    'with the next five names',
  )
  const otherLimit = await call(user, 'GET', listUrl({ sort: 'name', order: 'asc', limit: 2, cursor }))
  t.equal(otherLimit.statusCode, 200, 'another page size may continue it')
  t.same(ids(otherLimit.json().data), ids(continued.json().data).slice(0, 2))
  for (const [label, params] of [
    ['sort=updatedAt', { sort: 'updatedAt', order: 'asc' }],
    ['no sort (updatedAt desc)', {}],
    ['order=desc', { sort: 'name', order: 'desc' }],
    ['with q', { sort: 'name', order: 'asc', q: 'p' }],
    ['with orgId', { sort: 'name', order: 'asc', orgId: user.personalOrgId }],
  ] as const) {
    assertProblem(
      t,
      await call(user, 'GET', listUrl({ ...params, limit: 5, cursor })),
      400,
      'INVALID_CURSOR',
      `a sort=name cursor used ${label}`,
    )
  }
  const withQ = await call(user, 'GET', listUrl({ q: 'p', limit: 5 }))
  assertProblem(
    t,
    await call(user, 'GET', listUrl({ q: 'p0', limit: 5, cursor: withQ.json().nextCursor })),
    400,
    'INVALID_CURSOR',
    'a cursor of q=p used with q=p0',
  )
  const withOrg = await call(user, 'GET', listUrl({ orgId: user.personalOrgId, limit: 5 }))
  assertProblem(
    t,
    await call(user, 'GET', listUrl({ orgId: otherOrg, limit: 5, cursor: withOrg.json().nextCursor })),
    400,
    'INVALID_CURSOR',
    'a cursor of one org used with another',
  )
  assertProblem(
    t,
    await call(user, 'GET', listUrl({ limit: 5, cursor: withOrg.json().nextCursor })),
    400,
    'INVALID_CURSOR',
    'a cursor of one org used without orgId',
  )
  const stranger = await account(app)
  assertProblem(
    t,
    await call(stranger, 'GET', listUrl({ sort: 'name', order: 'asc', limit: 5, cursor })),
    400,
    'INVALID_CURSOR',
    "another user's cursor (other orgs)",
  )
})

t.test('every sort and order walks all projects once, ties broken by id', async (t) => {
  const user = await account(app)
  const orgId = await createOrg(app, user, 'Ordered')
  const names = [
    'delta',
    'alpha',
    'charlie',
    'alpha',
    'bravo',
    'alpha',
    'echo',
    'bravo',
    'charlie',
    'alpha',
    'foxtrot',
    'bravo',
  ]
  const created = await createMany(user, names, orgId)
  const [a, b, c, d, e, f, g, h, i] = ids(created)
  if (!a || !b || !c || !d || !e || !f || !g || !h || !i) throw new Error('created')

  // Later changes move projects to the front of the updatedAt order.
  for (const id of [b, g, d]) {
    const patched = await call(user, 'PATCH', `/projects/${id}`, { description: 'touched' })
    t.equal(patched.statusCode, 200, 'patched')
    t.not(patched.json().updatedAt, created.find((p) => p.id === id)?.updatedAt, 'a change moves updatedAt')
  }
  // Equal timestamps (as one transaction or a coarse clock gives them), and timestamps that differ
  // only in their microseconds, which the API's millisecond timestamps do not show.
  const setAt = (at: string, which: string[]) =>
    app.db
      .update(projects)
      .set({ updatedAt: sql`${at}::timestamptz` })
      .where(inArray(projects.id, which))
  await setAt('2024-06-01 12:00:00.123456+00', [a, e, h])
  await setAt('2024-06-01 12:00:00.123457+00', [c, i])
  await setAt('2024-06-01 12:00:00.123+00', [f])

  const keys = await sortKeys(ids(created))
  t.equal(keys.length, names.length)
  const tied = keys.filter((key) => key.at === '20240601120000123456')
  t.equal(tied.length, 3, 'three projects share one timestamp')

  for (const sort of ['updatedAt', 'name'] as const) {
    for (const order of ['asc', 'desc'] as const) {
      const expected = expectedOrder(keys, sort, order)
      for (const orgFilter of [orgId, undefined]) {
        const label = `sort=${sort} order=${order}${orgFilter ? ' orgId' : ''}`
        const { items, pages } = await walkPages<Summary>(t, (cursor) =>
          call(user, 'GET', listUrl({ sort, order, limit: 3, orgId: orgFilter, cursor })),
        )
        t.same(ids(items), expected, `${label}: every project once, in order`)
        t.same(
          pages.map((page) => page.length),
          [3, 3, 3, 3],
          `${label}: full pages, and no empty page at the end`,
        )
        const shown = sort === 'name' ? items.map((item) => item.name) : items.map((item) => Date.parse(item.updatedAt))
        const sortedShown = [...shown].sort((x, y) => (x < y ? -1 : x > y ? 1 : 0))
        if (order === 'desc') sortedShown.reverse()
        t.same(shown, sortedShown, `${label}: the visible sort keys are in order`)
      }
    }
  }

  const byDefault = await call(user, 'GET', listUrl({ limit: 100 }))
  t.same(ids(byDefault.json().data), expectedOrder(keys, 'updatedAt', 'desc'), 'the default is updatedAt desc')
  const nameOnly = await call(user, 'GET', listUrl({ sort: 'name', limit: 100 }))
  t.same(ids(nameOnly.json().data), expectedOrder(keys, 'name', 'desc'), 'the default order is desc')
})

/**
 * Walks the org's projects four at a time; before each page after the first, deletes one project
 * not seen yet and one already seen, and creates two. Keyset pagination must show every project
 * that existed for the whole walk exactly once, nothing twice, and none that was deleted first.
 */
async function walkWhileChanging(t: Test, sort: Sort, order: Order) {
  const user = await account(app)
  const orgId = await createOrg(app, user, `Busy ${sort}`)
  const initial = await createMany(
    user,
    Array.from({ length: 25 }, (_, index) => `k${index + 10}`),
    orgId,
  )
  const keys = await sortKeys(ids(initial))
  const initialOrder = expectedOrder(keys, sort, order)
  const nameOf = new Map(initial.map((project) => [project.id, project.name]))

  const seen: Summary[] = []
  const seenIds = new Set<string>()
  const deletedUnseen = new Set<string>()
  const deletedSeen = new Set<string>()
  const deleted = new Set<string>()
  const insertedAhead = new Set<string>()
  const insertedBehind = new Set<string>()
  let step = 0

  const remove = async (id: string) => {
    const response = await call(user, 'DELETE', `/projects/${id}`)
    t.equal(response.statusCode, 204, `deleted ${nameOf.get(id)}`)
    deleted.add(id)
  }

  const mutate = async () => {
    step += 1
    const last = seen.at(-1)
    if (!last) throw new Error('no page seen yet')
    const unseen = initialOrder.filter((id) => !seenIds.has(id) && !deleted.has(id))
    // The next project in line, or the last one.
    const victim = step % 2 === 1 ? unseen[0] : unseen.at(-1)
    if (victim) {
      await remove(victim)
      deletedUnseen.add(victim)
    }
    // The row the cursor points at, or an earlier one.
    const seenAlive = ids(seen).filter((id) => !deleted.has(id))
    const seenVictim = step % 2 === 1 ? seenAlive.at(-1) : seenAlive[0]
    if (seenVictim) {
      await remove(seenVictim)
      deletedSeen.add(seenVictim)
    }
    if (sort === 'name' && order === 'asc') {
      // Names just after and anywhere after the cursor's name come later in the walk; names before it
      // were passed already.
      for (const name of [`${last.name}x`, `z${step}`, `a${step}`]) {
        const project = await createProject(user, { orgId, name })
        nameOf.set(project.id, name)
        ;(name > last.name ? insertedAhead : insertedBehind).add(project.id)
      }
    } else {
      // New projects are the most recently updated: in updatedAt desc they precede the cursor.
      for (const name of [`n${step}a`, `n${step}b`]) {
        const project = await createProject(user, { orgId, name })
        nameOf.set(project.id, name)
        insertedBehind.add(project.id)
      }
    }
  }

  const { items, pages } = await walkPages<Summary>(t, async (cursor) => {
    if (cursor !== null) await mutate()
    const response = await call(user, 'GET', listUrl({ sort, order, orgId, limit: 4, cursor }))
    if (response.statusCode === 200) {
      for (const item of response.json().data as Summary[]) {
        seen.push(item)
        seenIds.add(item.id)
      }
    }
    return response
  })

  const label = `sort=${sort} order=${order}`
  t.ok(pages.length >= 5, `${label}: walked ${pages.length} pages with changes between them`)
  t.ok(deletedUnseen.size >= 3 && deletedSeen.size >= 3, `${label}: deleted seen and unseen projects`)
  assertNoDuplicates(t, items, `${label}: no project appears twice`)
  const shown = ids(items)
  const count = (id: string) => shown.filter((other) => other === id).length
  const survivors = ids(initial).filter((id) => !deleted.has(id))
  t.same(
    survivors.filter((id) => count(id) !== 1).map((id) => nameOf.get(id)),
    [],
    `${label}: every project that existed throughout appears exactly once`,
  )
  t.same(
    [...deletedUnseen].filter((id) => shown.includes(id)).map((id) => nameOf.get(id)),
    [],
    `${label}: no project deleted before it was reached appears`,
  )
  t.same(
    [...insertedBehind].filter((id) => shown.includes(id)).map((id) => nameOf.get(id)),
    [],
    `${label}: projects created before the cursor's position do not appear`,
  )
  t.same(
    [...insertedAhead].filter((id) => count(id) !== 1).map((id) => nameOf.get(id)),
    [],
    `${label}: projects created after the cursor's position appear once`,
  )
  // The walk is in order, although the rows around it changed.
  if (sort === 'name') {
    const names = items.map((item) => item.name)
    t.same(names, [...names].sort(compare), `${label}: in name order`)
  } else {
    const times = items.map((item) => Date.parse(item.updatedAt))
    t.same(
      times,
      [...times].sort((x, y) => y - x),
      `${label}: newest change first`,
    )
    t.same(
      shown,
      initialOrder.filter((id) => shown.includes(id)),
      `${label}: in the order the rows had at the start`,
    )
  }
}

t.test('pagination while projects are created and deleted: sort=name asc', async (t) => {
  await walkWhileChanging(t, 'name', 'asc')
})

t.test('pagination while projects are created and deleted: sort=updatedAt desc', async (t) => {
  await walkWhileChanging(t, 'updatedAt', 'desc')
})

t.test('q: case-insensitive substring of the name; % _ and \\ match literally', async (t) => {
  const user = await account(app)
  const orgId = await createOrg(app, user, 'Searchable')
  const names = [
    '100% done',
    '100 done',
    'a_b',
    'axb',
    'Report Alpha',
    'alpha report',
    'ALPHABET',
    'beta',
    'back\\slash',
    'backslash',
  ]
  const created = await createMany(user, names, orgId)
  const byName = new Map(created.map((project) => [project.name, project.id]))
  await createProject(user, { orgId, name: 'gamma', description: 'alpha in the description only' })

  const search = async (q: string) => {
    const response = await call(user, 'GET', listUrl({ q, orgId, limit: 100 }))
    t.equal(response.statusCode, 200, `q=${q}`)
    return (response.json().data as Summary[]).map((item) => item.name).sort()
  }
  for (const [q, expected] of [
    ['alpha', ['ALPHABET', 'Report Alpha', 'alpha report']],
    ['ALPHA', ['ALPHABET', 'Report Alpha', 'alpha report']],
    ['HA R', ['alpha report']],
    ['%', ['100% done']],
    ['0%', ['100% done']],
    ['100%', ['100% done']],
    ['100', ['100 done', '100% done']],
    ['% done', ['100% done']],
    ['%%', []],
    ['_', ['a_b']],
    ['a_b', ['a_b']],
    ['A_B', ['a_b']],
    ['\\', ['back\\slash']],
    ['k\\s', ['back\\slash']],
    ['ks', ['backslash']],
    ['gamma', ['gamma']],
    ['zzz', []],
  ] as const) {
    t.same(await search(q), [...expected].sort(), `q=${q} finds ${JSON.stringify(expected)}`)
  }

  const { items } = await walkPages<Summary>(t, (cursor) =>
    call(user, 'GET', listUrl({ q: 'alpha', limit: 1, cursor })),
  )
  t.same(
    ids(items),
    ['ALPHABET', 'alpha report', 'Report Alpha'].map((name) => byName.get(name)),
    'q walks one per page, newest first, each once',
  )

  t.equal((await call(user, 'GET', listUrl({ q: 'a'.repeat(200) }))).statusCode, 200, 'q of 200 characters')
  assertProblem(t, await call(user, 'GET', listUrl({ q: 'a'.repeat(201) })), 400, 'VALIDATION_FAILED', 'q of 201')
})

t.test('orgId: without it the list spans all my orgs; with it only that org; summaries lack data', async (t) => {
  const [user, colleague, stranger] = await Promise.all([account(app), account(app), account(app)])
  if (!user || !colleague || !stranger) throw new Error('accounts')
  const mine = await createOrg(app, user, 'Mine')
  const theirs = await createOrg(app, colleague, 'Theirs')
  await addMember(app, colleague, theirs, user, 'viewer')
  const strangers = await createOrg(app, stranger, 'Strangers')

  const marker = 'DATA-MARKER-7f3a'
  const inPersonal = await createProject(user, { name: 'personal', data: { secret: marker } })
  const inMine = [
    await createProject(user, { orgId: mine, name: 'mine 1', description: 'd1', data: { marker } }),
    await createProject(user, { orgId: mine, name: 'mine 2', data: [marker] }),
  ]
  const inTheirs = await createProject(colleague, { orgId: theirs, name: 'theirs', data: marker })
  const notMine = await createProject(stranger, { orgId: strangers, name: 'strangers' })
  await createProject(colleague, { name: "colleague's personal" })

  const everything = [inPersonal, ...inMine, inTheirs]
  const unfiltered = await call(user, 'GET', '/projects')
  t.equal(unfiltered.statusCode, 200)
  t.same(
    ids(unfiltered.json().data).sort(),
    ids(everything).sort(),
    'without orgId: the projects of every org I belong to, and only those',
  )
  const walked = await walkPages<Summary>(t, (cursor) => call(user, 'GET', listUrl({ limit: 2, cursor })))
  assertNoDuplicates(t, walked.items)
  t.same(ids(walked.items).sort(), ids(everything).sort(), 'the same when walked two per page across orgs')
  t.notOk(ids(walked.items).includes(notMine.id), "a stranger's project is never listed")

  for (const [orgId, expected, label] of [
    [mine, inMine, 'my org'],
    [theirs, [inTheirs], 'an org where I am a viewer'],
    [user.personalOrgId, [inPersonal], 'my personal org'],
  ] as const) {
    const response = await call(user, 'GET', listUrl({ orgId }))
    t.equal(response.statusCode, 200, label)
    t.same(ids(response.json().data).sort(), ids(expected).sort(), `orgId of ${label}: only its projects`)
    t.ok(
      (response.json().data as Summary[]).every((item) => item.orgId === orgId),
      `orgId of ${label}: all in that org`,
    )
  }
  assertProblem(t, await call(user, 'GET', listUrl({ orgId: strangers })), 404, 'ORG_NOT_FOUND', 'a foreign org')
  assertProblem(
    t,
    await call(user, 'GET', listUrl({ orgId: 'org_doesnotexist' })),
    404,
    'ORG_NOT_FOUND',
    'an org that does not exist',
  )

  t.notOk(unfiltered.body.includes(marker), 'no document content in the list')
  for (const summary of unfiltered.json().data as Record<string, unknown>[]) {
    t.same(Object.keys(summary).sort(), SUMMARY_FIELDS, `${summary.name}: exactly the summary fields, no data`)
    const full = await call(user, 'GET', `/projects/${summary.id}`)
    const { data: _data, ...withoutData } = full.json()
    t.same(summary, withoutData, `${summary.name}: the same values as the project itself, minus data`)
  }
  const first = (unfiltered.json().data as Summary[]).find((item) => item.id === inMine[0]?.id)
  t.match(first, {
    orgId: mine,
    name: 'mine 1',
    description: 'd1',
    version: 1,
    createdBy: user.userId,
    createdAt: String,
    updatedAt: String,
  })
})
