import { randomUUID } from 'node:crypto'
import Stripe from 'stripe'
import { chatStreamBenchmarks } from './chat.js'
import {
  type Endpoint,
  formatTable,
  load,
  type Measurement,
  percentile,
  pinLoadGenerator,
  type RunningServer,
  type Scenario,
  startServer,
  warnIfBusy,
} from './lib.js'
import { PROJECT_COUNT, type PostgresFixture, postgresFixture, signUp, UNLIMITED } from './postgres-fixture.js'
import { webhookBenchmarks } from './webhooks.js'

/**
 * Throughput of the app relative to a reference, as a report: every scenario prints a ratio and
 * PASS or FAIL against its target, and the process exits 0 either way. Only a harness failure
 * (a server that does not start) exits non-zero.
 *
 *   npm run bench                    each side measured for 10 s, in 2 s slices
 *   BENCH_DURATION=20 npm run bench  20 s per side
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
// Both servers of a scenario run at once and take turns in short slices, in alternating order,
// each paused while the other is loaded: the machines here change speed by half within minutes,
// and slices spread that drift evenly over both sides, where whole runs in sequence measured it.
const SLICE_SECONDS = 2

/** Seconds each side of a scenario is measured in total. */
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
  requestsPerSecond: number
  /** Slowest and fastest slice, req/s. */
  sliceRange: [number, number]
  /** Median of the slices' p99 latencies. */
  p99Ms: number
  non2xx: number
}

const SIDES = ['baseline', 'candidate'] as const
const labelOf = (endpoint: Endpoint) => endpoint.label ?? endpoint.server
const formatNumber = (value: number) => Math.round(value).toLocaleString('en-US')

interface Side {
  endpoint: Endpoint
  server: RunningServer
  headers: Record<string, string>
  slices: Measurement[]
}

/** Starts both servers of a scenario, warms each, then loads them in turn, slice by slice. */
async function runScenario(scenario: Scenario, seconds: number): Promise<Run[]> {
  const sides: Partial<Record<Run['side'], Side>> = {}
  try {
    for (const side of SIDES) {
      const endpoint = scenario[side]
      const server = await startServer(endpoint.server, endpoint.env)
      sides[side] = { endpoint, server, headers: {}, slices: [] }
      sides[side].headers = { ...endpoint.headers, ...(endpoint.prepare ? await endpoint.prepare(server.baseUrl) : {}) }
      server.pause()
    }
    const loadSide = async (side: Side, loadSeconds: number) => {
      side.server.resume()
      try {
        return await load(`${side.server.baseUrl}${side.endpoint.path}`, {
          headers: side.headers,
          ...(side.endpoint.post ? { post: side.endpoint.post } : {}),
          seconds: loadSeconds,
          connections: CONNECTIONS,
          pipelining: PIPELINING,
        })
      } finally {
        side.server.pause()
      }
    }
    const both = SIDES.map((side) => sides[side] as Side)
    // Discarded: JIT warmup and connection set-up.
    for (const side of both) await loadSide(side, WARMUP_SECONDS)
    const slices = Math.max(2, Math.round(seconds / SLICE_SECONDS))
    process.stdout.write(`${scenario.name}: ${slices} slices of ${SLICE_SECONDS} s per side `)
    for (let slice = 0; slice < slices; slice++) {
      for (const side of slice % 2 === 0 ? both : [...both].reverse())
        side.slices.push(await loadSide(side, SLICE_SECONDS))
      process.stdout.write('.')
    }
    console.log()
    return SIDES.map((side) => summarise(scenario, side, sides[side] as Side))
  } finally {
    await Promise.all(Object.values(sides).map((side) => side.server.stop()))
  }
}

function summarise(scenario: Scenario, side: Run['side'], { endpoint, slices }: Side): Run {
  const total = (pick: (slice: Measurement) => number) => slices.reduce((sum, slice) => sum + pick(slice), 0)
  const label = labelOf(endpoint)
  const perSlice = slices.map((slice) => slice.requests / slice.seconds)
  const non2xx = total((slice) => slice.non2xx)
  // A 429 or 5xx answers faster than real work, so such a run overstates throughput.
  if (non2xx > 0) {
    const byStatus: Record<string, number> = {}
    for (const slice of slices)
      for (const [status, count] of Object.entries(slice.non2xxByStatus))
        byStatus[status] = (byStatus[status] ?? 0) + count
    const statuses = Object.entries(byStatus)
      .map(([status, count]) => `${status}: ${count}`)
      .join(', ')
    console.warn(`WARNING: ${label}: ${non2xx} non-2xx responses (${statuses || 'status unknown'}); req/s is not valid`)
  }
  const errors = total((slice) => slice.errors)
  if (errors > 0)
    console.warn(`WARNING: ${label}: ${errors} connection errors (${total((slice) => slice.timeouts)} timeouts)`)
  return {
    scenario: scenario.name,
    side,
    label,
    requestsPerSecond: total((slice) => slice.requests) / total((slice) => slice.seconds),
    sliceRange: [Math.min(...perSlice), Math.max(...perSlice)],
    p99Ms: percentile(
      slices.map((slice) => slice.p99Ms),
      50,
    ),
    non2xx,
  }
}

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
        `warmup ${WARMUP_SECONDS} s, then ${seconds} s per side in ${SLICE_SECONDS} s slices taken in turn, ` +
          `${CONNECTIONS} connections, pipelining ${PIPELINING}\n`,
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
    const [baseline, candidate] = (await runScenario(scenario, seconds)) as [Run, Run]
    runs.push(baseline, candidate)
    const ratio = candidate.requestsPerSecond / baseline.requestsPerSecond
    const verdict = scenario.target === undefined ? '' : ratio >= scenario.target ? ' PASS' : ' FAIL'
    const goal = scenario.target === undefined ? '(reported, no target)' : `(target >= ${scenario.target.toFixed(2)})`
    const tainted = baseline.non2xx + candidate.non2xx > 0 ? ' (non-2xx responses: see warnings)' : ''
    verdicts.push(
      `${scenario.name}: ${candidate.label}/${baseline.label} = ${ratio.toFixed(2)} ${goal}${verdict}${tainted}`,
    )
  }

  console.log()
  console.log(
    formatTable(
      ['scenario', 'server', 'req/s', 'slices req/s', 'p99 ms', 'non-2xx'],
      runs.map((run) => [
        run.scenario,
        run.label,
        formatNumber(run.requestsPerSecond),
        `${formatNumber(run.sliceRange[0])}-${formatNumber(run.sliceRange[1])}`,
        formatNumber(run.p99Ms),
        String(run.non2xx),
      ]),
      [2, 3, 4, 5],
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
