import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import { and, eq, sql } from 'drizzle-orm'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import t from 'tap'
import { Type } from 'typebox'
import { idempotencyKeys, projects } from '../../src/db/schema/index.js'
import { ProblemResponse } from '../../src/lib/problem.js'
import { requireAuth } from '../../src/modules/auth/authorization.js'
import { IDEMPOTENCY_TTL_MS, IdempotencyKeyHeader } from '../../src/plugins/idempotency.js'
import {
  type Account,
  account,
  assertProblem,
  bearer,
  createApiKey,
  type Test,
  uniqueAddress,
} from '../auth/support.js'
import { buildTestApp } from '../helper.js'

// ---------------------------------------------------------------------------------------------------
// Test routes: opted in with the full contract, and observable from the test (how often the handler
// ran, when it started) and controllable (when it finishes, whether it fails).

interface Deferred {
  promise: Promise<void>
  resolve: () => void
}

function deferred(): Deferred {
  let resolve!: () => void
  const promise = new Promise<void>((done) => {
    resolve = done
  })
  return { promise, resolve }
}

/** Per label: how often each test handler ran, and the gates a test holds. */
const runs = new Map<string, number>()
const gates = new Map<string, { started: Deferred; release: Deferred }>()

function countRun(route: string, label: string): number {
  const run = (runs.get(`${route}:${label}`) ?? 0) + 1
  runs.set(`${route}:${label}`, run)
  return run
}
const runsOf = (route: string, label: string) => runs.get(`${route}:${label}`) ?? 0

/** Holds the gated handler for `label` until `release` resolves; `started` tells when it runs. */
function gate(label: string) {
  const held = { started: deferred(), release: deferred() }
  gates.set(label, held)
  return held
}

const LabelBody = Type.Object(
  { label: Type.String({ minLength: 1, maxLength: 100 }), note: Type.Optional(Type.String()) },
  { additionalProperties: false },
)
const RunResult = Type.Object({ label: Type.String(), run: Type.Integer() })
const problemResponses = {
  400: ProblemResponse,
  401: ProblemResponse,
  409: ProblemResponse,
  422: ProblemResponse,
  500: ProblemResponse,
}

async function testRoutes(app: FastifyInstance) {
  app.register(
    async (scope) => {
      const r = scope.withTypeProvider<TypeBoxTypeProvider>()
      r.post(
        '/idem/gated',
        {
          config: { idempotency: true },
          schema: {
            operationId: 'testIdempotentGated',
            tags: ['test'],
            headers: Type.Object({ ...IdempotencyKeyHeader }),
            body: LabelBody,
            response: { 201: RunResult, ...problemResponses },
          },
        },
        async (request, reply) => {
          requireAuth(request)
          const { label } = request.body
          const run = countRun('gated', label)
          const held = gates.get(label)
          if (held) {
            held.started.resolve()
            await held.release.promise
          }
          return reply.code(201).header('location', `/test/idem/gated/${label}/${run}`).send({ label, run })
        },
      )
      r.post(
        '/idem/flaky',
        {
          config: { idempotency: true },
          schema: {
            operationId: 'testIdempotentFlaky',
            tags: ['test'],
            headers: Type.Object({ ...IdempotencyKeyHeader }),
            body: LabelBody,
            response: { 200: RunResult, ...problemResponses },
          },
        },
        async (request) => {
          requireAuth(request)
          const { label } = request.body
          const run = countRun('flaky', label)
          if (run === 1) throw new Error('flaky handler fails on its first run')
          return { label, run }
        },
      )
    },
    { prefix: '/test' },
  )
}

// ---------------------------------------------------------------------------------------------------
// Helpers

interface Caller {
  headers: { authorization: string }
}

