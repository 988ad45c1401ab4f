import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import { sql } from 'drizzle-orm'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import t from 'tap'
import { Type } from 'typebox'
import { HttpProblem, ProblemResponse, problems } from '../../src/lib/problem.js'
import { buildTestApp, LogCapture } from '../helper.js'

/** The test object tap passes to a subtest. */
type Test = Parameters<Parameters<typeof t.test>[0]>[0]

const SECRET = 'SECRET-VALUE-123'
const LEAKY_MESSAGE = "select * from users where password = 'hunter2-LEAK'"

/** Problem statuses every test route declares, so responses are serialised through the Problem schema. */
const problemResponses = {
  400: ProblemResponse,
  401: ProblemResponse,
  403: ProblemResponse,
  404: ProblemResponse,
  409: ProblemResponse,
  412: ProblemResponse,
  413: ProblemResponse,
  415: ProblemResponse,
  422: ProblemResponse,
  429: ProblemResponse,
  500: ProblemResponse,
  502: ProblemResponse,
  503: ProblemResponse,
}

/** Test-only routes, declared with the full contract production routes must follow. */
async function testRoutes(app: FastifyInstance) {
  app.register(
    async (scope) => {
      const r = scope.withTypeProvider<TypeBoxTypeProvider>()
      const WidgetBody = Type.Object(
        {
          name: Type.String({ minLength: 1, maxLength: 200, pattern: '^[a-z ]+$' }),
          count: Type.Optional(Type.Integer({ minimum: 0 })),
          data: Type.Optional(Type.Unknown()),
        },
        { additionalProperties: false },
      )
      const Widget = Type.Object({ name: Type.String(), count: Type.Optional(Type.Integer()) })

      r.post(
        '/widgets',
        {
          schema: {
            operationId: 'testCreateWidget',
            tags: ['test'],
            body: WidgetBody,
            response: { 201: Widget, ...problemResponses },
          },
        },
        async (request, reply) => {
          const { name, count } = request.body
          return reply.code(201).send(count === undefined ? { name } : { name, count })
        },
      )
      r.put(
        '/widgets',
        {
          schema: {
            operationId: 'testReplaceWidgets',
            tags: ['test'],
            body: WidgetBody,
            response: { 200: Widget, ...problemResponses },
          },
        },
        async (request) => ({ name: request.body.name }),
      )
      r.get(
        '/widgets/:id',
        {
          schema: {
            operationId: 'testGetWidget',
            tags: ['test'],
            params: Type.Object({ id: Type.String() }, { additionalProperties: false }),
            response: { 200: Widget, ...problemResponses },
          },
        },
        async (request) => ({ name: request.params.id }),
      )
      r.get(
        '/search',
        {
          schema: {
            operationId: 'testSearch',
            tags: ['test'],
            querystring: Type.Object(
              { limit: Type.Integer({ minimum: 1, maximum: 100 }), q: Type.Optional(Type.String({ maxLength: 5 })) },
              { additionalProperties: false },
            ),
            response: {
              200: Type.Object({ limit: Type.Number(), limitType: Type.String() }),
              ...problemResponses,
            },
          },
        },
        async (request) => ({ limit: request.query.limit, limitType: typeof request.query.limit }),
      )
      r.get(
        '/problems/:kind',
        {
          schema: {
            operationId: 'testRaiseProblem',
            tags: ['test'],
            params: Type.Object({ kind: Type.String() }, { additionalProperties: false }),
            response: { 200: Type.Object({ ok: Type.Boolean() }), ...problemResponses },
          },
        },
        async (request, reply) => {
          switch (request.params.kind) {
            case 'unauthorized':
              throw problems.unauthorized()
            case 'forbidden':
              throw problems.forbidden('Only owners may delete this project.', 'ROLE_REQUIRED')
            case 'conflict':
              throw problems.conflict('A project with this name already exists.', 'PROJECT_NAME_TAKEN')
            case 'precondition':
              throw problems.preconditionFailed('The project changed since it was read.', 'ETAG_MISMATCH')
            case 'unprocessable':
              throw problems.unprocessable('The card was declined.', 'CARD_DECLINED')
            case 'rate-limited':
              throw new HttpProblem(429, 'RATE_LIMITED', 'Too many login attempts.', {
                headers: { 'retry-after': '7' },
              })
            case 'not-configured':
              throw problems.notConfigured('Billing')
            case 'unavailable':
              throw problems.unavailable('Maintenance in progress.', 'MAINTENANCE', 30)
            case 'field-errors':
              throw problems.badRequest('WEAK_PASSWORD', 'The password is too weak.', [
                { path: '/body/password', message: 'is too short' },
              ])
            case 'sensible-reply':
              return reply.conflict('This slug is already in use.')
            case 'sensible-throw':
              throw scope.httpErrors.conflict('The version is out of date.')
            case 'sensible-5xx':
              throw scope.httpErrors.serviceUnavailable('redis at 10.1.2.3:6379 refused the connection')
            case 'crash':
              throw new Error(LEAKY_MESSAGE)
            case 'crash-502':
              throw Object.assign(new Error(`upstream answered {"api_key":"sk_live_${SECRET}"}`), { statusCode: 502 })
            case 'client-unexposed':
              throw Object.assign(new Error(`internal parser state ${SECRET}`), { statusCode: 400 })
            case 'db':
              await scope.db.execute(sql`select * from no_such_table`)
              return { ok: true }
            default:
              return { ok: true }
          }
        },
      )
      // Hidden routes are exempt from the contract: no operationId, tags or response schemas.
      r.get('/hidden', { schema: { hide: true } }, async () => 'hidden but served')
    },
    { prefix: '/test' },
  )
}

