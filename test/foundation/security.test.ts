import { randomInt } from 'node:crypto'
import { createServer } from 'node:net'
import type { FastifyInstance } from 'fastify'
import t from 'tap'
import { Type } from 'typebox'
import { ProblemResponse } from '../../src/lib/problem.js'
import { buildTestApp, redisForTest } from '../helper.js'

const ALLOWED = 'https://app.example.com'
const ALSO_ALLOWED = 'https://admin.example.com'
const STRANGER = 'https://evil.example.net'

/** Limited by the global rate limit, like every route that does not opt out. */
async function testRoutes(app: FastifyInstance) {
  app.get(
    '/limited',
    {
      schema: {
        operationId: 'testLimited',
        tags: ['test'],
        response: { 200: Type.Object({ ok: Type.Boolean() }), 429: ProblemResponse },
      },
    },
    async () => ({ ok: true }),
  )
  app.get(
    '/tight',
    {
      config: { rateLimit: { max: 1, timeWindow: 60_000 } },
      schema: {
        operationId: 'testTight',
        tags: ['test'],
        response: { 200: Type.Object({ ok: Type.Boolean() }), 429: ProblemResponse },
      },
    },
    async () => ({ ok: true }),
  )
}

/** A client address no other test (or earlier run against the same Redis) has used. */
function uniqueAddress(): string {
  return `10.${randomInt(256)}.${randomInt(256)}.${randomInt(1, 255)}`
}

/** A loopback port that nothing listens on. */
async function closedPort(): Promise<number> {
  const server = createServer()
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const address = server.address()
  await new Promise((resolve) => server.close(resolve))
  if (!address || typeof address === 'string') throw new Error('no port')
  return address.port
}

const exposed = (value: unknown) =>
  String(value ?? '')
    .toLowerCase()
    .split(',')
    .map((header) => header.trim())

