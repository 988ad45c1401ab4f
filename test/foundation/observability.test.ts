import type { FastifyInstance } from 'fastify'
import t from 'tap'
import { Type } from 'typebox'
import { ProblemResponse } from '../../src/lib/problem.js'
import { redactUrl } from '../../src/lib/redact.js'
import { buildTestApp, LogCapture } from '../helper.js'

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/

// Secret values sent by the tests; none of them may ever appear in the captured log output.
const SECRETS = {
  authorization: 'Bearer sekrit-authorization-value',
  cookie: 'session=sekrit-cookie-value',
  stripeSignature: 't=1,v1=sekrit-stripe-signature',
  hubSignature: 'sha256=sekrit-hub-signature',
  password: 'sekrit-password-value',
  refreshToken: 'sekrit-refresh-token-value',
  token: 'sekrit-token-value',
  secret: 'sekrit-secret-value',
  apiKey: 'sekrit-api-key-value',
}

const secretHeaders = {
  authorization: SECRETS.authorization,
  cookie: SECRETS.cookie,
  'stripe-signature': SECRETS.stripeSignature,
  'x-hub-signature-256': SECRETS.hubSignature,
}

/** Test-only routes, declared with the full contract the app enforces at registration. */
async function testRoutes(app: FastifyInstance) {
  app.get(
    '/items/:id',
    {
      schema: {
        operationId: 'testGetItem',
        tags: ['test'],
        params: Type.Object({ id: Type.String() }, { additionalProperties: false }),
        querystring: Type.Object({ as: Type.Optional(Type.String()) }, { additionalProperties: false }),
        response: { 200: Type.Object({ id: Type.String() }), 400: ProblemResponse },
      },
    },
    async (request) => {
      const { id } = request.params as { id: string }
      const { as } = request.query as { as?: string }
      if (as) request.userId = as
      request.log.info({ itemId: id }, 'handling item')
      return { id }
    },
  )

  app.post(
    '/log-secrets',
    {
      schema: {
        operationId: 'testLogSecrets',
        tags: ['test'],
        body: Type.Object(
          {
            password: Type.String(),
            refreshToken: Type.String(),
            token: Type.String(),
            secret: Type.String(),
            apiKey: Type.String(),
          },
          { additionalProperties: false },
        ),
        response: { 204: Type.Null(), 400: ProblemResponse },
      },
    },
    async (request, reply) => {
      const body = request.body as Record<string, string>
      // The shapes code naturally writes: headers under a key, the headers object itself, a body
      // at the top level, a body nested one and two levels down.
      request.log.info({ headers: request.headers }, 'headers under a key')
      request.log.info(request.headers, 'headers at the top level')
      request.log.info({ upstream: { headers: request.headers } }, 'headers nested')
      request.log.info({ ...body }, 'body at the top level')
      request.log.info({ body }, 'body nested')
      request.log.warn({ context: { input: body } }, 'body nested twice')
      return reply.code(204).send()
    },
  )

  app.get(
    '/boom',
    {
      schema: {
        operationId: 'testBoom',
        tags: ['test'],
        response: { 200: Type.Object({ ok: Type.Boolean() }), 500: ProblemResponse },
      },
    },
    async () => {
      throw new Error('kaboom: something internal broke')
    },
  )

  // A route with hooks of its own, under a prefix: the completion hook joins them, never replaces them.
  await app.register(
    async (scoped) => {
      scoped.get(
        '/hooked',
        {
          onResponse: [
            (request, _reply, done) => {
              request.log.info('own onResponse hook ran')
              // A failing hook stops the ones after it; the completion hook runs before.
              done(new Error('own onResponse hook failed'))
            },
          ],
          schema: { operationId: 'testHooked', tags: ['test'], response: { 200: Type.Object({ ok: Type.Boolean() }) } },
        },
        async () => ({ ok: true }),
      )
    },
    { prefix: '/scoped' },
  )
}