const KNOWN_KEYS = ['type', 'title', 'status', 'detail', 'code', 'requestId']

interface ExpectedProblem {
  status: number
  title: string
  code: string
  detail: string
  errors?: { path: string; message: string }[]
}

/** Asserts the response is exactly the problem document described, with its request id. */
function assertProblem(t: Test, response: LightMyRequestResponse, expected: ExpectedProblem) {
  t.equal(response.statusCode, expected.status, 'status')
  t.match(response.headers['content-type'], /^application\/problem\+json(;|$)/, 'problem+json content type')
  const requestId = response.headers['x-request-id']
  t.type(requestId, 'string', 'x-request-id header is set')
  t.ok(String(requestId).length > 0)
  const body = response.json()
  t.strictSame(
    body,
    {
      type: `urn:backplane:problem:${expected.code.toLowerCase().replaceAll('_', '-')}`,
      title: expected.title,
      status: expected.status,
      detail: expected.detail,
      code: expected.code,
      requestId,
      ...(expected.errors ? { errors: expected.errors } : {}),
    },
    'exact problem document',
  )
  t.same(Object.keys(body).sort(), [...KNOWN_KEYS, ...(expected.errors ? ['errors'] : [])].sort())
  return body
}

function postJson(app: FastifyInstance, url: string, payload: string, contentType = 'application/json') {
  return app.inject({ method: 'POST', url, headers: { 'content-type': contentType }, payload })
}

/** `{"data":{"data":...}}` nested `levels` deep (the outer object counts as one level). */
function nestedObjects(levels: number): string {
  return `${'{"data":'.repeat(levels - 1)}{"name":"abc"}${'}'.repeat(levels - 1)}`
}

const logs = new LogCapture()
let app: FastifyInstance

t.before(async () => {
  app = await buildTestApp(t, { logs, extend: testRoutes })
})

t.test('unknown route: 404 ROUTE_NOT_FOUND', async (t) => {
  const response = await app.inject({ method: 'GET', url: '/no/such/route?x=1' })
  assertProblem(t, response, {
    status: 404,
    title: 'Not Found',
    code: 'ROUTE_NOT_FOUND',
    detail: 'No route matches this URL.',
  })
})

t.test('a client-supplied x-request-id is echoed in the header and the problem', async (t) => {
  const response = await app.inject({ method: 'GET', url: '/nope', headers: { 'x-request-id': 'trace-abc.123' } })
  t.equal(response.headers['x-request-id'], 'trace-abc.123')
  t.equal(response.json().requestId, 'trace-abc.123')
  const unsafe = await app.inject({ method: 'GET', url: '/nope', headers: { 'x-request-id': 'bad id<script>' } })
  t.not(unsafe.headers['x-request-id'], 'bad id<script>', 'an unsafe request id is replaced')
  t.equal(unsafe.json().requestId, unsafe.headers['x-request-id'])
})

