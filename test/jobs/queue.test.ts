import { setTimeout as sleep } from 'node:timers/promises'
import type { FastifyInstance } from 'fastify'
import t from 'tap'
import { buildApp } from '../../src/app.js'
import { systemSettings } from '../../src/db/schema/index.js'
import type { JobContext } from '../../src/plugins/jobs.js'
import { buildTestApp, eventually, postgresForTest, TEST_ENCRYPTION_KEY, testConfig } from '../helper.js'
import { createPostgresDatabase } from '../support/databases.js'
import { runNodeScript } from '../support/server-process.js'

// Workers look for work every half second in these tests.
const FAST = { JOBS_POLL_INTERVAL_MS: '500' }

interface Recorded {
  data: { n: number }
  job: JobContext
}

/** Defines `test.record`, whose handler records every run and fails while `failing` says so. */
function recorder(options: { failing?: (run: Recorded) => boolean; retryLimit?: number } = {}) {
  const runs: Recorded[] = []
  const extend = async (app: FastifyInstance) => {
    await app.jobs.define<{ n: number }>({
      name: 'test.record',
      retryLimit: options.retryLimit ?? 2,
      retryDelaySeconds: 1,
      handler: async (data, job) => {
        const run = { data, job }
        runs.push(run)
        if (options.failing?.(run)) throw new Error(`run ${runs.length} fails`)
      },
    })
  }
  return { runs, extend }
}

t.test('a job enqueued in a transaction exists exactly when the transaction commits', async (t) => {
  const { runs, extend } = recorder()
  const app = await buildTestApp(t, { env: FAST, extend })

  await app.db.transaction(async (tx) => {
    await tx.insert(systemSettings).values({ key: 'test.committed', value: '1' })
    await app.jobs.send('test.record', { n: 1 }, { tx })
  })
  await app.db
    .transaction(async (tx) => {
      await tx.insert(systemSettings).values({ key: 'test.rolled-back', value: '1' })
      await app.jobs.send('test.record', { n: 2 }, { tx })
      throw new Error('roll back')
    })
    .catch(() => {})

  t.ok(await eventually(() => runs.length >= 1), 'the committed job ran')
  // Give a rolled-back job every chance to show up: several polling intervals.
  await sleep(2000)
  t.same(
    runs.map((run) => run.data.n),
    [1],
    'only the committed job ran, once',
  )
  t.same(await app.jobs.counts(), { queued: 0, dead: 0 })
})

t.test('a failing job is retried with backoff, then dead-lettered and reported by /ready', async (t) => {
  const { runs, extend } = recorder({ failing: () => true, retryLimit: 2 })
  const app = await buildTestApp(t, { env: FAST, extend })
  await app.jobs.send('test.record', { n: 7 })

  t.ok(await eventually(() => runs.length === 3, 30_000), 'the first run and two retries')
  t.same(
    runs.map((run) => run.job.retryCount),
    [0, 1, 2],
    'each retry knows its attempt',
  )
  t.equal(new Set(runs.map((run) => run.job.id)).size, 1, 'all attempts are the same job')
  t.ok(await eventually(async () => (await app.jobs.counts()).dead === 1), 'the job lands in the dead-letter queue')
  await sleep(2500)
  t.equal(runs.length, 3, 'no attempt after the last retry')

  const ready = await app.inject({ method: 'GET', url: '/ready' })
  t.equal(ready.statusCode, 200, 'still ready: a dead letter needs attention but serving goes on')
  const body = ready.json()
  t.equal(body.status, 'degraded')
  t.equal(body.services.jobs.status, 'degraded')
  t.equal(body.services.jobs.dead, 1)
  t.equal(body.services.jobs.queued, 0)
})

t.test('a job that fails once succeeds on its retry', async (t) => {
  const { runs, extend } = recorder({ failing: (run) => run.job.retryCount === 0 })
  const app = await buildTestApp(t, { env: FAST, extend })
  await app.jobs.send('test.record', { n: 3 })
  t.ok(await eventually(() => runs.length === 2, 20_000), 'ran twice')
  t.ok(await eventually(async () => (await app.jobs.counts()).queued === 0), 'nothing left queued')
  t.same(await app.jobs.counts(), { queued: 0, dead: 0 }, 'and nothing dead')
})