/** A JSON request as `who`, with an Idempotency-Key unless `key` is null; the body may be raw text. */
function send(
  app: FastifyInstance,
  who: Caller | null,
  method: 'POST' | 'PATCH',
  url: string,
  body: Record<string, unknown> | string,
  key: string | null,
  extraHeaders: Record<string, string> = {},
): Promise<LightMyRequestResponse> {
  return app.inject({
    method,
    url,
    remoteAddress: uniqueAddress(),
    headers: {
      'content-type': 'application/json',
      ...(who ? who.headers : {}),
      ...(key === null ? {} : { 'idempotency-key': key }),
      ...extraHeaders,
    },
    payload: typeof body === 'string' ? body : JSON.stringify(body),
  })
}

async function projectCount(app: FastifyInstance, orgId: string): Promise<number> {
  const rows = await app.db.select({ id: projects.id }).from(projects).where(eq(projects.orgId, orgId))
  return rows.length
}

async function keyRows(app: FastifyInstance, key: string) {
  return app.db.select().from(idempotencyKeys).where(eq(idempotencyKeys.key, key))
}

function assertReplayOf(t: Test, replay: LightMyRequestResponse, original: LightMyRequestResponse) {
  t.equal(replay.statusCode, original.statusCode, 'replayed status')
  t.equal(replay.body, original.body, 'replayed body, byte for byte')
  for (const name of ['content-type', 'location', 'etag', 'cache-control']) {
    t.equal(replay.headers[name], original.headers[name], `replayed ${name}`)
  }
  t.equal(replay.headers['idempotent-replayed'], 'true', 'marked idempotent-replayed: true')
  t.not(replay.headers['x-request-id'], original.headers['x-request-id'], 'a replay has its own request id')
}

const uniqueKey = (label: string) => `${label}-${Math.random().toString(36).slice(2)}`

let app: FastifyInstance
let alice: Account
let bob: Account

t.before(async () => {
  app = await buildTestApp(t, { extend: testRoutes })
  alice = await account(app)
  bob = await account(app)
})

// ---------------------------------------------------------------------------------------------------

t.test('replay: the same key and request answer the stored 201 without creating again', async (t) => {
  const key = uniqueKey('replay')
  const before = await projectCount(app, alice.personalOrgId)
  const body = { name: 'Replayed project', description: 'first', data: { nodes: [1, 2, 3] } }

  const first = await send(app, alice, 'POST', '/api/v1/projects', body, key)
  t.equal(first.statusCode, 201, first.body)
  t.notOk(first.headers['idempotent-replayed'], 'the first response is not marked as a replay')
  const created = first.json()
  t.match(first.headers.location, `/api/v1/projects/${created.id}`)
  t.equal(first.headers.etag, '"1"')

  const second = await send(app, alice, 'POST', '/api/v1/projects', body, key)
  assertReplayOf(t, second, first)
  t.equal(second.json().id, created.id, 'the same project')
  t.equal(await projectCount(app, alice.personalOrgId), before + 1, 'exactly one project was created')

  const [row] = await keyRows(app, key)
  t.ok(row, 'the key is stored')
  t.equal(row?.principal, alice.userId, 'scoped to the user')
  t.equal(row?.route, 'POST /api/v1/projects', 'scoped to the method and route pattern')
  t.equal(row?.state, 'completed')
  t.equal(row?.responseStatus, 201)
  const ttl = (row?.expiresAt.getTime() ?? 0) - (row?.createdAt.getTime() ?? 0)
  t.ok(Math.abs(ttl - IDEMPOTENCY_TTL_MS) < 60_000, `kept for 24 hours (${ttl} ms)`)
})

