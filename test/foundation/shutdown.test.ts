import http from 'node:http'
import { connect, type Socket } from 'node:net'
import t from 'tap'
import { Type } from 'typebox'
import { buildTestApp } from '../helper.js'
import { freePort } from '../support/postgres-cluster.js'
import { exitWithin, runNodeScript } from '../support/server-process.js'

interface Answer {
  status: number
  headers: http.IncomingHttpHeaders
  body: string
  at: number
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

/** Resolves with the response, or with the connection error's code. */
function get(port: number, path: string, agent: http.Agent, started: number): Promise<Answer | { error: string }> {
  return new Promise((resolve) => {
    const request = http.get({ host: '127.0.0.1', port, path, agent }, (response) => {
      let body = ''
      response.setEncoding('utf8')
      response.on('data', (chunk: string) => {
        body += chunk
      })
      response.on('end', () =>
        resolve({ status: response.statusCode ?? 0, headers: response.headers, body, at: Date.now() - started }),
      )
      response.on('error', (error: NodeJS.ErrnoException) => resolve({ error: error.code ?? error.message }))
    })
    request.on('error', (error: NodeJS.ErrnoException) => resolve({ error: error.code ?? error.message }))
  })
}

/** Splits what a raw socket received into HTTP/1.1 responses (all carry Content-Length here). */
function parseResponses(raw: string): { status: number; headers: Record<string, string>; body: string }[] {
  const responses = []
  let rest = raw
  while (rest.length > 0) {
    const end = rest.indexOf('\r\n\r\n')
    if (end < 0) break
    const [statusLine = '', ...headerLines] = rest.slice(0, end).split('\r\n')
    const headers: Record<string, string> = {}
    for (const line of headerLines) {
      const colon = line.indexOf(':')
      headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim()
    }
    const length = Number(headers['content-length'] ?? 0)
    const body = rest.slice(end + 4, end + 4 + length)
    responses.push({ status: Number(statusLine.split(' ')[1]), headers, body })
    rest = rest.slice(end + 4 + length)
  }
  return responses
}

t.test('graceful close of a listening app', async (t) => {
  let slowStarted = 0
  let slowFinished = 0
  const app = await buildTestApp(t, {
    extend: (app) => {
      app.get(
        '/test/slow',
        {
          schema: {
            operationId: 'testSlow',
            tags: ['test'],
            querystring: Type.Object(
              { ms: Type.Integer({ minimum: 0, maximum: 5000 }) },
              { additionalProperties: false },
            ),
            response: { 200: Type.Object({ waited: Type.Integer() }) },
          },
        },
        async (request) => {
          slowStarted++
          const { ms } = request.query as { ms: number }
          await sleep(ms)
          slowFinished++
          return { waited: ms }
        },
      )
    },
  })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const address = app.server.address()
  const port = typeof address === 'object' && address ? address.port : 0

  // One kept-alive connection whose second request waits behind a slow one (the brief's agent).
  const queued = new http.Agent({ keepAlive: true, maxSockets: 1 })
  // One kept-alive connection that only has a slow request in flight and then stays open, idle.
  const lingering = new http.Agent({ keepAlive: true, maxSockets: 1 })
  t.teardown(() => {
    queued.destroy()
    lingering.destroy()
  })

  // A raw connection, to pipeline a request while its first one is still in flight.
  const raw: Socket = connect({ port, host: '127.0.0.1' })
  t.teardown(() => raw.destroy())
  let rawData = ''
  raw.setEncoding('utf8').on('data', (chunk: string) => {
    rawData += chunk
  })
  const rawClosed = new Promise<void>((resolve) => raw.once('close', () => resolve()))
  raw.on('error', () => {})
  await new Promise<void>((resolve) => raw.once('connect', () => resolve()))

  const started = Date.now()
  raw.write('GET /test/slow?ms=900 HTTP/1.1\r\nHost: localhost\r\n\r\n')
  const queuedSlow = get(port, '/test/slow?ms=500', queued, started)
  const queuedNext = get(port, '/health', queued, started)
  const lingeringSlow = get(port, '/test/slow?ms=400', lingering, started)

  while (slowStarted < 3 && Date.now() - started < 3000) await sleep(10)
  t.equal(slowStarted, 3, 'three slow requests are in flight')

  let closedAt = 0
  const closing = app.close().then(() => {
    closedAt = Date.now() - started
  })
  await sleep(50)

  // A request arriving on an open connection while in-flight requests still run: told to go away.
  raw.write('GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n')
  // A new connection is not accepted at all.
  const fresh = await get(port, '/health', new http.Agent({ keepAlive: false }), started)
  t.ok('error' in fresh && ['ECONNREFUSED', 'ECONNRESET'].includes(fresh.error), 'new connections are refused', {
    got: fresh,
  })

  const slow = await queuedSlow
  t.ok('status' in slow && slow.status === 200, 'the in-flight slow request completes with 200', { got: slow })
  t.same('body' in slow && JSON.parse(slow.body), { waited: 500 })

  const next = await queuedNext
  if ('status' in next) {
    t.equal(next.status, 503, 'a request sent on the kept-alive connection during close gets 503')
    t.match(next.headers['content-type'], /^application\/problem\+json/)
    t.match(JSON.parse(next.body), { status: 503, code: 'SHUTTING_DOWN' })
    t.equal(next.headers.connection, 'close', 'and the connection is closed')
  } else {
    t.ok(['ECONNREFUSED', 'ECONNRESET', 'EPIPE'].includes(next.error), 'or it finds the connection closed', {
      got: next,
    })
  }

  const lingered = await lingeringSlow
  t.ok('status' in lingered && lingered.status === 200, 'the other in-flight request completes with 200')

  await rawClosed
  const rawResponses = parseResponses(rawData)
  t.equal(rawResponses.length, 2, 'the raw connection got two responses, then was closed')
  t.equal(rawResponses[0]?.status, 200, 'first the in-flight slow request: 200')
  t.same(rawResponses[0] && JSON.parse(rawResponses[0].body), { waited: 900 })
  t.equal(rawResponses[1]?.status, 503, 'then the pipelined request: 503')
  t.match(rawResponses[1]?.headers['content-type'], /^application\/problem\+json/)
  t.match(rawResponses[1] && JSON.parse(rawResponses[1].body), {
    type: String,
    title: String,
    status: 503,
    code: 'SHUTTING_DOWN',
    detail: String,
    requestId: String,
  })
  t.equal(rawResponses[1]?.headers.connection, 'close')
  t.ok(rawResponses[1]?.headers['retry-after'], 'with Retry-After')
  t.equal(slowFinished, 3, 'every in-flight handler ran to completion')
  t.equal(slowStarted, 3, 'no handler started after close began')

  // Clients that keep their connection open must not hold shutdown until the keep-alive timeout.
  const settled = await Promise.race([closing.then(() => true), sleep(3000).then(() => false)])
  t.ok(settled, `app.close() resolves once in-flight requests are done (closed at ${closedAt || 'never'} ms)`)
  if (!settled) {
    lingering.destroy()
    queued.destroy()
    await closing
  }
  t.ok(closedAt >= 850, 'but not before the slowest in-flight request finished')

  await t.rejects(app.database.ping(), 'the database is closed after close')
})

t.test('process: SIGTERM shuts the server down cleanly', async (t) => {
  const port = await freePort()
  const server = runNodeScript(t, 'src/server.ts', {
    PORT: String(port),
    HOST: '127.0.0.1',
    DATABASE_URL: 'memory://',
    LOG_LEVEL: 'info',
    NODE_ENV: 'production',
  })
  await server.waitForStdout(/Server listening/, 60_000)

  const health = await fetch(`http://127.0.0.1:${port}/health`)
  t.equal(health.status, 200)
  t.same(await health.json(), { status: 'ok' })

  const signalled = Date.now()
  server.child.kill('SIGTERM')
  const exit = await exitWithin(server, 8000)
  t.same(exit, { code: 0, signal: null }, `exits with code 0 (stderr: ${server.stderr().slice(-500)})`)
  t.ok(Date.now() - signalled < 8000, `within a few seconds (${Date.now() - signalled} ms)`)

  const lines = server
    .stdout()
    .split('\n')
    .filter((line) => line.startsWith('{'))
    .map((line) => JSON.parse(line) as { msg?: string; signal?: string; level?: number })
  t.ok(
    lines.some((line) => /shutting down/i.test(line.msg ?? '') && line.signal === 'SIGTERM'),
    'logs a shutting-down line naming the signal',
  )
  t.notOk(
    lines.some((line) => (line.level ?? 0) >= 50),
    'logs no error during shutdown',
  )
  t.equal(server.stderr().trim(), '', 'writes nothing to stderr')
})
