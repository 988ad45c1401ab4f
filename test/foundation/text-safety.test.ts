import { randomUUID } from 'node:crypto'
import { eq, sql } from 'drizzle-orm'
import type { FastifyInstance } from 'fastify'
import t from 'tap'
import { projects, users } from '../../src/db/schema/index.js'
import { containsNulEscape } from '../../src/lib/json.js'
import { type Account, account, assertProblem, PASSWORD, uniqueAddress, uniqueEmail } from '../auth/support.js'
import { buildTestApp, LogCapture } from '../helper.js'

// PostgreSQL cannot store the NUL character in text or jsonb. A body that escapes one is refused
// by the JSON parser; a NUL that reaches a query from a URL is the database's 22021, turned into the
// same 400. Either way the caller gets INVALID_CHARACTER, never a 500.

/** A signup whose body is the given JSON text, sent as is. */
function signupRaw(app: FastifyInstance, json: string) {
  return app.inject({
    method: 'POST',
    url: '/api/v1/auth/signup',
    remoteAddress: uniqueAddress(),
    headers: { 'content-type': 'application/json' },
    payload: json,
  })
}

async function usersWithEmail(app: FastifyInstance, email: string) {
  return app.db.select().from(users).where(eq(users.email, email))
}

const logs = new LogCapture()
let app: FastifyInstance
let alice: Account

t.before(async () => {
  app = await buildTestApp(t, { logs })
  alice = await account(app)
})

t.test('containsNulEscape finds \\u0000 escapes, not escaped backslashes before "u0000"', async (t) => {
  const cases: [string, boolean][] = [
    ['{"name":"a\\u0000b"}', true],
    ['"\\u0000"', true],
    ['{"na\\u0000me":1}', true],
    ['"\\\\u0000"', false], // an escaped backslash, then the letters u0000
    ['"\\\\\\u0000"', true], // an escaped backslash, then a NUL escape
    ['"\\\\\\\\u0000"', false], // two escaped backslashes, then the letters
    ['"\\\\u0000 and then \\u0000"', true], // the second occurrence is a real escape
    ['"\\u0001"', false],
    ['"\\u00001"', true], // NUL followed by the digit 1
    ['"u0000"', false],
    ['{"name":"plain text"}', false],
    ['', false],
  ]
  for (const [text, expected] of cases) {
    t.equal(containsNulEscape(text), expected, `${JSON.stringify(text)} -> ${expected}`)
    // The cases agree with what JSON.parse makes of them.
    if (text.startsWith('"')) t.equal(JSON.parse(text).includes('\u0000'), expected, `parsed ${text}`)
  }
})

t.test('a signup with \\u0000 in the name: 400 INVALID_CHARACTER, no account', async (t) => {
  const email = uniqueEmail('nul')
  const response = await signupRaw(app, `{"email":"${email}","password":"${PASSWORD}","name":"a\\u0000b"}`)
  assertProblem(t, response, 400, 'INVALID_CHARACTER')
  t.match(response.json().detail, /NUL/)
  t.same(await usersWithEmail(app, email), [], 'no user row')

  const inKey = await signupRaw(app, `{"email":"${email}","password":"${PASSWORD}","n\\u0000":"x"}`)
  assertProblem(t, inKey, 400, 'INVALID_CHARACTER', 'a NUL in a key')
  t.same(await usersWithEmail(app, email), [], 'still no user row')

  // The same signup without the NUL goes through: only the character was refused.
  const clean = await signupRaw(app, `{"email":"${email}","password":"${PASSWORD}","name":"ab"}`)
  t.equal(clean.statusCode, 201, 'the same signup without the NUL succeeds')
  t.equal((await usersWithEmail(app, email)).length, 1)
})

t.test('an escaped backslash followed by "u0000" is ordinary text', async (t) => {
  const email = uniqueEmail('backslash')
  const response = await signupRaw(app, `{"email":"${email}","password":"${PASSWORD}","name":"a\\\\u0000"}`)
  t.equal(response.statusCode, 201, 'signed up')
  t.equal(response.json().user.name, 'a\\u0000', 'stored as backslash, u, 0000')
  const [row] = await usersWithEmail(app, email)
  t.equal(row?.name, 'a\\u0000')
  t.equal(row?.name?.length, 7)
})