t.test('replay: key order of the JSON body does not matter, at any depth', async (t) => {
  const key = uniqueKey('order')
  const before = await projectCount(app, alice.personalOrgId)
  const first = await send(
    app,
    alice,
    'POST',
    '/api/v1/projects',
    '{"name":"Ordered","description":"d","data":{"x":1,"y":{"a":1,"b":2}}}',
    key,
  )
  t.equal(first.statusCode, 201, first.body)
  const swapped = await send(
    app,
    alice,
    'POST',
    '/api/v1/projects',
    '{"data":{"y":{"b":2,"a":1},"x":1},"description":"d","name":"Ordered"}',
    key,
  )
  assertReplayOf(t, swapped, first)
  t.equal(await projectCount(app, alice.personalOrgId), before + 1, 'one project')
  // Array order is data, not layout: a different order is a different request.
  const reordered = await send(app, alice, 'POST', '/api/v1/projects', { name: 'Ordered', data: [2, 1] }, key)
  assertProblem(t, reordered, 422, 'IDEMPOTENCY_KEY_REUSED')
})

t.test('reuse: the same key with a different request is a 422 and creates nothing', async (t) => {
  const key = uniqueKey('reuse')
  const first = await send(app, alice, 'POST', '/api/v1/projects', { name: 'Original' }, key)
  t.equal(first.statusCode, 201, first.body)
  const before = await projectCount(app, alice.personalOrgId)

  const otherBody = await send(app, alice, 'POST', '/api/v1/projects', { name: 'Something else' }, key)
  assertProblem(t, otherBody, 422, 'IDEMPOTENCY_KEY_REUSED')
  t.notOk(otherBody.headers['idempotent-replayed'], 'a refusal is not a replay')
  const extraField = await send(app, alice, 'POST', '/api/v1/projects', { name: 'Original', description: '' }, key)
  assertProblem(t, extraField, 422, 'IDEMPOTENCY_KEY_REUSED', 'an added field')
  t.equal(await projectCount(app, alice.personalOrgId), before, 'nothing was created')

  // The stored response is untouched by the refusals: the original request still replays it.
  const again = await send(app, alice, 'POST', '/api/v1/projects', { name: 'Original' }, key)
  assertReplayOf(t, again, first)
})

t.test('the URL is part of the request: the same key on the same route with another query is a 422', async (t) => {
  const key = uniqueKey('query')
  const body = { name: 'Imported', data: { a: 1 } }
  const plain = await send(app, alice, 'POST', '/api/v1/projects/import', body, key)
  t.equal(plain.statusCode, 201, plain.body)
  const withQuery = await send(app, alice, 'POST', `/api/v1/projects/import?orgId=${alice.personalOrgId}`, body, key)
  assertProblem(t, withQuery, 422, 'IDEMPOTENCY_KEY_REUSED')
})

t.test('keys are scoped per route: the same key on PATCH and import is independent', async (t) => {
  const key = uniqueKey('routes')
  const created = await send(app, alice, 'POST', '/api/v1/projects', { name: 'Scoped' }, key)
  t.equal(created.statusCode, 201, created.body)
  const id = created.json().id

  const patched = await send(app, alice, 'PATCH', `/api/v1/projects/${id}`, { name: 'Scoped, renamed' }, key)
  t.equal(patched.statusCode, 200, patched.body)
  t.notOk(patched.headers['idempotent-replayed'], 'PATCH ran, it did not replay the POST')
  t.equal(patched.json().name, 'Scoped, renamed')
  t.equal(patched.json().version, 2)

  const imported = await send(app, alice, 'POST', '/api/v1/projects/import', { name: 'Scoped import' }, key)
  t.equal(imported.statusCode, 201, imported.body)
  t.notOk(imported.headers['idempotent-replayed'])
  t.not(imported.json().id, id, 'a new project')

  const routes = (await keyRows(app, key)).map((row) => row.route).sort()
  t.same(routes, ['PATCH /api/v1/projects/:id', 'POST /api/v1/projects', 'POST /api/v1/projects/import'])

  // Each route replays its own response.
  const patchedAgain = await send(app, alice, 'PATCH', `/api/v1/projects/${id}`, { name: 'Scoped, renamed' }, key)
  assertReplayOf(t, patchedAgain, patched)
  const createdAgain = await send(app, alice, 'POST', '/api/v1/projects', { name: 'Scoped' }, key)
  assertReplayOf(t, createdAgain, created)
})

