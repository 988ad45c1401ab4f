import { createServer, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { randomUUID } from 'node:crypto'
import pg from 'pg'

/**
 * The floor for database reads: plain node:http and a `pg` pool of the app's default size,
 * answering the same URLs as the app with the same rows and no authentication. A project read is
 * one primary-key SELECT; the list is the app's first-page query for one org.
 */
const pool = new pg.Pool({ connectionString: process.env.BENCH_DATABASE_URL, max: 10 })
// An idle connection's error would otherwise crash the baseline in the middle of a run.
pool.on('error', (error) => console.error(`bare-pg: ${error.message}`))
const orgId = process.env.BENCH_ORG_ID

const columns = `id, org_id as "orgId", name, description, version, created_by as "createdBy",
  created_at as "createdAt", updated_at as "updatedAt"`
const PROJECT = `select ${columns}, data from projects where id = $1`
const FIRST_PAGE = `select ${columns}, updated_at::text as "sortKey" from projects where org_id = $1
  order by updated_at desc, id desc limit 21`

const INSERT_EVENT = `insert into webhook_events (id, provider, provider_event_id, type, payload)
  values ($1, 'stripe', $2, $3, $4)`

function send(response: ServerResponse, status: number, body: string) {
  response.writeHead(status, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(body),
  })
  response.end(body)
}

const server = createServer((request, response) => {
  const url = request.url ?? '/'
  const fail = (error: Error) => send(response, 500, JSON.stringify({ error: error.message }))
  if (url === '/api/v1/projects') {
    pool.query(FIRST_PAGE, [orgId]).then((result) => {
      const data = result.rows.slice(0, 20).map(({ sortKey: _sortKey, ...row }) => row)
      send(response, 200, JSON.stringify({ data, nextCursor: result.rows.length > 20 ? 'next' : null }))
    }, fail)
    return
  }
  if (url === '/webhooks/stripe' && request.method === 'POST') {
    // One single-row INSERT per event, autocommitted: the floor of storing anything durably.
    const chunks: Buffer[] = []
    request.on('data', (chunk: Buffer) => chunks.push(chunk))
    request.on('end', () => {
      const event = JSON.parse(Buffer.concat(chunks).toString('utf8')) as { id: string; type: string }
      pool
        .query(INSERT_EVENT, [`raw_${randomUUID()}`, event.id, event.type, Buffer.concat(chunks).toString('utf8')])
        .then(() => send(response, 200, '{"received":true}'), fail)
    })
    return
  }
  const match = /^\/api\/v1\/projects\/([\w-]+)$/.exec(url)
  if (match) {
    pool.query(PROJECT, [match[1]]).then((result) => {
      if (result.rows.length === 0) send(response, 404, '{}')
      else send(response, 200, JSON.stringify(result.rows[0]))
    }, fail)
    return
  }
  response.writeHead(404).end()
})

server.listen(Number(process.env.PORT ?? 0), '127.0.0.1', () => {
  process.stdout.write(`READY ${(server.address() as AddressInfo).port}\n`)
})

process.on('SIGTERM', () => {
  server.closeAllConnections()
  server.close(() => void pool.end().finally(() => process.exit(0)))
})
