/**
 * `npm test` after typecheck, lint and the OpenAPI drift check: runs the whole suite twice, on
 * embedded PGlite and on real PostgreSQL, then prints one line `N passed, N failed`.
 *
 * PostgreSQL: TEST_DATABASE_URL (a server where the user may create databases), or a throwaway
 * cluster started from the machine's PostgreSQL binaries. Only when neither exists is the
 * PostgreSQL pass skipped, loudly, and never with REQUIRE_POSTGRES=1. Redis likewise: TEST_REDIS_URL
 * or a throwaway redis-server; tests that need Redis fail without one, and REQUIRE_REDIS=1 stops
 * the run before it starts.
 */
import { spawn } from 'node:child_process'
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { preparePostgresTemplate, writePgliteTemplate } from '../test/support/databases.js'
import { type Cluster, findPostgresBinDir, startCluster } from '../test/support/postgres-cluster.js'
import { hasRedisServer, type RedisServer, startRedis } from '../test/support/redis-server.js'

const banner = (text: string) => console.log(`\n${'='.repeat(78)}\n${text}\n${'='.repeat(78)}`)
const warn = (text: string) => console.log(`\n!!! ${text}\n`)

const tmp = mkdtempSync(join(tmpdir(), 'backplane-test-'))
let cluster: Cluster | null = null
let redis: RedisServer | null = null
let passed = 0
let failed = 0

async function cleanup() {
  await cluster?.destroy().catch(() => {})
  await redis?.stop().catch(() => {})
  rmSync(tmp, { recursive: true, force: true })
}

for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
  process.once(signal, () => {
    void cleanup().finally(() => process.exit(130))
  })
}

/** Counts top-level test results (per file, per pass) from tap's saved raw TAP output. */
function countResults(dir: string) {
  if (!existsSync(dir)) return { passed: 0, failed: 0 }
  let ok = 0
  let notOk = 0
  const walk = (path: string) => {
    for (const entry of readdirSync(path)) {
      const full = join(path, entry)
      if (statSync(full).isDirectory()) walk(full)
      else if (entry.endsWith('.tap')) {
        for (const line of readFileSync(full, 'utf8').split('\n')) {
          if (/^ok \d+/.test(line) && !/# SKIP/i.test(line)) ok++
          else if (/^not ok \d+/.test(line) && !/# TODO/i.test(line)) notOk++
        }
      }
    }
  }
  walk(dir)
  return { passed: ok, failed: notOk }
}

function runTap(engine: string, env: Record<string, string>, args: string[]): Promise<number> {
  return new Promise((resolve) => {
    const child = spawn('npx', ['tap', ...args], {
      stdio: 'inherit',
      env: { ...process.env, ...env, TEST_ENGINE: engine },
    })
    child.on('exit', (code) => resolve(code ?? 1))
  })
}

async function main() {
  const env: Record<string, string> = {}
  const tapArgs = process.argv.slice(2)

  banner('Preparing databases')
  const template = join(tmp, 'pglite-template.tar')
  await writePgliteTemplate(template)
  env.TEST_PGLITE_TEMPLATE = template

  let postgresUrl = process.env.TEST_DATABASE_URL
  if (!postgresUrl) {
    const binDir = findPostgresBinDir()
    if (binDir) {
      cluster = await startCluster({ binDir })
      postgresUrl = cluster.url
      console.log(`Started a throwaway PostgreSQL cluster on port ${cluster.port}`)
    }
  }
  if (postgresUrl) {
    await preparePostgresTemplate(postgresUrl)
    env.TEST_POSTGRES_URL = postgresUrl
  } else if (process.env.REQUIRE_POSTGRES === '1') {
    throw new Error('REQUIRE_POSTGRES=1 but no PostgreSQL: set TEST_DATABASE_URL or install PostgreSQL server binaries')
  } else {
    warn('NO POSTGRESQL FOUND: the PostgreSQL pass is SKIPPED. Set TEST_DATABASE_URL or install PostgreSQL 15.')
  }

  if (process.env.TEST_REDIS_URL) env.TEST_REDIS_URL = process.env.TEST_REDIS_URL
  else if (hasRedisServer()) {
    redis = await startRedis()
    env.TEST_REDIS_URL = redis.url
  } else if (process.env.REQUIRE_REDIS === '1') {
    throw new Error('REQUIRE_REDIS=1 but no Redis: set TEST_REDIS_URL or install redis-server')
  } else {
    warn('NO REDIS FOUND: the tests of shared (Redis) counters will FAIL. Install redis-server or set TEST_REDIS_URL.')
  }

  const engines = postgresUrl ? ['pglite', 'postgres'] : ['pglite']
  let exitCode = 0
  for (const engine of engines) {
    banner(`Test pass: ${engine}`)
    // Raw TAP per file, in this run's own folder, so concurrent runs never count each other.
    const resultsDir = join(tmp, `results-${engine}`)
    const code = await runTap(engine, env, ['--output-dir', resultsDir, ...tapArgs])
    const counts = countResults(resultsDir)
    // A file that crashed before reporting still fails the pass.
    if (code !== 0 && counts.failed === 0) counts.failed = 1
    if (code !== 0) exitCode = 1
    console.log(`[${engine}] ${counts.passed} passed, ${counts.failed} failed`)
    passed += counts.passed
    failed += counts.failed
  }
  return exitCode
}

let code = 1
try {
  code = await main()
} catch (error) {
  console.error(`Test run failed: ${error instanceof Error ? error.message : String(error)}`)
  failed = Math.max(failed, 1)
} finally {
  await cleanup()
}
console.log(`${passed} passed, ${failed} failed`)
process.exit(code === 0 && failed === 0 ? 0 : 1)