t.test('observability', async (t) => {
  const logs = new LogCapture()
  const app = await buildTestApp(t, { logs, extend: testRoutes })

  const linesOf = (requestId: string) => logs.lines.filter((line) => line.requestId === requestId)
  const completions = (requestId: string) => linesOf(requestId).filter((line) => line.msg === 'request completed')

  t.test('a sane X-Request-Id is echoed and tags every log line of the request', async (t) => {
    const response = await app.inject({ method: 'GET', url: '/items/42', headers: { 'x-request-id': 'abc-123' } })
    t.equal(response.statusCode, 200)
    t.equal(response.headers['x-request-id'], 'abc-123')
    const lines = linesOf('abc-123')
    t.ok(
      lines.some((line) => line.msg === 'handling item' && line.itemId === '42'),
      'the handler log line carries the request id',
    )
    t.equal(completions('abc-123').length, 1, 'and so does the completion line')
  })

  t.test('an insane X-Request-Id is replaced by a generated UUID', async (t) => {
    const offered = ['x'.repeat(200), 'has spaces in it', 'line\nbreak', 'inject"quote', '']
    const seen = new Set<string>()
    for (const value of offered) {
      const response = await app.inject({ method: 'GET', url: '/items/1', headers: { 'x-request-id': value } })
      t.equal(response.statusCode, 200)
      const id = String(response.headers['x-request-id'])
      t.match(id, UUID, `${JSON.stringify(value.slice(0, 20))} is replaced by a UUID`)
      t.not(id, value)
      t.equal(completions(id).length, 1, 'the log lines carry the generated id')
      seen.add(id)
    }
    t.equal(seen.size, offered.length, 'every generated id is new')

    const none = await app.inject({ method: 'GET', url: '/items/1' })
    t.match(String(none.headers['x-request-id']), UUID, 'a request without the header gets a UUID')
  })

  t.test('exactly one completion line per request, with the route pattern', async (t) => {
    const anonymous = await app.inject({ method: 'GET', url: '/items/777', headers: { 'x-request-id': 'anon-1' } })
    t.equal(anonymous.statusCode, 200)
    const [line, ...more] = completions('anon-1')
    t.equal(more.length, 0, 'no second completion line')
    t.ok(line, 'a completion line')
    t.equal(line?.method, 'GET')
    t.equal(line?.route, '/items/:id', 'the route pattern, not the concrete URL')
    t.equal(line?.statusCode, 200)
    t.type(line?.durationMs, 'number')
    t.ok((line?.durationMs as number) >= 0)
    t.equal(line?.level, 30, 'at info level')
    t.notOk('userId' in (line ?? {}), 'no userId for an anonymous request')
    t.notOk(JSON.stringify(line).includes('777'), 'the concrete id is not in the completion line')

    const known = await app.inject({
      method: 'GET',
      url: '/items/778?as=usr_abc',
      headers: { 'x-request-id': 'user-1' },
    })
    t.equal(known.statusCode, 200)
    const userLines = completions('user-1')
    t.equal(userLines.length, 1)
    t.equal(userLines[0]?.userId, 'usr_abc', 'userId appears once request.userId is set')
    t.equal(userLines[0]?.route, '/items/:id')

    const missing = await app.inject({ method: 'GET', url: '/no/such/thing', headers: { 'x-request-id': 'nf-1' } })
    t.equal(missing.statusCode, 404)
    t.equal(missing.headers['x-request-id'], 'nf-1', 'error responses carry the request id too')
    const notFound = completions('nf-1')
    t.equal(notFound.length, 1)
    t.equal(notFound[0]?.statusCode, 404)
    t.equal(notFound[0]?.route, 'unmatched')

    const invalid = await app.inject({
      method: 'GET',
      url: '/items/1?unknown=1',
      headers: { 'x-request-id': 'bad-1' },
    })
    t.equal(invalid.statusCode, 400)
    t.equal(completions('bad-1').length, 1, 'a rejected request also gets exactly one line')
    t.equal(completions('bad-1')[0]?.statusCode, 400)

    // HEAD is a route of its own, made by Fastify from the GET route's options.
    const head = await app.inject({ method: 'HEAD', url: '/items/5', headers: { 'x-request-id': 'head-1' } })
    t.equal(head.statusCode, 200)
    t.same(
      completions('head-1').map((line) => [line.method, line.route, line.statusCode]),
      [['HEAD', '/items/:id', 200]],
    )

    const wrongMethod = await app.inject({ method: 'DELETE', url: '/items/5', headers: { 'x-request-id': 'del-1' } })
    t.equal(wrongMethod.statusCode, 405)
    t.same(
      completions('del-1').map((line) => [line.method, line.route, line.statusCode]),
      [['DELETE', 'unmatched', 405]],
    )

    const hooked = await app.inject({ method: 'GET', url: '/scoped/hooked', headers: { 'x-request-id': 'hook-1' } })
    t.equal(hooked.statusCode, 200)
    t.equal(linesOf('hook-1').filter((line) => line.msg === 'own onResponse hook ran').length, 1)
    t.same(
      completions('hook-1').map((line) => line.route),
      ['/scoped/hooked'],
      'the prefixed pattern, once, beside the route’s own hook',
    )

    // Routes of the real modules, registered long after the observability plugin.
    const health = await app.inject({ method: 'GET', url: '/health', headers: { 'x-request-id': 'health-1' } })
    t.equal(health.statusCode, 200)
    t.same(
      completions('health-1').map((line) => line.route),
      ['/health'],
    )
  })

  t.test('secrets in headers and bodies are redacted from the logs', async (t) => {
    const before = logs.raw.length
    const response = await app.inject({
      method: 'POST',
      url: '/log-secrets',
      headers: { ...secretHeaders, 'x-request-id': 'redact-1' },
      payload: {
        password: SECRETS.password,
        refreshToken: SECRETS.refreshToken,
        token: SECRETS.token,
        secret: SECRETS.secret,
        apiKey: SECRETS.apiKey,
      },
    })
    t.equal(response.statusCode, 204)
    const raw = logs.raw.slice(before).join('\n')
    const messages = ['headers under a key', 'headers at the top level', 'headers nested', 'body at the top level']
    for (const message of messages) {
      t.ok(raw.includes(message), `the "${message}" line was written`)
    }
    for (const [name, value] of Object.entries(SECRETS)) {
      t.notOk(raw.includes(value), `${name} does not appear in the logs`)
    }
    // The distinctive part of each secret must not leak in any encoding either.
    t.notOk(raw.includes('sekrit'), 'no fragment of any secret appears in the logs')
    t.ok(raw.includes('[REDACTED]'), 'redacted values are marked')

    const keyed = linesOf('redact-1').find((line) => line.msg === 'headers under a key')
    const headers = keyed?.headers as Record<string, unknown> | undefined
    t.equal(headers?.authorization, '[REDACTED]')
    t.equal(headers?.cookie, '[REDACTED]')
    t.equal(headers?.['stripe-signature'], '[REDACTED]')
    t.equal(headers?.['x-hub-signature-256'], '[REDACTED]')
    t.equal(headers?.['x-request-id'], 'redact-1', 'harmless headers are kept')
    const top = linesOf('redact-1').find((line) => line.msg === 'headers at the top level')
    t.equal(top?.authorization, '[REDACTED]')
    t.equal(top?.['x-hub-signature-256'], '[REDACTED]')
    const nested = linesOf('redact-1').find((line) => line.msg === 'headers nested')
    t.match(nested, { upstream: { headers: { authorization: '[REDACTED]', cookie: '[REDACTED]' } } })
    const redactedBody = {
      password: '[REDACTED]',
      refreshToken: '[REDACTED]',
      token: '[REDACTED]',
      secret: '[REDACTED]',
      apiKey: '[REDACTED]',
    }
    const lineOf = (msg: string) => linesOf('redact-1').find((line) => line.msg === msg)
    t.match(lineOf('body at the top level'), redactedBody)
    t.match(lineOf('body nested'), { body: redactedBody })
    t.match(lineOf('body nested twice'), { context: { input: redactedBody } })
  })

  t.test('an unhandled 500 is logged without the request credentials', async (t) => {
    const before = logs.raw.length
    const response = await app.inject({
      method: 'GET',
      url: '/boom',
      headers: { ...secretHeaders, 'x-request-id': 'boom-1' },
    })
    t.equal(response.statusCode, 500)
    t.equal(response.headers['content-type'], 'application/problem+json; charset=utf-8')
    const problem = response.json()
    t.equal(problem.code, 'INTERNAL_ERROR')
    t.equal(problem.requestId, 'boom-1')
    t.notOk(response.body.includes('kaboom'), 'the body does not carry the internal message')

    const raw = logs.raw.slice(before).join('\n')
    const logged = linesOf('boom-1').find((line) => line.level === 50)
    t.ok(logged, 'the error is logged at error level')
    t.match(logged, { err: { message: 'kaboom: something internal broke' } }, 'with the real error')
    t.notOk(raw.includes('sekrit'), 'no credential from the request appears in the logs')
    t.equal(completions('boom-1')[0]?.statusCode, 500)
  })

  t.test('redactUrl hides credential-looking query parameters', async (t) => {
    const redacted = redactUrl('/callback?token=abc&page=2')
    t.notOk(redacted.includes('abc'), 'the token value is gone')
    const query = new URLSearchParams(redacted.slice(redacted.indexOf('?') + 1))
    t.equal(query.get('token'), '[REDACTED]')
    t.equal(query.get('page'), '2', 'harmless parameters are kept')
    t.ok(redacted.startsWith('/callback?'))

    const many = redactUrl('/x?api_key=k1&code=c1&client_secret=s1&sig=ok&q=hello')
    for (const leaked of ['k1', 'c1', 's1']) t.notOk(many.includes(leaked), `${leaked} is redacted`)
    const kept = new URLSearchParams(many.slice(many.indexOf('?') + 1))
    t.equal(kept.get('q'), 'hello')
    t.equal(redactUrl('/plain/path'), '/plain/path', 'a URL without a query is untouched')
  })

  t.test('GET /metrics exposes Prometheus text with route patterns', async (t) => {
    for (let i = 0; i < 2; i++) t.equal((await app.inject({ method: 'GET', url: '/health' })).statusCode, 200)
    t.equal((await app.inject({ method: 'GET', url: '/really/not/a/route/12345' })).statusCode, 404)

    const response = await app.inject({ method: 'GET', url: '/metrics' })
    t.equal(response.statusCode, 200)
    t.match(response.headers['content-type'], /^text\/plain; version=0\.0\.4/)
    const text = response.body
    t.match(text, /^# HELP http_requests_total /m)
    t.match(text, /^# TYPE http_requests_total counter$/m)
    const counters = text.match(/^http_requests_total\{[^}]*\} \d+$/gm) ?? []
    const healthLine = counters.find((line) => line.includes('route="/health"') && line.includes('status_code="200"'))
    t.ok(healthLine, 'a counter for route="/health"')
    t.match(healthLine, /method="GET"/)
    t.ok(Number(healthLine?.split(' ').pop()) >= 2, 'counting both calls')
    t.match(text, /^http_request_duration_seconds_bucket\{[^}]*route="\/health"[^}]*\} \d+$/m)
    t.match(text, /^http_requests_total\{[^}]*route="\/items\/:id"[^}]*\} \d+$/m, 'route patterns, not URLs')
    t.match(text, /^http_requests_total\{[^}]*route="unmatched"[^}]*status_code="404"[^}]*\} \d+$/m)
    t.notOk(text.includes('/really/not/a/route'), 'an unmatched URL never becomes a label')
    t.notOk(text.includes('/items/42'), 'concrete URLs never become labels')
    t.match(text, /^(process_cpu_user_seconds_total|nodejs_\w+)/m, 'default process metrics are collected')
    t.match(text, /^nodejs_eventloop_lag_seconds /m)
  })

  t.test('GET /ready reports the database', async (t) => {
    const response = await app.inject({ method: 'GET', url: '/ready' })
    t.equal(response.statusCode, 200)
    t.equal(response.headers['cache-control'], 'no-store')
    const body = response.json()
    t.equal(body.status, 'healthy')
    t.type(body.timestamp, 'string')
    t.equal(new Date(body.timestamp).toISOString(), body.timestamp, 'timestamp is ISO 8601')
    t.ok(Math.abs(Date.parse(body.timestamp) - Date.now()) < 60_000, 'and current')
    t.equal(body.services.database.status, 'healthy')
    t.type(body.services.database.latencyMs, 'number')
    t.ok(body.services.database.latencyMs >= 0)
    t.notOk('redis' in body.services, 'no redis check without REDIS_URL')
  })
})
