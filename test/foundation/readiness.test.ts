import { sql } from 'drizzle-orm'
import type { FastifyInstance } from 'fastify'
import t from 'tap'
import { buildApp } from '../../src/app.js'
import { LogCapture, testConfig } from '../helper.js'
import { type Cluster, findPostgresBinDir, startCluster } from '../support/postgres-cluster.js'

const binDir = findPostgresBinDir()

interface Readiness {
  status: string
  services: Record<string, { status: string; message?: string }>
}

async function ready(app: FastifyInstance) {
  const started = Date.now()
  const response = await app.inject({ method: 'GET', url: '/ready' })
  return { status: response.statusCode, body: response.json() as Readiness, ms: Date.now() - started }
}

// This test stops and restarts a server of its own, so it needs local PostgreSQL binaries.
t.test('readiness follows a PostgreSQL outage and recovers without a restart', async (t) => {
  if (!t.ok(binDir, 'PostgreSQL server binaries (initdb, postgres) are available')) return
  const cluster: Cluster = await startCluster({ binDir: binDir as string })
  t.teardown(() => cluster.destroy())

  const logs = new LogCapture()
  const app = await buildApp(testConfig({ DATABASE_URL: cluster.url, MIGRATE_ON_START: 'true', LOG_LEVEL: 'warn' }), {
    logStream: logs,
  })
  t.teardown(() => app.close())
  await app.ready()

  const uncaught: unknown[] = []
  const onUncaught = (error: unknown) => uncaught.push(error)
  process.on('uncaughtException', onUncaught)
  process.on('unhandledRejection', onUncaught)
  t.teardown(() => {
    process.off('uncaughtException', onUncaught)
    process.off('unhandledRejection', onUncaught)
  })

  const healthy = await ready(app)
  t.equal(healthy.status, 200, 'ready while PostgreSQL is up')
  t.equal(healthy.body.status, 'healthy')
  t.equal(healthy.body.services.database?.status, 'healthy')

  // Leave an idle pooled connection behind: it is the one PostgreSQL's shutdown kills.
  t.ok((app.database.client as { idleCount?: number }).idleCount, 'the pool holds an idle connection')

  await cluster.stop()

  const down = await ready(app)
  t.equal(down.status, 503, '503 while PostgreSQL is down')
  t.equal(down.body.status, 'unhealthy')
  t.equal(down.body.services.database?.status, 'unhealthy')
  t.ok(down.ms < 3000, `answered in ${down.ms} ms, without hanging`)
  t.notMatch(JSON.stringify(down.body), /ECONNREFUSED|127\.0\.0\.1|postgres:\/\//, 'no connection details leak')

  const again = await ready(app)
  t.equal(again.status, 503, 'still 503 on the next probe')
  t.ok(again.ms < 3000, `answered in ${again.ms} ms`)

  const health = await app.inject({ method: 'GET', url: '/health' })
  t.equal(health.statusCode, 200, 'liveness is unaffected by the database outage')

  t.same(uncaught, [], 'no uncaught exception or unhandled rejection (idle-client errors are handled)')
  t.ok(
    logs.lines.some((line) => line.msg === 'idle database connection failed'),
    'the idle connection failure is logged as a warning',
  )

  await cluster.start()

  let recovered: Awaited<ReturnType<typeof ready>> | null = null
  for (let attempt = 0; attempt < 20; attempt++) {
    const probe = await ready(app)
    if (probe.status === 200) {
      recovered = probe
      break
    }
    await new Promise((resolve) => setTimeout(resolve, 250))
  }
  t.equal(recovered?.status, 200, 'ready again once PostgreSQL is back, same app instance')
  t.equal(recovered?.body.status, 'healthy')
  t.equal(recovered?.body.services.database?.status, 'healthy')

  const result = await app.db.execute(sql`select count(*)::int as n from system_settings`)
  const [row] = (result as unknown as { rows: { n: number }[] }).rows
  t.equal(row?.n, 0, 'queries work again through the same pool')
  t.same(uncaught, [], 'still no uncaught errors')
})
