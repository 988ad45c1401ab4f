import { type ChildProcess, spawn, spawnSync } from 'node:child_process'
import { createRequire } from 'node:module'
import { availableParallelism, cpus } from 'node:os'
import { createInterface } from 'node:readline'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath, pathToFileURL } from 'node:url'
import autocannon from 'autocannon'

/** Servers the benchmark can start, by name; each prints `READY <port>` once listening. */
export const SERVERS = {
  bare: fileURLToPath(new URL('./servers/bare.ts', import.meta.url)),
  app: fileURLToPath(new URL('./servers/app.ts', import.meta.url)),
  'bare-pg': fileURLToPath(new URL('./servers/bare-pg.ts', import.meta.url)),
  relay: fileURLToPath(new URL('./servers/relay.ts', import.meta.url)),
  'fake-llm': fileURLToPath(new URL('./servers/fake-llm.ts', import.meta.url)),
} as const
export type ServerName = keyof typeof SERVERS

export type RequestHeaders = Record<string, string>

/** One side of a comparison: which server to start and what to request from it. */
export interface Endpoint {
  server: ServerName
  path: string
  /** Name in the output (default: the server name). */
  label?: string
  headers?: RequestHeaders
  /** Extra environment for the server process, e.g. a higher RATE_LIMIT_MAX. */
  env?: Record<string, string>
  /** Runs against each freshly started server before load; the headers it returns are sent with every request. */
  prepare?: (baseUrl: string) => Promise<RequestHeaders>
  /** A POST whose body and headers are made afresh for every request (default: GET). */
  post?: () => { body: string; headers: RequestHeaders }
}

/** A ratio to report: candidate req/s divided by baseline req/s, expected to reach `target` when one is set. */
export interface Scenario {
  name: string
  baseline: Endpoint
  candidate: Endpoint
  target?: number
}

const SERVER_CPU = 0
const LOAD_CPU = 1
const READY_TIMEOUT_MS = 60_000
const STOP_TIMEOUT_MS = 15_000

let tasksetChecked: boolean | undefined

/**
 * Whether processes can be pinned: needs taskset and a second CPU, so the server and the load
 * generator never compete for one core. Warns once when pinning is not possible.
 */
function canPin(): boolean {
  if (tasksetChecked !== undefined) return tasksetChecked
  const probe = spawnSync('taskset', ['--version'], { stdio: 'ignore' })
  if (probe.error) {
    console.warn('WARNING: taskset not found; server and load generator are not pinned to separate CPUs')
    tasksetChecked = false
  } else if (availableParallelism() < 2) {
    console.warn('WARNING: fewer than 2 CPUs; server and load generator share one and figures will be noisy')
    tasksetChecked = false
  } else {
    tasksetChecked = true
  }
  return tasksetChecked
}

/**
 * Pins this process (the load generator), all its threads included, to the load CPU. Pinning in
 * place needs no re-exec; threads started later inherit the affinity of their creator.
 */
export function pinLoadGenerator(): void {
  if (!canPin()) return
  const result = spawnSync('taskset', ['--all-tasks', '--cpu-list', '--pid', String(LOAD_CPU), String(process.pid)], {
    stdio: 'ignore',
  })
  if (result.status !== 0) console.warn(`WARNING: could not pin the load generator to CPU ${LOAD_CPU}`)
}

/**
 * Warns when other processes keep the CPUs busy (a test run, a build): they skew the two sides
 * unevenly. Samples real CPU time for a second rather than trusting the lagging load average.
 */
export async function warnIfBusy(): Promise<void> {
  const sample = () => {
    let busy = 0
    let total = 0
    for (const { times } of cpus()) {
      const all = times.user + times.nice + times.sys + times.idle + times.irq
      busy += all - times.idle
      total += all
    }
    return { busy, total }
  }
  const before = sample()
  await sleep(1000)
  const after = sample()
  const busy = (after.busy - before.busy) / Math.max(1, after.total - before.total)
  if (busy > 0.1) {
    console.warn(`WARNING: CPUs ${Math.round(busy * 100)}% busy before the benchmark; figures are unreliable`)
  }
}

/** The tsx ESM loader from this project's node_modules, so servers run TypeScript without a build. */
function tsxLoader(): string {
  return pathToFileURL(createRequire(import.meta.url).resolve('tsx')).href
}

export interface RunningServer {
  baseUrl: string
  /** The server's own process (taskset execs node in place), e.g. to read its memory from /proc. */
  pid: number
  /** SIGSTOP: a paused server takes no CPU (timers, job polling) while the other side is measured. */
  pause(): void
  resume(): void
  stop(): Promise<void>
}

/**
 * Starts a server script on a free port and waits for its READY line. It is pinned to the server
 * CPU, the one under measurement, unless `cpu` is 'load': stand-ins for the outside world (a fake
 * upstream) run beside the load generator instead.
 */