t.test('wrong method on a known route: 405 METHOD_NOT_ALLOWED with Allow', async (t) => {
  const onCollection = await app.inject({ method: 'GET', url: '/test/widgets' })
  assertProblem(t, onCollection, {
    status: 405,
    title: 'Method Not Allowed',
    code: 'METHOD_NOT_ALLOWED',
    detail: 'GET is not supported on this resource.',
  })
  t.equal(onCollection.headers.allow, 'POST, PUT')

  const onItem = await app.inject({ method: 'DELETE', url: '/test/widgets/w1' })
  assertProblem(t, onItem, {
    status: 405,
    title: 'Method Not Allowed',
    code: 'METHOD_NOT_ALLOWED',
    detail: 'DELETE is not supported on this resource.',
  })
  t.equal(onItem.headers.allow, 'GET, HEAD')
  // What Allow advertises really works.
  t.equal((await app.inject({ method: 'HEAD', url: '/test/widgets/w1' })).statusCode, 200)
  t.equal((await app.inject({ method: 'GET', url: '/test/widgets/w1' })).statusCode, 200)

  const onHealth = await app.inject({ method: 'POST', url: '/health' })
  t.equal(onHealth.statusCode, 405)
  t.equal(onHealth.headers.allow, 'GET, HEAD')
  t.equal(onHealth.json().code, 'METHOD_NOT_ALLOWED')
})

t.test('validation failures: 400 VALIDATION_FAILED with {path, message} per field', async (t) => {
  t.test('missing required field', async (t) => {
    const response = await postJson(app, '/test/widgets', JSON.stringify({ count: 1 }))
    assertProblem(t, response, {
      status: 400,
      title: 'Bad Request',
      code: 'VALIDATION_FAILED',
      detail: 'The request is invalid.',
      errors: [{ path: '/body/name', message: 'is required' }],
    })
  })

  t.test('wrong type', async (t) => {
    const response = await postJson(app, '/test/widgets', JSON.stringify({ name: 42 }))
    const body = assertProblem(t, response, {
      status: 400,
      title: 'Bad Request',
      code: 'VALIDATION_FAILED',
      detail: 'The request is invalid.',
      errors: [{ path: '/body/name', message: 'must be string' }],
    })
    t.equal(body.errors.length, 1)
  })

  t.test('every failure is reported, not only the first', async (t) => {
    const response = await postJson(app, '/test/widgets', JSON.stringify({ name: 42, count: -1 }))
    t.equal(response.statusCode, 400)
    const paths = response.json().errors.map((error: { path: string }) => error.path)
    t.same(paths.sort(), ['/body/count', '/body/name'])
  })

  t.test('unknown property is rejected, not stripped', async (t) => {
    const response = await postJson(app, '/test/widgets', JSON.stringify({ name: 'abc', isAdmin: true }))
    assertProblem(t, response, {
      status: 400,
      title: 'Bad Request',
      code: 'VALIDATION_FAILED',
      detail: 'The request is invalid.',
      errors: [{ path: '/body/isAdmin', message: 'is not allowed' }],
    })
    const nestedPath = await app.inject({ method: 'GET', url: '/test/search?limit=5&sort=name' })
    t.equal(nestedPath.statusCode, 400)
    t.same(nestedPath.json().errors, [{ path: '/querystring/sort', message: 'is not allowed' }])
  })

  t.test('query strings are coerced to numbers', async (t) => {
    const response = await app.inject({ method: 'GET', url: '/test/search?limit=5' })
    t.equal(response.statusCode, 200)
    t.strictSame(response.json(), { limit: 5, limitType: 'number' })
    const notNumber = await app.inject({ method: 'GET', url: '/test/search?limit=many' })
    assertProblem(t, notNumber, {
      status: 400,
      title: 'Bad Request',
      code: 'VALIDATION_FAILED',
      detail: 'The request is invalid.',
      errors: [{ path: '/querystring/limit', message: 'must be integer' }],
    })
  })

  t.test('JSON bodies are not coerced: "5" for an integer is a 400', async (t) => {
    const response = await postJson(app, '/test/widgets', JSON.stringify({ name: 'abc', count: '5' }))
    assertProblem(t, response, {
      status: 400,
      title: 'Bad Request',
      code: 'VALIDATION_FAILED',
      detail: 'The request is invalid.',
      errors: [{ path: '/body/count', message: 'must be integer' }],
    })
    const ok = await postJson(app, '/test/widgets', JSON.stringify({ name: 'abc', count: 5 }))
    t.equal(ok.statusCode, 201)
    t.strictSame(ok.json(), { name: 'abc', count: 5 })
  })

  t.test('submitted values never appear in the response', async (t) => {
    const cases = [
      postJson(app, '/test/widgets', JSON.stringify({ name: SECRET })), // pattern mismatch
      postJson(app, '/test/widgets', JSON.stringify({ name: 'abc', count: SECRET })), // wrong type
      postJson(app, '/test/widgets', JSON.stringify({ name: 'abc', extra: SECRET })), // unknown property
      postJson(app, '/test/widgets', JSON.stringify({ name: SECRET.repeat(20) })), // too long
      app.inject({ method: 'GET', url: `/test/search?limit=${SECRET}&q=${SECRET}` }),
    ]
    for (const response of await Promise.all(cases)) {
      t.equal(response.statusCode, 400)
      t.equal(response.json().code, 'VALIDATION_FAILED')
      t.ok(response.json().errors.length > 0)
      t.notOk(response.body.includes(SECRET), `value not echoed (${response.json().errors[0]?.path})`)
      t.notOk(response.body.includes('SECRET'), 'not even partly')
    }
  })
})