t.test('allow-listed CORS, security headers and rate limits', async (t) => {
  const app = await buildTestApp(t, {
    env: { CORS_ORIGINS: `${ALLOWED},${ALSO_ALLOWED}`, RATE_LIMIT_MAX: '3' },
    extend: testRoutes,
  })

  t.test('helmet security headers are set', async (t) => {
    for (const url of ['/health', '/no/such/route']) {
      const response = await app.inject({ method: 'GET', url })
      t.equal(response.headers['x-content-type-options'], 'nosniff', `${url}: nosniff`)
      t.match(response.headers['x-frame-options'], /^(DENY|SAMEORIGIN)$/, `${url}: x-frame-options`)
      t.match(response.headers['strict-transport-security'], /max-age=\d+/, `${url}: HSTS`)
      t.ok(response.headers['content-security-policy'], `${url}: CSP`)
      t.notOk(response.headers['x-powered-by'], `${url}: no x-powered-by`)
    }
  })

  t.test('an allowed origin is reflected with credentials', async (t) => {
    for (const origin of [ALLOWED, ALSO_ALLOWED]) {
      const response = await app.inject({ method: 'GET', url: '/health', headers: { origin } })
      t.equal(response.statusCode, 200)
      t.equal(response.headers['access-control-allow-origin'], origin)
      t.equal(response.headers['access-control-allow-credentials'], 'true')
      t.match(String(response.headers.vary), /origin/i, 'caches vary by Origin')
      const headers = exposed(response.headers['access-control-expose-headers'])
      for (const header of ['x-request-id', 'etag', 'location', 'retry-after']) {
        t.ok(headers.includes(header), `${header} is exposed`)
      }
      for (const header of ['ratelimit-limit', 'ratelimit-remaining', 'ratelimit-reset']) {
        t.ok(headers.includes(header), `${header} is exposed`)
      }
    }
  })

  t.test('a preflight from an allowed origin is answered 204', async (t) => {
    const response = await app.inject({
      method: 'OPTIONS',
      url: '/limited',
      remoteAddress: uniqueAddress(),
      headers: {
        origin: ALLOWED,
        'access-control-request-method': 'POST',
        'access-control-request-headers': 'authorization,idempotency-key,content-type',
      },
    })
    t.equal(response.statusCode, 204)
    t.equal(response.headers['access-control-allow-origin'], ALLOWED)
    t.equal(response.headers['access-control-allow-credentials'], 'true')
    const methods = exposed(response.headers['access-control-allow-methods'])
    for (const method of ['get', 'post', 'put', 'patch', 'delete']) t.ok(methods.includes(method), `${method} allowed`)
    const headers = exposed(response.headers['access-control-allow-headers'])
    for (const header of ['authorization', 'idempotency-key', 'content-type', 'if-match', 'last-event-id']) {
      t.ok(headers.includes(header), `${header} allowed`)
    }
    t.ok(Number(response.headers['access-control-max-age']) > 0, 'preflights are cached')
  })

  t.test('a disallowed origin gets no CORS grant', async (t) => {
    const response = await app.inject({ method: 'GET', url: '/health', headers: { origin: STRANGER } })
    t.equal(response.statusCode, 200, 'the request itself is answered; the browser withholds it')
    t.notOk(response.headers['access-control-allow-origin'])

    const preflight = await app.inject({
      method: 'OPTIONS',
      url: '/limited',
      remoteAddress: uniqueAddress(),
      headers: { origin: STRANGER, 'access-control-request-method': 'DELETE' },
    })
    t.notOk(preflight.headers['access-control-allow-origin'], 'the preflight grants nothing either')
  })

  t.test('the global limit counts down and answers 429 problem+json', async (t) => {
    const remoteAddress = uniqueAddress()
    const remaining: number[] = []
    for (let i = 0; i < 3; i++) {
      const response = await app.inject({ method: 'GET', url: '/limited', remoteAddress })
      t.equal(response.statusCode, 200, `request ${i + 1} passes`)
      t.equal(response.headers['ratelimit-limit'], '3')
      const reset = Number(response.headers['ratelimit-reset'])
      t.ok(reset > 0 && reset <= 60, `ratelimit-reset is seconds into a 60 s window (${reset})`)
      remaining.push(Number(response.headers['ratelimit-remaining']))
    }
    t.same(remaining, [2, 1, 0], 'ratelimit-remaining decreases')

    const limited = await app.inject({ method: 'GET', url: '/limited', remoteAddress })
    t.equal(limited.statusCode, 429)
    t.equal(limited.headers['content-type'], 'application/problem+json; charset=utf-8')
    const retryAfter = Number(limited.headers['retry-after'])
    t.ok(Number.isInteger(retryAfter) && retryAfter > 0 && retryAfter <= 60, `retry-after in seconds (${retryAfter})`)
    t.equal(limited.headers['ratelimit-remaining'], '0')
    t.ok(limited.headers['x-request-id'], 'a 429 still carries the request id')
    const problem = limited.json()
    t.match(problem, {
      type: 'urn:backplane:problem:rate-limited',
      title: 'Too Many Requests',
      status: 429,
      code: 'RATE_LIMITED',
      detail: String,
      requestId: limited.headers['x-request-id'],
    })

    const other = await app.inject({ method: 'GET', url: '/limited', remoteAddress: uniqueAddress() })
    t.equal(other.statusCode, 200, 'another client has its own budget')
  })

  t.test('operational endpoints are never limited', async (t) => {
    const remoteAddress = uniqueAddress()
    for (let i = 0; i < 3; i++) await app.inject({ method: 'GET', url: '/limited', remoteAddress })
    t.equal((await app.inject({ method: 'GET', url: '/limited', remoteAddress })).statusCode, 429)
    for (const url of ['/health', '/ready', '/metrics']) {
      for (let i = 0; i < 5; i++) {
        const response = await app.inject({ method: 'GET', url, remoteAddress })
        t.equal(response.statusCode, 200, `${url} #${i + 1} answers while the client is limited`)
        t.notOk(response.headers['ratelimit-limit'], `${url} carries no rate-limit headers`)
      }
    }
  })

  t.test('a per-route limit overrides the global one', async (t) => {
    const remoteAddress = uniqueAddress()
    const first = await app.inject({ method: 'GET', url: '/tight', remoteAddress })
    t.equal(first.statusCode, 200)
    t.equal(first.headers['ratelimit-limit'], '1')
    t.equal(first.headers['ratelimit-remaining'], '0')
    const second = await app.inject({ method: 'GET', url: '/tight', remoteAddress })
    t.equal(second.statusCode, 429)
    t.equal(second.json().code, 'RATE_LIMITED')
    t.ok(Number(second.headers['retry-after']) > 0)
    const global = await app.inject({ method: 'GET', url: '/limited', remoteAddress })
    t.equal(global.statusCode, 200, 'the global budget of the same client is untouched')
    t.equal(global.headers['ratelimit-limit'], '3')
  })
})