t.test('keys are scoped per user: another user with the same key and body creates their own', async (t) => {
  const key = uniqueKey('users')
  const body = { name: 'Shared key' }
  const aliceBefore = await projectCount(app, alice.personalOrgId)
  const bobBefore = await projectCount(app, bob.personalOrgId)

  const byAlice = await send(app, alice, 'POST', '/api/v1/projects', body, key)
  const byBob = await send(app, bob, 'POST', '/api/v1/projects', body, key)
  t.equal(byAlice.statusCode, 201, byAlice.body)
  t.equal(byBob.statusCode, 201, byBob.body)
  t.notOk(byBob.headers['idempotent-replayed'], "Bob does not get Alice's response")
  t.not(byBob.json().id, byAlice.json().id)
  t.equal(byBob.json().orgId, bob.personalOrgId, "in Bob's org")
  t.equal(await projectCount(app, alice.personalOrgId), aliceBefore + 1)
  t.equal(await projectCount(app, bob.personalOrgId), bobBefore + 1)

  // A different body from Bob is not a reuse of Alice's key.
  const bobOther = await send(app, bob, 'POST', '/api/v1/projects', { name: 'Other' }, uniqueKey('bob'))
  t.equal(bobOther.statusCode, 201)
  assertReplayOf(t, await send(app, bob, 'POST', '/api/v1/projects', body, key), byBob)
  assertReplayOf(t, await send(app, alice, 'POST', '/api/v1/projects', body, key), byAlice)
})

t.test('in flight: a retry while the first request runs gets 409 with Retry-After', async (t) => {
  const key = uniqueKey('inflight')
  const label = uniqueKey('gated')
  const held = gate(label)

  const first = send(app, alice, 'POST', '/test/idem/gated', { label }, key)
  await held.started.promise

  const concurrent = await send(app, alice, 'POST', '/test/idem/gated', { label }, key)
  assertProblem(t, concurrent, 409, 'IDEMPOTENCY_KEY_IN_USE')
  const retryAfter = Number(concurrent.headers['retry-after'])
  t.ok(Number.isInteger(retryAfter) && retryAfter > 0, `Retry-After is a positive number of seconds (${retryAfter})`)
  t.notOk(concurrent.headers['idempotent-replayed'])

  const otherBody = await send(app, alice, 'POST', '/test/idem/gated', { label, note: 'changed' }, key)
  assertProblem(t, otherBody, 422, 'IDEMPOTENCY_KEY_REUSED', 'a different body while running')
  t.equal(runsOf('gated', label), 1, 'neither refusal ran the handler')

  held.release.resolve()
  const completed = await first
  t.equal(completed.statusCode, 201, completed.body)
  t.strictSame(completed.json(), { label, run: 1 })

  const third = await send(app, alice, 'POST', '/test/idem/gated', { label }, key)
  assertReplayOf(t, third, completed)
  t.equal(runsOf('gated', label), 1, 'the handler ran once')
})

t.test('5xx releases the key: a retry runs the handler again, a later retry replays', async (t) => {
  const key = uniqueKey('flaky')
  const label = uniqueKey('flaky')

  const failed = await send(app, alice, 'POST', '/test/idem/flaky', { label }, key)
  assertProblem(t, failed, 500, 'INTERNAL_ERROR')
  t.same(await keyRows(app, key), [], 'nothing is kept for a failed request')

  const retried = await send(app, alice, 'POST', '/test/idem/flaky', { label }, key)
  t.equal(retried.statusCode, 200, retried.body)
  t.strictSame(retried.json(), { label, run: 2 }, 'the handler ran again')
  t.notOk(retried.headers['idempotent-replayed'])

  const later = await send(app, alice, 'POST', '/test/idem/flaky', { label }, key)
  assertReplayOf(t, later, retried)
  t.equal(runsOf('flaky', label), 2, 'two runs in all')
})