t.test('413 PAYLOAD_TOO_LARGE for a JSON body over 1 MiB', async (t) => {
  const big = JSON.stringify({ name: 'a'.repeat(1024 * 1024) })
  const response = await postJson(app, '/test/widgets', big)
  assertProblem(t, response, {
    status: 413,
    title: 'Content Too Large',
    code: 'PAYLOAD_TOO_LARGE',
    detail: 'The request body exceeds the limit of 1048576 bytes.',
  })
  // Just under the limit is accepted.
  const under = await postJson(
    app,
    '/test/widgets',
    JSON.stringify({ name: 'abc', data: 'a'.repeat(1024 * 1024 - 100) }),
  )
  t.equal(under.statusCode, 201)
})

t.test('415 UNSUPPORTED_MEDIA_TYPE for text/plain to a JSON route', async (t) => {
  const response = await postJson(app, '/test/widgets', 'name=abc', 'text/plain')
  assertProblem(t, response, {
    status: 415,
    title: 'Unsupported Media Type',
    code: 'UNSUPPORTED_MEDIA_TYPE',
    detail: 'Content-Type "text/plain" is not accepted here.',
  })
  const hostile = await postJson(app, '/test/widgets', 'x', `text/${SECRET.toLowerCase()}<b>`)
  t.equal(hostile.statusCode, 415)
  t.notOk(hostile.body.toLowerCase().includes(SECRET.toLowerCase()), 'a hostile content type is not echoed')
  const form = await postJson(app, '/test/widgets', 'name=abc', 'application/x-www-form-urlencoded')
  assertProblem(t, form, {
    status: 415,
    title: 'Unsupported Media Type',
    code: 'UNSUPPORTED_MEDIA_TYPE',
    detail: 'Content-Type "application/x-www-form-urlencoded" is not accepted here.',
  })
  const untyped = await app.inject({ method: 'POST', url: '/test/widgets', payload: '{"name":"abc"}' })
  assertProblem(t, untyped, {
    status: 415,
    title: 'Unsupported Media Type',
    code: 'UNSUPPORTED_MEDIA_TYPE',
    detail: 'Content-Type (none) is not accepted here.',
  })
  // JSON with parameters and structured +json types are still JSON.
  const withCharset = await postJson(app, '/test/widgets', '{"name":"abc"}', 'application/json; charset=utf-8')
  t.equal(withCharset.statusCode, 201)
  const plusJson = await postJson(app, '/test/widgets', '{"name":"abc"}', 'application/merge-patch+json')
  t.equal(plusJson.statusCode, 201)
})

