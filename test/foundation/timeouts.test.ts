import { connect } from 'node:net'
import t from 'tap'
import { Type } from 'typebox'
import { buildTestApp } from '../helper.js'

interface Outcome {
  /** Everything the server wrote before the socket ended. */
  data: string
  /** How the socket ended: closed by the server, or still open when the test gave up. */
  ended: 'closed' | 'timeout'
  ms: number
}

/** Sends `payload` on a fresh connection, then stalls; reports what happened within `limitMs`. */
function stall(port: number, payload: string, limitMs: number): Promise<Outcome> {
  return new Promise((resolve, reject) => {
    const started = Date.now()
    const socket = connect({ port, host: '127.0.0.1' })
    let data = ''
    let settled = false
    const finish = (ended: Outcome['ended']) => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      socket.destroy()
      resolve({ data, ended, ms: Date.now() - started })
    }
    const timer = setTimeout(() => finish('timeout'), limitMs)
    socket.setEncoding('utf8')
    socket.on('connect', () => socket.write(payload))
    socket.on('data', (chunk: string) => {
      data += chunk
    })
    socket.on('end', () => finish('closed'))
    socket.on('close', () => finish('closed'))
    socket.on('error', (error: NodeJS.ErrnoException) => {
      if (error.code === 'ECONNRESET' || error.code === 'EPIPE') finish('closed')
      else if (!settled) {
        settled = true
        clearTimeout(timer)
        reject(error)
      }
    })
  })
}

t.test('slow clients cannot hold a connection', async (t) => {
  let bodyHandlerCalls = 0
  const app = await buildTestApp(t, {
    env: { REQUEST_TIMEOUT_MS: '800', HEADERS_TIMEOUT_MS: '500' },
    extend: (app) => {
      app.post(
        '/test/echo',
        {
          schema: {
            operationId: 'testEcho',
            tags: ['test'],
            body: Type.Object({ text: Type.String() }, { additionalProperties: false }),
            response: { 200: Type.Object({ text: Type.String() }) },
          },
        },
        async (request) => {
          bodyHandlerCalls++
          return { text: (request.body as { text: string }).text }
        },
      )
    },
  })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const address = app.server.address()
  const port = typeof address === 'object' && address ? address.port : 0

  const timedOut = (outcome: Outcome) =>
    outcome.ended === 'closed' && (outcome.data === '' || /^HTTP\/1\.1 408 /.test(outcome.data))

  t.test('a client that stalls inside the headers', async (t) => {
    const outcome = await stall(port, 'GET /health HTTP/1.1\r\nHost: localhost\r\nX-Slow: ', 4000)
    t.ok(
      timedOut(outcome),
      `answered 408 or disconnected (${outcome.ended}: ${JSON.stringify(outcome.data.slice(0, 40))})`,
    )
    t.ok(outcome.ms <= 2000, `within 2 s (took ${outcome.ms} ms)`)
    t.ok(outcome.ms >= 400, `not before the headers timeout (took ${outcome.ms} ms)`)
  })

  t.test('a client that stalls inside the request line', async (t) => {
    const outcome = await stall(port, 'GET /hea', 4000)
    t.ok(timedOut(outcome), `answered 408 or disconnected (${outcome.ended})`)
    t.ok(outcome.ms <= 2000, `within 2 s (took ${outcome.ms} ms)`)
  })

  t.test('a client that stalls inside the body', async (t) => {
    const head = [
      'POST /test/echo HTTP/1.1',
      'Host: localhost',
      'Content-Type: application/json',
      'Content-Length: 100',
      '',
      '',
    ].join('\r\n')
    const outcome = await stall(port, `${head}{"text":"a`, 5000)
    t.ok(
      timedOut(outcome),
      `answered 408 or disconnected (${outcome.ended}: ${JSON.stringify(outcome.data.slice(0, 40))})`,
    )
    t.ok(outcome.ms <= 2500, `within 2.5 s (took ${outcome.ms} ms)`)
    t.ok(outcome.ms >= 700, `not before the request timeout (took ${outcome.ms} ms)`)
    t.equal(bodyHandlerCalls, 0, 'the handler never ran on a partial body')
  })

  t.test('normal requests on the same server still work', async (t) => {
    const health = await fetch(`http://127.0.0.1:${port}/health`)
    t.equal(health.status, 200)
    t.same(await health.json(), { status: 'ok' })
    const echo = await fetch(`http://127.0.0.1:${port}/test/echo`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ text: 'hi' }),
    })
    t.equal(echo.status, 200)
    t.same(await echo.json(), { text: 'hi' })
    t.equal(bodyHandlerCalls, 1)
  })
})