t.test('4xx answers are stored: a stale If-Match 412 replays even after the ETag matches', async (t) => {
  const created = await send(app, alice, 'POST', '/api/v1/projects', { name: 'Conditional' }, null)
  t.equal(created.statusCode, 201)
  const id = created.json().id
  const key = uniqueKey('stale')
  const patch = { name: 'Conditional, renamed by the retried request' }

  const stale = await send(app, alice, 'PATCH', `/api/v1/projects/${id}`, patch, key, { 'if-match': '"2"' })
  assertProblem(t, stale, 412, 'PRECONDITION_FAILED')
  const [row] = await keyRows(app, key)
  t.equal(row?.state, 'completed', 'the 412 is stored')
  t.equal(row?.responseStatus, 412)

  // Somebody else moves the project to version 2, the ETag the first request named.
  const other = await send(app, alice, 'PATCH', `/api/v1/projects/${id}`, { description: 'by someone else' }, null)
  t.equal(other.statusCode, 200)
  t.equal(other.headers.etag, '"2"')

  const retry = await send(app, alice, 'PATCH', `/api/v1/projects/${id}`, patch, key, { 'if-match': '"2"' })
  assertReplayOf(t, retry, stale)
  t.equal(retry.json().code, 'PRECONDITION_FAILED')

  const current = await app.inject({ method: 'GET', url: `/api/v1/projects/${id}`, headers: alice.headers })
  t.equal(current.json().name, 'Conditional', 'the replay did not apply the patch')
  t.equal(current.json().version, 2)
})

t.test('a running claim whose lease expired is taken over by a retry with the same body', async (t) => {
  const key = uniqueKey('lease')
  const label = uniqueKey('lease')
  const route = '/test/idem/gated'
  const first = await send(app, alice, 'POST', route, { label }, key)
  t.equal(first.statusCode, 201, first.body)
  t.equal(runsOf('gated', label), 1)

  // As if the first request were still running (its process died before storing a response).
  const where = and(eq(idempotencyKeys.key, key), eq(idempotencyKeys.principal, alice.userId))
  await app.db
    .update(idempotencyKeys)
    .set({ state: 'running', leaseExpiresAt: sql`now() + interval '1 minute'`, responseStatus: null })
    .where(where)
  const leased = await send(app, alice, 'POST', route, { label }, key)
  assertProblem(t, leased, 409, 'IDEMPOTENCY_KEY_IN_USE', 'lease still valid')
  t.equal(runsOf('gated', label), 1)

  await app.db
    .update(idempotencyKeys)
    .set({ leaseExpiresAt: sql`now() - interval '1 second'` })
    .where(where)
  const otherBody = await send(app, alice, 'POST', route, { label, note: 'another request' }, key)
  assertProblem(t, otherBody, 422, 'IDEMPOTENCY_KEY_REUSED', 'an expired lease is not taken by another request')
  t.equal(runsOf('gated', label), 1)

  const takeover = await send(app, alice, 'POST', route, { label }, key)
  t.equal(takeover.statusCode, 201, takeover.body)
  t.notOk(takeover.headers['idempotent-replayed'], 'ran, not replayed')
  t.strictSame(takeover.json(), { label, run: 2 }, 'the handler ran again')
  const [row] = await keyRows(app, key)
  t.equal(row?.state, 'completed')
  t.equal(row?.responseStatus, 201)

  assertReplayOf(t, await send(app, alice, 'POST', route, { label }, key), takeover)
  t.equal(runsOf('gated', label), 2)
})