t.test('prototype-poisoning keys: 400 FORBIDDEN_JSON_KEY, nothing polluted', async (t) => {
  const poisoned = [
    '{"name":"abc","__proto__":{"polluted":"yes"}}',
    '{"name":"abc","data":{"__proto__":{"polluted":"yes"}}}',
    '{"constructor":{"prototype":{"polluted":"yes"}}}',
    '{"constructor":{"prototype":{}}}',
    '{"name":"abc","data":[{"constructor":{"prototype":{"polluted":"yes"}}}]}',
  ]
  for (const payload of poisoned) {
    for (const contentType of ['application/json', 'application/merge-patch+json']) {
      const response = await postJson(app, '/test/widgets', payload, contentType)
      assertProblem(t, response, {
        status: 400,
        title: 'Bad Request',
        code: 'FORBIDDEN_JSON_KEY',
        detail: 'JSON keys "__proto__" and "constructor.prototype" are not accepted.',
      })
    }
  }
  t.equal(({} as Record<string, unknown>).polluted, undefined, 'Object.prototype not polluted')
  t.notOk(Object.hasOwn(Object.prototype, 'polluted'))
  // A plain "constructor" key is ordinary data.
  const plain = await postJson(app, '/test/widgets', '{"name":"abc","data":{"constructor":"x"}}')
  t.equal(plain.statusCode, 201)
})

t.test('invalid JSON: 400 INVALID_JSON without echoing the input', async (t) => {
  for (const payload of [`{"name":"${SECRET}"`, `{"name": ${SECRET}}`, `${SECRET}`, '{"name":"abc",}']) {
    const response = await postJson(app, '/test/widgets', payload)
    assertProblem(t, response, {
      status: 400,
      title: 'Bad Request',
      code: 'INVALID_JSON',
      detail: 'The request body is not valid JSON.',
    })
    t.notOk(response.body.includes('SECRET'), 'input not echoed')
  }
})

t.test('empty JSON body: 400', async (t) => {
  for (const payload of ['', '   ']) {
    const response = await postJson(app, '/test/widgets', payload)
    assertProblem(t, response, {
      status: 400,
      title: 'Bad Request',
      code: 'INVALID_JSON',
      detail: 'The request body is not valid JSON.',
    })
  }
})

t.test('deeply nested JSON: 400 JSON_TOO_DEEP, never 500', async (t) => {
  const tooDeep = {
    '100k arrays': '['.repeat(100_000),
    '100k balanced arrays': `${'['.repeat(100_000)}${']'.repeat(100_000)}`,
    '65 levels of objects': nestedObjects(65),
    '65 levels inside a field': `{"name":"abc","data":${nestedObjects(64)}}`,
  }
  for (const [label, payload] of Object.entries(tooDeep)) {
    const response = await postJson(app, '/test/widgets', payload)
    t.equal(response.statusCode, 400, label)
    assertProblem(t, response, {
      status: 400,
      title: 'Bad Request',
      code: 'JSON_TOO_DEEP',
      detail: 'JSON nesting deeper than 64 levels is not accepted.',
    })
  }

  for (const levels of [60, 64]) {
    const response = await postJson(app, '/test/widgets', `{"name":"abc","data":${nestedObjects(levels - 1)}}`)
    t.equal(response.statusCode, 201, `${levels} levels pass`)
    t.strictSame(response.json(), { name: 'abc' })
  }

  // Brackets inside strings (including after escaped quotes) are not nesting.
  const inString = JSON.stringify({ name: 'abc', data: `\\"${'['.repeat(1000)}\\"${'{'.repeat(1000)}` })
  t.equal((await postJson(app, '/test/widgets', inString)).statusCode, 201, 'brackets in strings do not count')
})

