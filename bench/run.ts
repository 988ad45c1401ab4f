import { randomUUID } from 'node:crypto'
import Stripe from 'stripe'
import { chatStreamBenchmarks } from './chat.js'
import { type Endpoint, formatTable, measure, pinLoadGenerator, type Scenario, startServer, warnIfBusy } from './lib.js'
import { PROJECT_COUNT, type PostgresFixture, postgresFixture, signUp, UNLIMITED } from './postgres-fixture.js'
import { webhookBenchmarks } from './webhooks.js'

/**
 * Throughput of the app relative to a reference, as a report: every scenario prints a ratio and
 * PASS or FAIL against its target, and the process exits 0 either way. Only a harness failure
 * (a server that does not start) exits non-zero.
 *
 *   npm run bench                    10 s per run
 *   BENCH_DURATION=5 npm run bench   5 s per run
 *   BENCH_ONLY=chat-streams npm run bench   2,000 chat streams at once (bench/chat.ts)
 */
const SCENARIOS: Scenario[] = [
  {
    name: 'health',
    baseline: { server: 'bare', path: '/health' },
    candidate: { server: 'app', path: '/health' },
    target: 0.6,
  },
  {
    // An authenticated read: bearer JWT (signature checked once, then cached until expiry) plus the
    // caller's memberships and user row from the embedded database, against /health on the same
    // app. Reported without a target: on PGlite the two indexed reads dominate.
    name: 'auth-me',
    baseline: { server: 'app', path: '/health', label: 'app /health', env: UNLIMITED },
    candidate: {
      server: 'app',
      path: '/api/v1/auth/me',
      label: 'app /auth/me',
      env: UNLIMITED,
      prepare: signUp,
    },
  },
]

/**
 * Reads on PostgreSQL, against node:http + pg running the same query without authentication. The
 * app side pays for the bearer token, the caller's memberships, the org check and serialisation.
 */
function postgresScenarios(fixture: PostgresFixture): Scenario[] {
  const database = { BENCH_DATABASE_URL: fixture.databaseUrl, BENCH_ORG_ID: fixture.orgId }
  return [
    {
      name: 'project-get',
      baseline: { server: 'bare-pg', path: `/api/v1/projects/${fixture.projectId}`, env: database },
      candidate: {
        server: 'app',
        path: `/api/v1/projects/${fixture.projectId}`,
        label: 'app (authenticated)',
        env: { ...database, ...UNLIMITED },
        headers: fixture.headers,
      },
      target: 0.6,
    },
    {
      // Ingestion only (WORKERS=false): verify, store the event and its job in one transaction, answer.
      name: 'stripe-ingest',
      baseline: { server: 'bare-pg', path: '/webhooks/stripe', env: database, post: signedStripeEvent },
      candidate: {
        server: 'app',
        path: '/api/v1/webhooks/stripe',
        label: 'app (verify, store, enqueue)',
        env: { ...database, ...UNLIMITED, STRIPE_WEBHOOK_SECRET: STRIPE_SECRET, WORKERS: 'false' },
        post: signedStripeEvent,
      },
      target: 0.5,
    },
    {
      name: 'project-list',
      baseline: { server: 'bare-pg', path: '/api/v1/projects', env: database },
      candidate: {
        server: 'app',
        path: '/api/v1/projects',
        label: `app (first page of ${PROJECT_COUNT.toLocaleString('en-US')})`,
        env: { ...database, ...UNLIMITED },
        headers: fixture.headers,
      },
    },
  ]
}
const POSTGRES_SCENARIOS = ['project-get', 'project-list', 'stripe-ingest', 'webhooks', 'chat-streams']

const STRIPE_SECRET = 'whsec_benchmark'

/** A new signed Stripe event per request, as Stripe would deliver it. */
function signedStripeEvent() {
  const body = JSON.stringify({
    id: `evt_${randomUUID().replaceAll('-', '')}`,
    object: 'event',
    type: 'invoice.paid',
    created: Math.floor(Date.now() / 1000),
    data: { object: { id: `in_${randomUUID().slice(0, 12)}`, object: 'invoice', amount_paid: 2000, currency: 'usd' } },
    livemode: false,
  })
  const signature = Stripe.webhooks.generateTestHeaderString({ payload: body, secret: STRIPE_SECRET })
  return { body, headers: { 'content-type': 'application/json', 'stripe-signature': signature } }
}

const WARMUP_SECONDS = 3
const CONNECTIONS = 100
const PIPELINING = 1
// Runs alternate baseline, candidate, baseline, ... so slow drift on the machine hits both sides.
const ROUNDS = 2

function durationSeconds(): number {
  const raw = process.env.BENCH_DURATION
  if (raw === undefined || raw.trim() === '') return 10
  const seconds = Number(raw)
  if (!Number.isFinite(seconds) || seconds <= 0) throw new Error('BENCH_DURATION must be a positive number of seconds')
  return seconds
}

interface Run {
  scenario: string
  side: 'baseline' | 'candidate'
  label: string
  round: number
  requestsPerSecond: number
  p99Ms: number
  non2xx: number
}

const labelOf = (endpoint: Endpoint) => endpoint.label ?? endpoint.server
const formatNumber = (value: number) => Math.round(value).toLocaleString('en-US')