t.test('an expired key is treated as new, for the same or a different request', async (t) => {
  const key = uniqueKey('expired')
  const label = uniqueKey('expired')
  const route = '/test/idem/gated'
  const where = and(eq(idempotencyKeys.key, key), eq(idempotencyKeys.principal, alice.userId))
  const expire = () =>
    app.db
      .update(idempotencyKeys)
      .set({ expiresAt: sql`now() - interval '1 second'` })
      .where(where)

  t.equal((await send(app, alice, 'POST', route, { label }, key)).statusCode, 201)
  await expire()
  const again = await send(app, alice, 'POST', route, { label }, key)
  t.equal(again.statusCode, 201, again.body)
  t.notOk(again.headers['idempotent-replayed'], 'not replayed')
  t.strictSame(again.json(), { label, run: 2 })
  const [row] = await keyRows(app, key)
  t.ok((row?.expiresAt.getTime() ?? 0) > Date.now() + IDEMPOTENCY_TTL_MS - 60_000, 'a fresh 24 h expiry')
  assertReplayOf(t, await send(app, alice, 'POST', route, { label }, key), again)

  await expire()
  const different = await send(app, alice, 'POST', route, { label, note: 'new request' }, key)
  t.equal(different.statusCode, 201, 'a different body on an expired key is no reuse')
  t.strictSame(different.json(), { label, run: 3 })
})

t.test('the Idempotency-Key header is validated: 1 to 255 characters', async (t) => {
  const before = await projectCount(app, alice.personalOrgId)
  const tooLong = await send(app, alice, 'POST', '/api/v1/projects', { name: 'Long key' }, 'k'.repeat(256))
  assertProblem(t, tooLong, 400, 'VALIDATION_FAILED', '256 characters')
  t.match(tooLong.json().errors, [{ path: '/headers/idempotency-key' }])
  const empty = await send(app, alice, 'POST', '/api/v1/projects', { name: 'Empty key' }, '')
  assertProblem(t, empty, 400, 'VALIDATION_FAILED', 'empty')
  t.equal(await projectCount(app, alice.personalOrgId), before, 'neither created anything')
  t.same(await keyRows(app, 'k'.repeat(256)), [])

  const longest = 'k'.repeat(255)
  const accepted = await send(app, alice, 'POST', '/api/v1/projects', { name: 'Longest key' }, longest)
  t.equal(accepted.statusCode, 201, '255 characters are accepted')
  assertReplayOf(t, await send(app, alice, 'POST', '/api/v1/projects', { name: 'Longest key' }, longest), accepted)
})

t.test('without a key every request runs', async (t) => {
  const before = await projectCount(app, bob.personalOrgId)
  const rowsBefore = (await app.db.select().from(idempotencyKeys)).length
  const first = await send(app, bob, 'POST', '/api/v1/projects', { name: 'No key' }, null)
  const second = await send(app, bob, 'POST', '/api/v1/projects', { name: 'No key' }, null)
  t.equal(first.statusCode, 201)
  t.equal(second.statusCode, 201)
  t.notOk(second.headers['idempotent-replayed'])
  t.not(first.json().id, second.json().id, 'two projects')
  t.equal(await projectCount(app, bob.personalOrgId), before + 2)
  t.equal((await app.db.select().from(idempotencyKeys)).length, rowsBefore, 'no key stored')
})

t.test('a request refused before the handler stores nothing', async (t) => {
  t.test('no Authorization: the route answers 401', async (t) => {
    const key = uniqueKey('anonymous')
    const response = await send(app, null, 'POST', '/api/v1/projects', { name: 'Anonymous' }, key)
    assertProblem(t, response, 401, 'UNAUTHORIZED')
    t.same(await keyRows(app, key), [], 'nothing stored')
    const invalid = await send(
      app,
      { headers: bearer('not-a-token') },
      'POST',
      '/api/v1/projects',
      { name: 'Anonymous' },
      key,
    )
    assertProblem(t, invalid, 401, 'INVALID_TOKEN')
    t.same(await keyRows(app, key), [], 'nothing stored for an invalid token either')
  })

  t.test('an invalid body: 400, and the corrected request may use the key', async (t) => {
    const key = uniqueKey('invalid')
    const invalid = await send(app, alice, 'POST', '/api/v1/projects', { name: 'Bad', color: 'red' }, key)
    assertProblem(t, invalid, 400, 'VALIDATION_FAILED')
    t.same(await keyRows(app, key), [], 'nothing stored')
    const corrected = await send(app, alice, 'POST', '/api/v1/projects', { name: 'Good' }, key)
    t.equal(corrected.statusCode, 201, 'not a reuse of the key')
  })
})

