import { once } from 'node:events'
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import pg from 'pg'
import { Agent, request } from 'undici'
import { signDelivery } from '../src/modules/webhooks/signing.js'
import { percentile, startServer } from './lib.js'
import { type PostgresFixture, UNLIMITED } from './postgres-fixture.js'

/**
 * Outbound webhooks on PostgreSQL, against a local receiver that answers 200 at once.
 *
 * - Throughput: a backlog of events committed at once to the outbox, fanned out to ENDPOINTS
 *   endpoints and delivered; against the same number of signed POSTs sent straight to the receiver
 *   over ENDPOINTS connections, one request at a time each, as the app's workers do.
 * - Delay: project updates at a steady rate through the API, from each update's commit (the
 *   project's updatedAt) to its arrival at the receiver.
 */
const ENDPOINTS = 4
const BACKLOG_EVENTS = 1_000
const UPDATES_PER_SECOND = 20
const SECRET = `whsec_${Buffer.alloc(32, 9).toString('base64')}`

class CountingReceiver {
  count = 0
  /** Arrival times of project.updated deliveries, with the commit time they carry. */
  readonly delays: number[] = []
  measureDelays = false
  private waiters: { target: number; resolve: () => void }[] = []
  private server: Server | undefined

  async start(): Promise<string> {
    this.server = createServer((req, res) => {
      const chunks: Buffer[] = []
      req.on('data', (chunk: Buffer) => chunks.push(chunk))
      req.on('end', () => {
        const arrived = Date.now()
        res.writeHead(200).end()
        this.count++
        if (this.measureDelays) {
          const event = JSON.parse(Buffer.concat(chunks).toString('utf8')) as { data?: { updatedAt?: string } }
          const committed = Date.parse(event.data?.updatedAt ?? '')
          if (Number.isFinite(committed)) this.delays.push(arrived - committed)
        }
        this.waiters = this.waiters.filter((waiter) => {
          if (this.count < waiter.target) return true
          waiter.resolve()
          return false
        })
      })
    })
    this.server.keepAliveTimeout = 30_000
    this.server.listen(0, '127.0.0.1')
    await once(this.server, 'listening')
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}/hooks`
  }

  /** Resolves once `target` deliveries arrived in total; rejects after `timeoutMs`. */
  reach(target: number, timeoutMs: number): Promise<void> {
    if (this.count >= target) return Promise.resolve()
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`only ${this.count} of ${target} deliveries within ${timeoutMs} ms`)),
        timeoutMs,
      )
      this.waiters.push({
        target,
        resolve: () => {
          clearTimeout(timer)
          resolve()
        },
      })
    })
  }

  async close() {
    this.server?.closeAllConnections()
    await new Promise((resolve) => this.server?.close(resolve))
  }
}

/** The same work without the app: sign and POST `total` deliveries over `connections` sequential senders. */
async function bareDeliveries(url: string, total: number, connections: number, body: string): Promise<number> {
  const agent = new Agent({ connections: 1 })
  const started = performance.now()
  let next = 0
  await Promise.all(
    Array.from({ length: connections }, async () => {
      while (next < total) {
        const id = `evt_bare_${next++}`
        const headers = {
          'content-type': 'application/json',
          ...signDelivery({ id, timestamp: new Date(), body }, [SECRET]),
        }
        const response = await request(url, { method: 'POST', headers, body, dispatcher: agent })
        await response.body.dump()
        if (response.statusCode !== 200) throw new Error(`receiver answered ${response.statusCode}`)
      }
    }),
  )
  const seconds = (performance.now() - started) / 1000
  await agent.close()
  return total / seconds
}

async function api(baseUrl: string, fixture: PostgresFixture, method: string, path: string, body?: unknown) {
  const response = await fetch(`${baseUrl}/api/v1${path}`, {
    method,
    headers: { ...fixture.headers, 'content-type': 'application/json' },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  })
  if (response.status >= 300) throw new Error(`${method} ${path} answered ${response.status}: ${await response.text()}`)
  return response.json() as Promise<Record<string, unknown>>
}

/** Runs both measurements; returns the summary lines. */
export async function webhookBenchmarks(fixture: PostgresFixture, seconds: number): Promise<string[]> {
  const receiver = new CountingReceiver()
  const url = await receiver.start()
  const app = await startServer('app', {
    BENCH_DATABASE_URL: fixture.databaseUrl,
    ...UNLIMITED,
    // Production refuses private targets, and the receiver is on loopback.
    BENCH_NODE_ENV: 'test',
    WEBHOOK_ALLOW_PRIVATE_TARGETS: 'true',
  })
  const db = new pg.Client({ connectionString: fixture.databaseUrl })
  await db.connect()
  try {
    const endpointIds: string[] = []
    for (let i = 0; i < ENDPOINTS; i++) {
      const endpoint = await api(app.baseUrl, fixture, 'POST', '/webhook-endpoints', {
        orgId: fixture.orgId,
        url,
        events: ['project.updated'],
      })
      endpointIds.push(String(endpoint.id))
    }
    const project = await api(app.baseUrl, fixture, 'GET', `/projects/${fixture.projectId}`)
    const body = JSON.stringify({
      id: 'evt_bench',
      type: 'project.updated',
      timestamp: new Date().toISOString(),
      orgId: fixture.orgId,
      data: project,
    })

    // Throughput. The baseline first, while the app idles.
    const total = BACKLOG_EVENTS * ENDPOINTS
    process.stdout.write(`webhook-throughput: bare signed POSTs x ${total.toLocaleString('en-US')} ... `)
    const bare = await bareDeliveries(url, total, ENDPOINTS, body)
    console.log(`${Math.round(bare).toLocaleString('en-US')} deliveries/s`)

    process.stdout.write(
      `webhook-throughput: app, ${BACKLOG_EVENTS.toLocaleString('en-US')} events committed at once to ${ENDPOINTS} endpoints ... `,
    )
    const before = receiver.count
    const started = performance.now()
    // One transaction: the backlog becomes visible, and is announced, all at once.
    await db.query(
      `insert into outbox_events (id, type, org_id, subject_type, subject_id, data)
       select 'evt_bench_' || i, 'project.updated', $1, 'project', $2, $3::jsonb
       from generate_series(1, $4::int) as i`,
      [fixture.orgId, fixture.projectId, JSON.stringify(project), BACKLOG_EVENTS],
    )
    await receiver.reach(before + total, 300_000)
    const appRate = total / ((performance.now() - started) / 1000)
    console.log(`${Math.round(appRate).toLocaleString('en-US')} deliveries/s`)

    // Delay from commit to delivery, at a steady rate the app keeps up with.
    const updates = Math.max(20, Math.round(seconds * UPDATES_PER_SECOND))
    process.stdout.write(
      `webhook-delay: ${updates} project updates at ${UPDATES_PER_SECOND}/s to ${ENDPOINTS} endpoints ... `,
    )
    await sleep(500)
    receiver.measureDelays = true
    const beforeUpdates = receiver.count
    for (let i = 0; i < updates; i++) {
      const tick = performance.now()
      await api(app.baseUrl, fixture, 'PATCH', `/projects/${fixture.projectId}`, { description: `update ${i}` })
      await sleep(Math.max(0, 1000 / UPDATES_PER_SECOND - (performance.now() - tick)))
    }
    await receiver.reach(beforeUpdates + updates * ENDPOINTS, 60_000)
    const delays = receiver.delays
    const p50 = percentile(delays, 50)
    const p99 = percentile(delays, 99)
    console.log(`p50 ${p50} ms, p99 ${p99} ms, max ${Math.max(...delays)} ms over ${delays.length} deliveries`)

    const { rows } = await db.query<{ failed: string }>(
      `select count(*) as failed from webhook_delivery_attempts where not succeeded`,
    )
    if (Number(rows[0]?.failed) > 0) console.warn(`WARNING: ${rows[0]?.failed} failed attempts; figures are not valid`)

    return [
      `webhook-throughput: app/bare = ${(appRate / bare).toFixed(2)} ` +
        `(${Math.round(appRate).toLocaleString('en-US')} vs ${Math.round(bare).toLocaleString('en-US')} deliveries/s; reported, no target)`,
      `webhook-delay: commit to delivery p50 ${p50} ms, p99 ${p99} ms at ${UPDATES_PER_SECOND} updates/s x ${ENDPOINTS} endpoints (reported, no target)`,
    ]
  } finally {
    await db.end()
    await app.stop()
    await receiver.close()
  }
}