export async function startServer(
  name: ServerName,
  env: Record<string, string> = {},
  options: { cpu?: 'server' | 'load' } = {},
): Promise<RunningServer> {
  // BENCH_CPU_PROFILE=<dir>: each server writes a V8 CPU profile there when it stops (Chrome DevTools opens it).
  const profile = process.env.BENCH_CPU_PROFILE ? ['--cpu-prof', `--cpu-prof-dir=${process.env.BENCH_CPU_PROFILE}`] : []
  const node = [process.execPath, ...profile, '--import', tsxLoader(), SERVERS[name]]
  const cpu = options.cpu === 'load' ? LOAD_CPU : SERVER_CPU
  const [command, ...args] = canPin() ? ['taskset', '--cpu-list', String(cpu), ...node] : node
  // stderr is inherited so a crash or warning is visible as it happens.
  const child = spawn(command as string, args, {
    env: { ...process.env, ...env, PORT: '0' },
    stdio: ['ignore', 'pipe', 'inherit'],
  })
  const port = await waitForReady(name, child)
  const signal = (name: NodeJS.Signals) => {
    if (child.exitCode === null && child.signalCode === null) child.kill(name)
  }
  return {
    baseUrl: `http://127.0.0.1:${port}`,
    pid: child.pid ?? 0,
    pause: () => signal('SIGSTOP'),
    resume: () => signal('SIGCONT'),
    stop: () => {
      // A stopped process keeps SIGTERM pending until it runs again.
      signal('SIGCONT')
      return stopServer(child)
    },
  }
}

function waitForReady(name: string, child: ChildProcess): Promise<number> {
  return new Promise((resolve, reject) => {
    const stdout = child.stdout
    if (!stdout) return reject(new Error(`${name}: no stdout`))
    const fail = (reason: string) => {
      clearTimeout(timer)
      child.kill('SIGKILL')
      reject(new Error(`${name} server ${reason}`))
    }
    const timer = setTimeout(() => fail(`did not print READY within ${READY_TIMEOUT_MS / 1000} s`), READY_TIMEOUT_MS)
    const onExit = (code: number | null, signal: string | null) => fail(`exited before READY (${signal ?? code})`)
    child.once('error', (error) => fail(`could not start: ${error.message}`))
    child.once('exit', onExit)
    // Lines are read for as long as the child lives: a full, undrained pipe would stall the server.
    createInterface({ input: stdout }).on('line', (line) => {
      const match = /^READY (\d+)$/.exec(line)
      if (!match) return
      clearTimeout(timer)
      child.off('exit', onExit)
      resolve(Number(match[1]))
    })
  })
}

function stopServer(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve()
  return new Promise((resolve) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), STOP_TIMEOUT_MS)
    child.once('exit', () => {
      clearTimeout(timer)
      resolve()
    })
    // taskset execs node in place, so the signal reaches the server itself.
    child.kill('SIGTERM')
  })
}

export interface LoadOptions {
  headers?: RequestHeaders
  post?: Endpoint['post']
  seconds: number
  connections: number
  pipelining: number
}

export interface Measurement {
  requests: number
  /** Seconds the load actually ran. */
  seconds: number
  p99Ms: number
  non2xx: number
  /** Count per non-2xx status code, e.g. { 429: 1200 }. */
  non2xxByStatus: Record<string, number>
  errors: number
  timeouts: number
}

/** Loads `url` for `options.seconds` and returns what was answered. */
export async function load(url: string, options: LoadOptions): Promise<Measurement> {
  const post = options.post
  const result = await autocannon({
    url,
    headers: options.headers ?? {},
    connections: options.connections,
    pipelining: options.pipelining,
    duration: options.seconds,
    ...(post
      ? {
          requests: [
            {
              method: 'POST' as const,
              setupRequest: (request: autocannon.Request) => {
                const next = post()
                return { ...request, body: next.body, headers: { ...request.headers, ...next.headers } }
              },
            },
          ],
        }
      : {}),
  })
  const non2xxByStatus: Record<string, number> = {}
  for (const [status, { count }] of Object.entries(result.statusCodeStats ?? {})) {
    if (!status.startsWith('2') && count) non2xxByStatus[status] = count
  }
  return {
    requests: result.requests.total,
    seconds: result.duration,
    p99Ms: result.latency.p99,
    non2xx: result.non2xx,
    non2xxByStatus,
    errors: result.errors,
    timeouts: result.timeouts,
  }
}

/** The value below which `p` percent of the finite values fall (nearest rank); NaN when there are none. */
export function percentile(values: number[], p: number): number {
  const sorted = values.filter((value) => Number.isFinite(value)).sort((a, b) => a - b)
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? Number.NaN
}

/** Renders rows as a plain text table; the columns listed in `rightAligned` (numbers) align right. */
export function formatTable(header: string[], rows: string[][], rightAligned: number[] = []): string {
  const widths = header.map((title, column) => Math.max(title.length, ...rows.map((row) => (row[column] ?? '').length)))
  const line = (cells: string[]) =>
    cells
      .map((cell, column) => {
        const width = widths[column] ?? 0
        return rightAligned.includes(column) ? cell.padStart(width) : cell.padEnd(width)
      })
      .join('  ')
      .trimEnd()
  return [line(header), line(widths.map((width) => '-'.repeat(width))), ...rows.map(line)].join('\n')
}