t.test('an API key and its creator are different principals', async (t) => {
  const apiKey = await createApiKey(app, alice, alice.personalOrgId, ['projects:read', 'projects:write'])
  const asKey = bearer(apiKey.key)
  const key = uniqueKey('principal')
  const body = { name: 'By user or key' }
  const before = await projectCount(app, alice.personalOrgId)

  const byUser = await send(app, alice, 'POST', '/api/v1/projects', body, key)
  const byApiKey = await send(app, { headers: asKey }, 'POST', '/api/v1/projects', body, key)
  t.equal(byUser.statusCode, 201, byUser.body)
  t.equal(byApiKey.statusCode, 201, byApiKey.body)
  t.notOk(byApiKey.headers['idempotent-replayed'], "the key does not replay its creator's response")
  t.not(byApiKey.json().id, byUser.json().id)
  t.equal(await projectCount(app, alice.personalOrgId), before + 2, 'both created, in the same org')

  const principals = (await keyRows(app, key)).map((row) => row.principal).sort()
  t.same(principals, [alice.userId, apiKey.id].sort(), 'stored under the user id and the API key id')

  assertReplayOf(t, await send(app, { headers: asKey }, 'POST', '/api/v1/projects', body, key), byApiKey)
  assertReplayOf(t, await send(app, alice, 'POST', '/api/v1/projects', body, key), byUser)
  const reused = await send(app, { headers: asKey }, 'POST', '/api/v1/projects', { name: 'Else' }, key)
  assertProblem(t, reused, 422, 'IDEMPOTENCY_KEY_REUSED')
})

t.test('an opted-in route must declare the header, 409 and 422, or the app does not start', async (t) => {
  const success = { 201: RunResult }
  const headers = Type.Object({ ...IdempotencyKeyHeader })
  const broken: Record<string, { url: string; schema: Record<string, unknown>; message: RegExp }> = {
    'no Idempotency-Key header': {
      url: '/guard/no-header',
      schema: { response: { ...success, 409: ProblemResponse, 422: ProblemResponse } },
      message: /^Route POST \/guard\/no-header opts into idempotency but lacks the Idempotency-Key header$/,
    },
    'a headers schema without the key': {
      url: '/guard/other-header',
      schema: {
        headers: Type.Object({ 'if-match': Type.Optional(Type.String()) }),
        response: { ...success, 409: ProblemResponse, 422: ProblemResponse },
      },
      message: /^Route POST \/guard\/other-header opts into idempotency but lacks the Idempotency-Key header$/,
    },
    'no 422': {
      url: '/guard/no-422',
      schema: { headers, response: { ...success, 409: ProblemResponse } },
      message: /^Route POST \/guard\/no-422 opts into idempotency but lacks a 422 response$/,
    },
    'nothing declared': {
      url: '/guard/nothing',
      schema: { response: success },
      message:
        /Route POST \/guard\/nothing opts into idempotency but lacks the Idempotency-Key header, a 409 response, a 422 response/,
    },
  }
  for (const [label, route] of Object.entries(broken)) {
    t.test(label, async (t) => {
      await t.rejects(
        buildTestApp(t, {
          extend: (app) => {
            app.register(async (scope) => {
              scope.post(
                route.url,
                {
                  config: { idempotency: true },
                  schema: { operationId: 'guardRoute', tags: ['test'], body: LabelBody, ...route.schema },
                },
                async () => ({ label: 'x', run: 1 }),
              )
            })
          },
        }),
        route.message,
      )
    })
  }
})