t.test('problems raised by routes keep their status, code and detail', async (t) => {
  const cases: (ExpectedProblem & { kind: string; headers?: Record<string, string> })[] = [
    {
      kind: 'unauthorized',
      status: 401,
      title: 'Unauthorized',
      code: 'UNAUTHORIZED',
      detail: 'Authentication is required.',
      headers: { 'www-authenticate': 'Bearer' },
    },
    {
      kind: 'forbidden',
      status: 403,
      title: 'Forbidden',
      code: 'ROLE_REQUIRED',
      detail: 'Only owners may delete this project.',
    },
    {
      kind: 'conflict',
      status: 409,
      title: 'Conflict',
      code: 'PROJECT_NAME_TAKEN',
      detail: 'A project with this name already exists.',
    },
    {
      kind: 'precondition',
      status: 412,
      title: 'Precondition Failed',
      code: 'ETAG_MISMATCH',
      detail: 'The project changed since it was read.',
    },
    {
      kind: 'unprocessable',
      status: 422,
      title: 'Unprocessable Content',
      code: 'CARD_DECLINED',
      detail: 'The card was declined.',
    },
    {
      kind: 'rate-limited',
      status: 429,
      title: 'Too Many Requests',
      code: 'RATE_LIMITED',
      detail: 'Too many login attempts.',
      headers: { 'retry-after': '7' },
    },
    {
      kind: 'not-configured',
      status: 503,
      title: 'Service Unavailable',
      code: 'NOT_CONFIGURED',
      detail: 'Billing is not configured on this server.',
    },
    {
      kind: 'unavailable',
      status: 503,
      title: 'Service Unavailable',
      code: 'MAINTENANCE',
      detail: 'Maintenance in progress.',
      headers: { 'retry-after': '30' },
    },
    {
      kind: 'field-errors',
      status: 400,
      title: 'Bad Request',
      code: 'WEAK_PASSWORD',
      detail: 'The password is too weak.',
      errors: [{ path: '/body/password', message: 'is too short' }],
    },
  ]
  for (const { kind, headers, ...expected } of cases) {
    t.test(kind, async (t) => {
      const response = await app.inject({ method: 'GET', url: `/test/problems/${kind}` })
      assertProblem(t, response, expected)
      for (const [name, value] of Object.entries(headers ?? {})) t.equal(response.headers[name], value, name)
      if (!headers?.['www-authenticate']) t.notOk(response.headers['www-authenticate'])
    })
  }
})

t.test('@fastify/sensible errors become problem+json with default codes', async (t) => {
  assertProblem(t, await app.inject({ method: 'GET', url: '/test/problems/sensible-reply' }), {
    status: 409,
    title: 'Conflict',
    code: 'CONFLICT',
    detail: 'This slug is already in use.',
  })
  assertProblem(t, await app.inject({ method: 'GET', url: '/test/problems/sensible-throw' }), {
    status: 409,
    title: 'Conflict',
    code: 'CONFLICT',
    detail: 'The version is out of date.',
  })
  // A 5xx http-error is not meant for clients: masked like any other server error.
  const unavailable = await app.inject({ method: 'GET', url: '/test/problems/sensible-5xx' })
  assertProblem(t, unavailable, {
    status: 503,
    title: 'Service Unavailable',
    code: 'SERVICE_UNAVAILABLE',
    detail: 'An unexpected error occurred.',
  })
  t.notOk(unavailable.body.includes('10.1.2.3'))
})