t.test('CORS_ORIGINS=* allows any origin, never with credentials', async (t) => {
  const app = await buildTestApp(t, { env: { CORS_ORIGINS: '*' } })
  const response = await app.inject({ method: 'GET', url: '/health', headers: { origin: STRANGER } })
  t.equal(response.statusCode, 200)
  t.equal(response.headers['access-control-allow-origin'], '*')
  t.not(response.headers['access-control-allow-credentials'], 'true')
  t.ok(exposed(response.headers['access-control-expose-headers']).includes('x-request-id'))

  const preflight = await app.inject({
    method: 'OPTIONS',
    url: '/health',
    headers: { origin: STRANGER, 'access-control-request-method': 'POST' },
  })
  t.equal(preflight.statusCode, 204)
  t.equal(preflight.headers['access-control-allow-origin'], '*')
  t.not(preflight.headers['access-control-allow-credentials'], 'true')
})

t.test('without CORS_ORIGINS no origin is granted; an unreachable Redis only degrades', async (t) => {
  const port = await closedPort()
  const app = await buildTestApp(t, {
    env: { REDIS_URL: `redis://127.0.0.1:${port}`, RATE_LIMIT_MAX: '3' },
    extend: testRoutes,
  })

  t.test('no CORS headers for any origin', async (t) => {
    for (const origin of [ALLOWED, STRANGER]) {
      const response = await app.inject({ method: 'GET', url: '/health', headers: { origin } })
      t.equal(response.statusCode, 200)
      t.notOk(response.headers['access-control-allow-origin'], `${origin} gets no allow-origin`)
      t.notOk(response.headers['access-control-allow-credentials'])
    }
  })

  t.test('rate-limited requests pass while Redis is down', async (t) => {
    const started = Date.now()
    const remoteAddress = uniqueAddress()
    // More requests than the limit: with the counters unreachable, the limit is skipped.
    for (let i = 0; i < 5; i++) {
      const response = await app.inject({ method: 'GET', url: '/limited', remoteAddress })
      t.equal(response.statusCode, 200, `request ${i + 1} succeeds`)
      t.same(response.json(), { ok: true })
    }
    // Each request may not wait for a reconnect attempt (seconds under ioredis' backoff).
    t.ok(Date.now() - started < 2000, `without waiting on the dead Redis (${Date.now() - started} ms for 5)`)
  })

  t.test('/ready reports degraded with redis unhealthy', async (t) => {
    const started = Date.now()
    const response = await app.inject({ method: 'GET', url: '/ready' })
    t.ok(Date.now() - started < 1500, 'the redis probe gives up within its 1 s timeout')
    t.equal(response.statusCode, 200, 'redis is not critical: still ready')
    t.equal(response.headers['cache-control'], 'no-store')
    const body = response.json()
    t.equal(body.status, 'degraded')
    t.equal(body.services.redis.status, 'unhealthy')
    t.type(body.services.redis.latencyMs, 'number')
    t.equal(body.services.database.status, 'healthy')
    t.notOk(JSON.stringify(body).includes(String(port)), 'no connection details in the body')
  })
})

t.test('two instances share one rate-limit budget through Redis', async (t) => {
  const redisUrl = await redisForTest(t)
  const env = { REDIS_URL: redisUrl, RATE_LIMIT_MAX: '4' }
  const first = await buildTestApp(t, { env, extend: testRoutes })
  const second = await buildTestApp(t, { env, extend: testRoutes })
  t.not(first, second)
  t.ok(first.redis && second.redis && first.redis !== second.redis, 'each instance has its own connection')

  // A fresh client address keeps this run's key space apart from other runs on the same server.
  const remoteAddress = uniqueAddress()
  const statuses: number[] = []
  const remaining: string[] = []
  for (let i = 0; i < 5; i++) {
    const app = i % 2 === 0 ? first : second
    const response = await app.inject({ method: 'GET', url: '/limited', remoteAddress })
    statuses.push(response.statusCode)
    remaining.push(String(response.headers['ratelimit-remaining']))
  }
  t.same(statuses, [200, 200, 200, 200, 429], 'the 5th request overall is limited')
  t.same(remaining, ['3', '2', '1', '0', '0'], 'both instances count down the same budget')

  // The 5th request went to the first instance; the second one refuses as well.
  const onSecond = await second.inject({ method: 'GET', url: '/limited', remoteAddress })
  t.equal(onSecond.statusCode, 429, 'and the other instance refuses too')
  t.equal(onSecond.json().code, 'RATE_LIMITED')

  const ready = await second.inject({ method: 'GET', url: '/ready' })
  t.equal(ready.statusCode, 200)
  t.equal(ready.json().status, 'healthy')
  t.equal(ready.json().services.redis.status, 'healthy')
})