t.test('workers start once the app is ready, after every module has registered its handlers', async (t) => {
  const { runs, extend } = recorder()
  await buildTestApp(t, {
    env: FAST,
    extend: async (app) => {
      await extend(app)
      await app.jobs.send('test.record', { n: 1 })
      // Several polling intervals while the app is still being assembled.
      await sleep(1500)
      t.same(runs, [], 'nothing ran before the app was ready')
    },
  })
  t.ok(await eventually(() => runs.length === 1), 'the job ran once the app was ready')
})

t.test('a backlog drains back to back, not one job per polling interval', async (t) => {
  const { runs, extend } = recorder()
  // The default interval: at one job per interval, 40 jobs would take 80 s.
  const app = await buildTestApp(t, { env: { JOBS_POLL_INTERVAL_MS: '2000' }, extend })
  await app.db.transaction(async (tx) => {
    for (let n = 0; n < 40; n++) await app.jobs.send('test.record', { n }, { tx })
  })
  t.ok(await eventually(() => runs.length === 40, 20_000), 'all 40 ran within 20 s')
  t.same(
    runs.map((run) => run.data.n).sort((a, b) => a - b),
    Array.from({ length: 40 }, (_, n) => n),
    'each once',
  )
})

t.test('queues are checked: unknown queues, bad names and double definitions are refused', async (t) => {
  const app = await buildTestApp(t, { env: FAST })
  await t.rejects(app.jobs.send('test.nowhere', { n: 1 }), /unknown queue/)
  await t.rejects(app.jobs.define({ name: 'Bad Name', handler: async () => {} }), /invalid queue name/)
  await app.jobs.define({ name: 'test.once', handler: async () => {} })
  await t.rejects(app.jobs.define({ name: 'test.once', handler: async () => {} }), /defined twice/)
})

t.test('with WORKERS=false jobs wait; a worker process runs them (PostgreSQL)', async (t) => {
  const adminUrl = await postgresForTest(t)
  const database = await createPostgresDatabase(adminUrl, { empty: true })
  t.teardown(() => database.drop())
  const env = { DATABASE_URL: database.url, ...FAST }

  const { runs, extend } = recorder()
  const api = await buildApp(testConfig({ ...env, MIGRATE_ON_START: 'true', WORKERS: 'false' }))
  t.teardown(() => api.close())
  await extend(api)
  t.equal(api.jobs.working, false)
  await api.jobs.send('test.record', { n: 11 })
  await sleep(1500)
  t.equal(runs.length, 0, 'the API process does not run jobs')
  t.same(await api.jobs.counts(), { queued: 1, dead: 0 }, 'the job waits')

  // Another instance with workers on, sharing the database, picks it up.
  const { runs: workerRuns, extend: workerExtend } = recorder()
  const worker = await buildApp(testConfig(env))
  t.teardown(() => worker.close())
  await workerExtend(worker)
  await worker.ready()
  t.ok(await eventually(() => workerRuns.length === 1), 'the worker instance ran it')
  t.same(workerRuns[0]?.data, { n: 11 })
  t.ok(await eventually(async () => (await api.jobs.counts()).queued === 0), 'and the queue is empty')
})

t.test('npm run worker starts, runs without listening, and stops cleanly on SIGTERM', async (t) => {
  const adminUrl = await postgresForTest(t)
  const database = await createPostgresDatabase(adminUrl, { empty: true })
  t.teardown(() => database.drop())
  // Migrated by an API instance first: a worker never migrates on its own unless told.
  const api = await buildApp(testConfig({ DATABASE_URL: database.url, MIGRATE_ON_START: 'true', WORKERS: 'false' }))
  await api.close()

  const worker = runNodeScript(t, 'src/worker.ts', {
    DATABASE_URL: database.url,
    ENCRYPTION_KEY: TEST_ENCRYPTION_KEY,
    LOG_LEVEL: 'info',
    NODE_ENV: 'production',
  })
  await worker.waitForStdout(/worker started/, 60_000)
  worker.child.kill('SIGTERM')
  const exit = await worker.exited
  t.equal(exit.code, 0, `exits 0 (stderr: ${worker.stderr().slice(0, 300)})`)
  t.match(worker.stdout(), /worker stopping/)
  t.notMatch(worker.stdout(), /Server listening/, 'no HTTP server')
})