/** Starts a fresh server for the endpoint, runs its `prepare` hook, loads it and stops it. */
async function runEndpoint(scenario: Scenario, side: Run['side'], round: number, seconds: number): Promise<Run> {
  const endpoint = scenario[side]
  const label = labelOf(endpoint)
  const server = await startServer(endpoint.server, endpoint.env)
  try {
    const prepared = endpoint.prepare ? await endpoint.prepare(server.baseUrl) : {}
    process.stdout.write(
      `${scenario.name}: round ${round} ${label} ${endpoint.post ? 'POST' : 'GET'} ${endpoint.path} ... `,
    )
    const result = await measure(`${server.baseUrl}${endpoint.path}`, {
      headers: { ...endpoint.headers, ...prepared },
      ...(endpoint.post ? { post: endpoint.post } : {}),
      warmupSeconds: WARMUP_SECONDS,
      durationSeconds: seconds,
      connections: CONNECTIONS,
      pipelining: PIPELINING,
    })
    console.log(`${formatNumber(result.requestsPerSecond)} req/s, p99 ${formatNumber(result.p99Ms)} ms`)
    // A 429 or 5xx answers faster than real work, so such a run overstates throughput.
    if (result.non2xx > 0) {
      const byStatus = Object.entries(result.non2xxByStatus)
        .map(([status, count]) => `${status}: ${count}`)
        .join(', ')
      console.warn(`WARNING: ${result.non2xx} non-2xx responses (${byStatus || 'status unknown'}); req/s is not valid`)
    }
    if (result.errors > 0) console.warn(`WARNING: ${result.errors} connection errors (${result.timeouts} timeouts)`)
    return { scenario: scenario.name, side, label, round, ...result }
  } finally {
    await server.stop()
  }
}

const best = (runs: Run[]) => runs.reduce((top, run) => (run.requestsPerSecond > top.requestsPerSecond ? run : top))

async function main() {
  const seconds = durationSeconds()
  // Pinned before the fixture starts PostgreSQL, which inherits the load CPU: the server's core is
  // the one under measurement, so the database shares the load generator's core, never the server's.
  pinLoadGenerator()
  // BENCH_ONLY=health runs one scenario (comma-separated names for several).
  const only = process.env.BENCH_ONLY?.split(',').map((name) => name.trim())
  const wanted = (name: string) => !only || only.includes(name)
  const scenarios = SCENARIOS.filter((scenario) => wanted(scenario.name))
  let fixture: PostgresFixture | null = null
  if (POSTGRES_SCENARIOS.some(wanted)) {
    fixture = await postgresFixture()
    if (fixture) scenarios.push(...postgresScenarios(fixture).filter((scenario) => wanted(scenario.name)))
    else
      console.warn(
        `WARNING: no PostgreSQL server binaries and no BENCH_POSTGRES_URL: ${POSTGRES_SCENARIOS.join(', ')} not measured`,
      )
  }
  try {
    await warnIfBusy()
    if (scenarios.length > 0) {
      console.log(
        `warmup ${WARMUP_SECONDS} s, measure ${seconds} s, ${CONNECTIONS} connections, pipelining ${PIPELINING}, ` +
          `${ROUNDS} rounds, best run of each side counts\n`,
      )
    }
    const verdicts = await runScenarios(scenarios, seconds)
    // Outbound webhooks change the fixture (endpoints, deliveries), so they run last.
    if (fixture && wanted('webhooks')) {
      console.log()
      verdicts.push(...(await webhookBenchmarks(fixture, seconds)))
    }
    // Streamed chat: a burst of concurrent conversation streams, not a duration; adds conversations.
    if (fixture && wanted('chat-streams')) {
      console.log()
      verdicts.push(...(await chatStreamBenchmarks(fixture)))
    }
    console.log()
    for (const verdict of verdicts) console.log(verdict)
  } finally {
    await fixture?.close()
  }
}

/** Runs the request scenarios, prints their table and returns their verdict lines. */
async function runScenarios(scenarios: Scenario[], seconds: number): Promise<string[]> {
  if (scenarios.length === 0) return []
  const runs: Run[] = []
  const verdicts: string[] = []
  for (const scenario of scenarios) {
    const own: Run[] = []
    for (let round = 1; round <= ROUNDS; round++) {
      own.push(await runEndpoint(scenario, 'baseline', round, seconds))
      own.push(await runEndpoint(scenario, 'candidate', round, seconds))
    }
    runs.push(...own)
    const baseline = best(own.filter((run) => run.side === 'baseline'))
    const candidate = best(own.filter((run) => run.side === 'candidate'))
    const ratio = candidate.requestsPerSecond / baseline.requestsPerSecond
    const verdict = scenario.target === undefined ? '' : ratio >= scenario.target ? ' PASS' : ' FAIL'
    const goal = scenario.target === undefined ? '(reported, no target)' : `(target >= ${scenario.target.toFixed(2)})`
    const tainted = own.some((run) => run.non2xx > 0) ? ' (non-2xx responses: see warnings)' : ''
    verdicts.push(
      `${scenario.name}: ${candidate.label}/${baseline.label} = ${ratio.toFixed(2)} ` + `${goal}${verdict}${tainted}`,
    )
  }

  console.log()
  console.log(
    formatTable(
      ['scenario', 'round', 'server', 'req/s', 'p99 ms', 'non-2xx'],
      runs.map((run) => [
        run.scenario,
        String(run.round),
        run.label,
        formatNumber(run.requestsPerSecond),
        formatNumber(run.p99Ms),
        String(run.non2xx),
      ]),
      [1, 3, 4, 5],
    ),
  )
  return verdicts
}

try {
  await main()
} catch (error) {
  console.error(`bench failed: ${error instanceof Error ? error.message : String(error)}`)
  process.exit(1)
}