t.test('5xx responses are masked and carry no internals', async (t) => {
  t.test('a thrown Error', async (t) => {
    const response = await app.inject({ method: 'GET', url: '/test/problems/crash' })
    const body = assertProblem(t, response, {
      status: 500,
      title: 'Internal Server Error',
      code: 'INTERNAL_ERROR',
      detail: 'An unexpected error occurred.',
    })
    for (const fragment of ['select', 'password', 'hunter2', 'users', 'stack', 'Error:', '.ts', 'node_modules']) {
      t.notOk(response.body.includes(fragment), `no "${fragment}" in the body`)
    }
    // The full error is in the log, tied to the request id, for the operator.
    const logged = logs.lines.find((line) => line.requestId === body.requestId && line.msg === 'unhandled error')
    t.ok(logged, 'the error is logged')
    t.match((logged?.err as { message?: string } | undefined)?.message, 'hunter2-LEAK')
  })

  t.test('an error carrying a 5xx status keeps the status, not the message', async (t) => {
    const response = await app.inject({ method: 'GET', url: '/test/problems/crash-502' })
    assertProblem(t, response, {
      status: 502,
      title: 'Bad Gateway',
      code: 'BAD_GATEWAY',
      detail: 'An unexpected error occurred.',
    })
    t.notOk(response.body.includes('sk_live'))
    t.notOk(response.body.includes('upstream'))
  })

  t.test('a 4xx error not marked exposable gets a generic detail', async (t) => {
    const response = await app.inject({ method: 'GET', url: '/test/problems/client-unexposed' })
    assertProblem(t, response, { status: 400, title: 'Bad Request', code: 'BAD_REQUEST', detail: 'Bad Request' })
    t.notOk(response.body.includes('SECRET'))
  })

  t.test('a failing SQL statement on the real database', async (t) => {
    const response = await app.inject({ method: 'GET', url: '/test/problems/db' })
    assertProblem(t, response, {
      status: 500,
      title: 'Internal Server Error',
      code: 'INTERNAL_ERROR',
      detail: 'An unexpected error occurred.',
    })
    for (const fragment of ['no_such_table', 'relation', 'does not exist', 'select', 'Failed query', '42P01']) {
      t.notOk(response.body.toLowerCase().includes(fragment.toLowerCase()), `no "${fragment}" in the body`)
    }
    // The app and its database are still fine afterwards.
    const ready = await app.inject({ method: 'GET', url: '/ready' })
    t.equal(ready.statusCode, 200)
  })
})

t.test('hidden routes are exempt from the route contract', async (t) => {
  const response = await app.inject({ method: 'GET', url: '/test/hidden' })
  t.equal(response.statusCode, 200)
  t.equal(response.body, 'hidden but served')
  const document = app.swagger() as { paths: Record<string, unknown> }
  t.notOk('/test/hidden' in document.paths, 'not documented')
  t.ok('/test/widgets' in document.paths, 'documented routes are')
})

t.test('a custom BODY_LIMIT is enforced', async (t) => {
  const small = await buildTestApp(t, { env: { BODY_LIMIT: '4096' }, extend: testRoutes })
  const under = await postJson(small, '/test/widgets', JSON.stringify({ name: 'abc', data: 'a'.repeat(3000) }))
  t.equal(under.statusCode, 201)
  // Far below the default limit, so only the configured one can refuse it.
  const over = await postJson(small, '/test/widgets', JSON.stringify({ name: 'abc', data: 'a'.repeat(5000) }))
  assertProblem(t, over, {
    status: 413,
    title: 'Content Too Large',
    code: 'PAYLOAD_TOO_LARGE',
    detail: 'The request body exceeds the limit of 4096 bytes.',
  })
})

t.test('the route contract is enforced when the app starts', async (t) => {
  const success = { 200: Type.Object({ ok: Type.Boolean() }) }
  const broken: Record<string, { url: string; schema: Record<string, unknown>; message: RegExp }> = {
    'no operationId': {
      url: '/contract/no-operation-id',
      schema: { tags: ['test'], response: success },
      message: /Route POST \/contract\/no-operation-id has no operationId/,
    },
    'no tags': {
      url: '/contract/no-tags',
      schema: { operationId: 'contractNoTags', response: success },
      message: /Route POST \/contract\/no-tags has no tags/,
    },
    'no response schemas': {
      url: '/contract/no-responses',
      schema: { operationId: 'contractNoResponses', tags: ['test'] },
      message: /Route POST \/contract\/no-responses declares no response schemas/,
    },
    'an open body object': {
      url: '/contract/open-body',
      schema: {
        operationId: 'contractOpenBody',
        tags: ['test'],
        body: Type.Object({ name: Type.String() }),
        response: success,
      },
      message: /Route POST \/contract\/open-body body schema accepts unknown properties/,
    },
  }
  for (const [label, route] of Object.entries(broken)) {
    t.test(label, async (t) => {
      await t.rejects(
        buildTestApp(t, {
          extend: (app) => {
            app.register(async (scope) => {
              scope.post(route.url, { schema: route.schema }, async () => ({ ok: true }))
            })
          },
        }),
        route.message,
      )
    })
  }
})