t.test('a NUL in a project body (merge patch or create) is refused before the database', async (t) => {
  const created = await app.inject({
    method: 'POST',
    url: '/api/v1/projects',
    headers: { ...alice.headers, 'content-type': 'application/json' },
    payload: '{"name":"Doc","data":{"text":"x\\u0000y"}}',
  })
  assertProblem(t, created, 400, 'INVALID_CHARACTER', 'create')

  const plain = await app.inject({
    method: 'POST',
    url: '/api/v1/projects',
    headers: alice.headers,
    payload: { name: 'Doc' },
  })
  t.equal(plain.statusCode, 201)
  const id = plain.json().id
  const patched = await app.inject({
    method: 'PATCH',
    url: `/api/v1/projects/${id}`,
    headers: { ...alice.headers, 'content-type': 'application/merge-patch+json' },
    payload: '{"data":{"k":"\\u0000"}}',
  })
  assertProblem(t, patched, 400, 'INVALID_CHARACTER', 'merge patch')
  const [row] = await app.db.select().from(projects).where(eq(projects.id, id))
  t.equal(row?.version, 1, 'the project is unchanged')
})

t.test('a NUL in the query string or path: 400 INVALID_CHARACTER, not 500', async (t) => {
  for (const url of ['/api/v1/projects?q=%00', '/api/v1/projects?q=a%00b', '/api/v1/projects/prj_%00']) {
    const response = await app.inject({ method: 'GET', url, headers: alice.headers })
    assertProblem(t, response, 400, 'INVALID_CHARACTER', url)
    t.equal(response.json().detail, 'Text must not contain the NUL character.')
  }
  // The database connection is fine afterwards.
  const list = await app.inject({ method: 'GET', url: '/api/v1/projects?q=Doc', headers: alice.headers })
  t.equal(list.statusCode, 200, 'a later query works')
  t.ok(list.json().data.length >= 1, 'and finds the project')
})

t.test('the log line of a failed query does not carry its parameters', async (t) => {
  await app.db.execute(sql`
    create function test_refuse_project() returns trigger language plpgsql as $$
    begin
      raise exception 'projects are refused by a test trigger';
    end
    $$`)
  await app.db.execute(sql`
    create trigger test_refuse_project before insert on projects
    for each row execute function test_refuse_project()`)
  t.teardown(async () => {
    await app.db.execute(sql`drop trigger test_refuse_project on projects`)
    await app.db.execute(sql`drop function test_refuse_project()`)
  })

  const marker = `CONFIDENTIAL-${randomUUID()}`
  const response = await app.inject({
    method: 'POST',
    url: '/api/v1/projects',
    headers: alice.headers,
    payload: { name: `${marker}-name`, description: `${marker}-description`, data: { secret: marker } },
  })
  assertProblem(t, response, 500, 'INTERNAL_ERROR')
  t.notOk(response.body.includes(marker), 'not in the response')
  const requestId = response.json().requestId

  const index = logs.lines.findIndex((line) => line.requestId === requestId && line.msg === 'unhandled error')
  t.ok(index >= 0, 'the error is logged')
  const logged = logs.lines[index] as { err?: Record<string, unknown> }
  t.equal(logged.err?.params, '[REDACTED]', 'params are replaced')
  t.notOk(logs.raw[index]?.includes(marker), 'no parameter value anywhere in the line (message, stack, cause)')
  t.match(logs.raw[index], /refused by a test trigger/, "the database's own message is kept for the operator")
  t.notOk(
    logs.raw.some((line) => line.includes(marker)),
    'no log line of the request carries the values it sent',
  )
})

t.test('the debug line of a refused query parameter does not carry it either', async (t) => {
  const marker = `QUERYMARK${randomUUID().replaceAll('-', '')}`
  const response = await app.inject({
    method: 'GET',
    url: `/api/v1/projects/${marker}%00`,
    headers: alice.headers,
  })
  assertProblem(t, response, 400, 'INVALID_CHARACTER')
  const requestId = response.json().requestId
  const index = logs.lines.findIndex((line) => line.requestId === requestId && line.msg === 'unstorable text')
  t.ok(index >= 0, 'logged at debug')
  const logged = logs.lines[index] as { err?: Record<string, unknown> }
  t.equal(logged.err?.params, '[REDACTED]', 'params are replaced')
  t.notOk(logs.raw[index]?.includes(marker), 'the parameter value is not in the line')
})
