import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'

/**
 * The floor the app is measured against: plain node:http answering GET /health with the same body
 * and content type Fastify sends, serialised per request as the app does.
 */
const server = createServer((request, response) => {
  if (request.method === 'GET' && request.url === '/health') {
    const body = JSON.stringify({ status: 'ok' })
    response.writeHead(200, {
      'content-type': 'application/json; charset=utf-8',
      'content-length': Buffer.byteLength(body),
    })
    response.end(body)
    return
  }
  response.writeHead(404).end()
})

server.listen(Number(process.env.PORT ?? 0), '127.0.0.1', () => {
  process.stdout.write(`READY ${(server.address() as AddressInfo).port}\n`)
})

process.on('SIGTERM', () => {
  server.closeAllConnections()
  server.close(() => process.exit(0))
})
