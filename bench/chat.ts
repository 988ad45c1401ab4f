import { readdirSync, readFileSync } from 'node:fs'
import { connect, type Socket } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import pg from 'pg'
import { Agent, request } from 'undici'
import { formatTable, percentile, type RequestHeaders, type RunningServer, startServer } from './lib.js'
import { type PostgresFixture, signUp, UNLIMITED } from './postgres-fixture.js'

/**
 * Streamed chat under a burst: BENCH_CHAT_STREAMS (default 2,000) streams opened all at once
 * against a fake OpenAI-compatible upstream (50 tokens, 20 ms apart; bench/servers/fake-llm.ts, on
 * the load CPU beside the client), by one client, three ways in each round:
 *
 * - direct: the client reads the fake itself (the floor every relay adds to);
 * - relay: through bench/servers/relay.ts, bare node:http + undici, no auth, no persistence;
 * - backplane: `POST /api/v1/conversations/{id}/messages` on the real app, on PostgreSQL, every event
 *   logged (a conversation per stream, created before the burst).
 *
 * Per stream: time to the first content token (TTFT) and to the end of the answer; percentiles are
 * of the streams that got there (failed ones are counted apart, and more than 1% of them fails the
 * TTFT target, whatever the percentiles say). What a server adds is its p99 TTFT minus the direct
 * p99. Memory per open stream is the growth of the server's resident set (VmRSS) from just before
 * the burst to the moment the most streams are open at once (all of them, if every first token
 * arrives before the first answer ends), divided by the streams open then.
 */
const TOKENS = 50
/** Streams per user: the app counts concurrent streams per user (CHAT_MAX_CONCURRENT_STREAMS, at most 1,000). */
const STREAMS_PER_USER = 500
/** Signups are limited to 10 per minute per address. */
const MAX_USERS = 10
/** A small burst first, so the measured one runs on warm (compiled) code, as a server in service does. */
const WARMUP_STREAMS = 100
/** After the warmup: its streams are closed and its event log written (every 200 ms). */
const SETTLE_MS = 1_000
const SAMPLE_MS = 20
const ROUNDS = 2
const ADDED_TTFT_TARGET = 1.5
const MEMORY_TARGET_KB = 64
/**
 * Both servers accept the burst's connections through an accept queue deep enough for all of them.
 * With Node's default (511) the kernel drops the SYNs of a busy server's overflow, and those
 * clients reconnect one to three seconds later: a property of the listen socket, not of the work
 * each server does per stream, and it would swamp the difference between them.
 */
const DEEP_BACKLOG = { BENCH_LISTEN_BACKLOG: '4096' }
const PROMPT = 'Explain in a few sentences why streaming answers token by token makes a chat feel responsive.'

function streamCount(): number {
  const raw = process.env.BENCH_CHAT_STREAMS
  if (raw === undefined || raw.trim() === '') return 2_000
  const count = Number(raw)
  if (!Number.isInteger(count) || count < 1 || count > STREAMS_PER_USER * MAX_USERS) {
    throw new Error(`BENCH_CHAT_STREAMS must be a whole number from 1 to ${STREAMS_PER_USER * MAX_USERS}`)
  }
  return count
}

/** How a stream's events look on the wire: a content token, the end of the answer, an error event. */
interface Protocol {
  token: Buffer
  end: Buffer
  error: Buffer | null
}

/** The fake's OpenAI chunks: the role chunk carries `"role"` first, so only content deltas match. */
const OPENAI: Protocol = {
  token: Buffer.from('"delta":{"content":"'),
  end: Buffer.from('data: [DONE]'),
  error: null,
}
/** The app's events, which the relay imitates: `{"type":"content",...}`, then `done` or `error`. */
const EVENTS: Protocol = {
  token: Buffer.from('data: {"type":"content"'),
  end: Buffer.from('data: {"type":"done"'),
  error: Buffer.from('data: {"type":"error"'),
}

interface StreamRequest {
  url: string
  headers: RequestHeaders
  body: string
}

interface StreamResult {
  status: number
  ttftMs: number
  endMs: number
  tokens: number
  ended: boolean
  errorEvent: boolean
  failure: string | null
}

interface Burst {
  results: StreamResult[]
  /** Server RSS growth per stream open at the sample with the most open streams, in KB (NaN without a pid). */
  kbPerStream: number
  /** Streams open at that sample, and streams in flight (open, or sent and not answered yet). */
  openAtSample: number
  inFlightAtSample: number
  rssBeforeKb: number
  rssDuringKb: number
  /** CPU time (user and system) the server spent from the start of the burst to its end, in ms. */
  serverCpuMs: number
  /** The same for the load side, which shares one CPU: this client and the fake upstream. */
  clientCpuMs: number
  fakeCpuMs: number
  /** And for PostgreSQL, also on the load CPU (only the app uses it). */
  databaseCpuMs: number
}

/** VmRSS of a process in KB (Linux), NaN where /proc is not there. */
function rssKb(pid: number): number {
  try {
    const match = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
    return match ? Number(match[1]) : Number.NaN
  } catch {
    return Number.NaN
  }
}

/** CPU time (user and system) a process has used so far, in ms (Linux), NaN where /proc is not there. */
function cpuMs(pid: number): number {
  try {
    // The fields after the command name, which is in parentheses and may hold spaces.
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.split(' ') ?? []
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / CLOCK_TICKS
  } catch {
    return Number.NaN
  }
}
/** USER_HZ, 100 on every Linux this runs on. */
const CLOCK_TICKS = 100

/**
 * CPU time every PostgreSQL process on this machine has used so far, in ms (Linux; NaN elsewhere).
 * The database shares the load CPU with the client and the fake, so what the app asks of it slows
 * the whole load side: worth reporting beside the server's own CPU.
 */
function postgresCpuMs(): number {
  try {
    let total = 0
    for (const entry of readdirSync('/proc')) {
      if (!/^\d+$/.test(entry)) continue
      try {
        const stat = readFileSync(`/proc/${entry}/stat`, 'utf8')
        if (stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')')) !== 'postgres') continue
        total += cpuMs(Number(entry))
      } catch {
        // Gone meanwhile.
      }
    }
    return total
  } catch {
    return Number.NaN
  }
}

/** Occurrences of `marker` in `window` that end past its first `skip` bytes (those were searched already). */
function occurrences(window: Buffer, marker: Buffer, skip: number): number {
  let count = 0
  let at = window.indexOf(marker, Math.max(0, skip - marker.length + 1))
  while (at !== -1) {
    count++
    at = window.indexOf(marker, at + marker.length)
  }
  return count
}

const HEAD_END = Buffer.from('\r\n\r\n')
/** The last chunk of a chunked body (SSE data never holds a CR). */
const BODY_END = Buffer.from('\r\n0\r\n\r\n')
const BURST_TIMEOUT_MS = 120_000
const READ_EVERY_MS = 100
const READ_BUFFER = Buffer.alloc(64 * 1024)

/** A request as the bytes sent on the wire, with where to send them. */
interface WireRequest {
  host: string
  port: number
  bytes: Buffer
}

function toWire(spec: StreamRequest): WireRequest {
  const url = new URL(spec.url)
  const body = Buffer.from(spec.body)
  const headers = Object.entries({ ...spec.headers, host: url.host, 'content-length': String(body.length) })
    .map(([name, value]) => `${name}: ${value}\r\n`)
    .join('')
  return {
    host: url.hostname,
    port: Number(url.port),
    bytes: Buffer.concat([Buffer.from(`POST ${url.pathname} HTTP/1.1\r\n${headers}\r\n`), body]),
  }
}

/**
 * Opens every stream at once, each on its own new connection, and reads each to its end. The
 * client is HTTP/1.1 over plain sockets, searching the raw bytes only for its markers (with the
 * tail of the previous read, for a marker cut in two): beside the fake on the load CPU, it must
 * cost as little as possible per token, and a general HTTP client costs several times as much.
 */
async function burst(
  requests: StreamRequest[],
  protocol: Protocol,
  pids: { server: number | null; fake: number },
): Promise<Burst> {
  const pid = pids.server
  const markers = [protocol.token, protocol.end, protocol.error ?? protocol.end, BODY_END]
  const keep = Math.max(...markers.map((marker) => marker.length)) - 1
  const total = requests.length
  const wire = requests.map(toWire)
  let open = 0
  let firstTokens = 0
  const before = pid === null ? Number.NaN : rssKb(pid)
  const cpuBefore = pid === null ? Number.NaN : cpuMs(pid)
  const fakeBefore = cpuMs(pids.fake)
  const databaseBefore = postgresCpuMs()
  const clientBefore = process.cpuUsage()
  let inFlight = total
  let peak = { open: 0, inFlight: 0, firstTokens: 0, rss: before }
  const sample = () => {
    if (pid === null) return
    if (open > peak.open || (open === peak.open && firstTokens > peak.firstTokens)) {
      peak = { open, inFlight, firstTokens, rss: rssKb(pid) }
    }
  }
  const sampler = setInterval(sample, SAMPLE_MS)
  const stops = new Set<(failure: string) => void>()
  // Streams past their first token are read every READ_EVERY_MS rather than on every token: the
  // tokens wait in the kernel's receive buffer (far below its size, so no server ever waits for
  // this client) and come in five at a time, which saves the load CPU four reads in five. TTFT is
  // exact; the end of an answer is seen up to READ_EVERY_MS late.
  const paused = new Set<Socket>()
  const pacer = setInterval(() => {
    for (const socket of paused) socket.resume()
    paused.clear()
  }, READ_EVERY_MS)
  const deadline = setTimeout(() => {
    for (const stop of stops) stop(`no end within ${BURST_TIMEOUT_MS / 1000} s`)
  }, BURST_TIMEOUT_MS)

  const one = (spec: WireRequest) =>
    new Promise<StreamResult>((resolve) => {
      const result: StreamResult = {
        status: 0,
        ttftMs: Number.NaN,
        endMs: Number.NaN,
        tokens: 0,
        ended: false,
        errorEvent: false,
        failure: null,
      }
      const started = performance.now()
      /** The response head so far; null once it is complete. */
      let head: Buffer | null = Buffer.alloc(0)
      let tail: Buffer = Buffer.alloc(0)
      let opened = false
      /** The body's Content-Length; null for a chunked body, which ends with BODY_END. */
      let length: number | null = null
      let received = 0
      let refused: { body: Buffer; length: number } | null = null

      /** Reads part of the body; false once the stream is to be read less often. */
      const readBody = (chunk: Buffer): boolean => {
        const window = tail.length === 0 ? chunk : Buffer.concat([tail, chunk])
        const tokens = occurrences(window, protocol.token, tail.length)
        if (tokens > 0) {
          if (result.tokens === 0) {
            result.ttftMs = performance.now() - started
            // The moment every stream has its first token is the one the memory figure is about.
            if (++firstTokens === total) sample()
          }
          result.tokens += tokens
        }
        if (!result.ended && occurrences(window, protocol.end, tail.length) > 0) {
          result.ended = true
          result.endMs = performance.now() - started
        }
        if (protocol.error && occurrences(window, protocol.error, tail.length) > 0) result.errorEvent = true
        received += chunk.length
        const complete = length === null ? occurrences(window, BODY_END, tail.length) > 0 : received >= length
        if (complete) {
          stop(result.ended ? null : 'no end of the answer')
          return true
        }
        // A copy: `chunk` lives in the read buffer every socket shares.
        tail = Buffer.from(window.subarray(Math.max(0, window.length - keep)))
        if (result.tokens === 0) return true
        paused.add(socket)
        return false
      }

      /** Reads the response head, then the body. */
      const read = (chunk: Buffer): boolean => {
        if (refused) {
          refused.body = Buffer.concat([refused.body, chunk])
          if (refused.body.length >= refused.length) stop(`${result.status} ${refused.body.toString('utf8', 0, 300)}`)
          return true
        }
        if (head === null) return readBody(chunk)
        const bytes = Buffer.concat([head, chunk])
        const end = bytes.indexOf(HEAD_END)
        if (end === -1) {
          head = bytes
          return true
        }
        result.status = Number(bytes.toString('latin1', 9, 12))
        const declared = /\r\ncontent-length: *(\d+)/i.exec(bytes.toString('latin1', 0, end))?.[1]
        length = declared === undefined ? null : Number(declared)
        const rest = bytes.subarray(end + HEAD_END.length)
        head = null
        if (result.status !== 200) {
          refused = { body: rest, length: length ?? 0 }
          if (rest.length >= refused.length) stop(`${result.status} ${rest.toString('utf8', 0, 300)}`)
          return true
        }
        opened = true
        open++
        return rest.length === 0 || readBody(rest)
      }

      // Every socket reads into one buffer (each read is handled before the next), so reading
      // allocates nothing; returning false pauses the socket.
      const socket = connect({
        port: spec.port,
        host: spec.host,
        onread: { buffer: READ_BUFFER, callback: (bytes) => read(READ_BUFFER.subarray(0, bytes)) },
      })
      const stop = (failure: string | null) => {
        if (!stops.delete(stop)) return
        if (failure !== null && result.failure === null) result.failure = failure
        if (opened) open--
        inFlight--
        paused.delete(socket)
        socket.destroy()
        resolve(result)
      }
      stops.add(stop)
      socket.setNoDelay(true)
      socket.write(spec.bytes)
      socket.on('error', (error) => stop(error.message))
      socket.on('close', () => stop(result.ended ? null : 'connection closed before the end of the answer'))
    })

  try {
    const results = await Promise.all(wire.map(one))
    const rss = peak.rss
    const client = process.cpuUsage(clientBefore)
    return {
      serverCpuMs: pid === null ? Number.NaN : cpuMs(pid) - cpuBefore,
      clientCpuMs: (client.user + client.system) / 1000,
      fakeCpuMs: cpuMs(pids.fake) - fakeBefore,
      databaseCpuMs: postgresCpuMs() - databaseBefore,
      results,
      kbPerStream: peak.open > 0 ? (rss - before) / peak.open : Number.NaN,
      openAtSample: peak.open,
      inFlightAtSample: peak.inFlight,
      rssBeforeKb: before,
      rssDuringKb: rss,
    }
  } finally {
    clearInterval(sampler)
    clearInterval(pacer)
    clearTimeout(deadline)
  }
}

/** Streams that did not deliver every token and the end of the answer. */
const failed = (results: StreamResult[]) =>
  results.filter((result) => result.failure !== null || !result.ended || result.errorEvent || result.tokens < TOKENS)

interface Run {
  side: 'direct' | 'relay' | 'backplane'
  round: number
  p50Ms: number
  p99Ms: number
  p99EndMs: number
  kbPerStream: number
  openAtSample: number
  failed: number
  serverCpuMs: number
}

function summarise(side: Run['side'], round: number, measured: Burst): Run {
  const results = measured.results
  const run: Run = {
    side,
    round,
    p50Ms: percentile(
      results.map((result) => result.ttftMs),
      50,
    ),
    p99Ms: percentile(
      results.map((result) => result.ttftMs),
      99,
    ),
    p99EndMs: percentile(
      results.map((result) => result.endMs),
      99,
    ),
    kbPerStream: measured.kbPerStream,
    openAtSample: measured.openAtSample,
    failed: failed(results).length,
    serverCpuMs: measured.serverCpuMs,
  }
  const server = Number.isFinite(run.kbPerStream)
    ? `; server ${run.kbPerStream.toFixed(1)} KB per open stream (RSS ${mb(measured.rssBeforeKb)} -> ` +
      `${mb(measured.rssDuringKb)} MB at ${run.openAtSample} open, ${measured.inFlightAtSample} in flight), ` +
      `CPU ${ms(run.serverCpuMs)} ms`
    : ''
  console.log(
    `TTFT p50 ${ms(run.p50Ms)} ms, p99 ${ms(run.p99Ms)} ms; end p99 ${ms(run.p99EndMs)} ms${server}; ` +
      `load CPU: client ${ms(measured.clientCpuMs)} ms, fake ${ms(measured.fakeCpuMs)} ms, ` +
      `PostgreSQL ${ms(measured.databaseCpuMs)} ms` +
      (run.failed > 0 ? `; ${run.failed} failed` : ''),
  )
  if (run.failed > 0) {
    const reasons = new Map<string, number>()
    for (const result of failed(results)) {
      // Grouped by what went wrong: the request id differs in every problem answer.
      const reason = (
        result.failure ?? `${result.tokens} tokens, done ${result.ended}, error event ${result.errorEvent}`
      )
        .replace(/,?"requestId":"[^"]*"/, '')
        .slice(0, 200)
      reasons.set(reason, (reasons.get(reason) ?? 0) + 1)
    }
    const listed = [...reasons].map(([reason, count]) => `${count} x ${reason}`).join('; ')
    console.warn(`WARNING: ${run.failed} ${side} streams failed: ${listed}`)
  }
  return run
}

const ms = (value: number) => (Number.isFinite(value) ? Math.round(value).toLocaleString('en-US') : 'n/a')
const mb = (kb: number) => (kb / 1024).toFixed(0)

/** What the app sends the fake for a new conversation's first message, so the direct side reads the same. */
const directBody = JSON.stringify({
  model: 'gpt-4o-mini',
  messages: [
    { role: 'system', content: 'You are a helpful assistant. Answer accurately and concisely.' },
    { role: 'user', content: PROMPT },
  ],
  max_tokens: 1024,
  stream: true,
  stream_options: { include_usage: true },
})
const messageBody = JSON.stringify({ content: PROMPT })
const JSON_HEADERS = { 'content-type': 'application/json' }

const directSpec = (fake: RunningServer): StreamRequest => ({
  url: `${fake.baseUrl}/v1/chat/completions`,
  headers: JSON_HEADERS,
  body: directBody,
})

async function measureDirect(fake: RunningServer, streams: number, round: number): Promise<Run> {
  process.stdout.write(
    `chat-streams: round ${round} direct to the fake, ${streams.toLocaleString('en-US')} streams ... `,
  )
  return summarise(
    'direct',
    round,
    await burst(Array(streams).fill(directSpec(fake)), OPENAI, { server: null, fake: fake.pid }),
  )
}

async function measureRelay(fake: RunningServer, streams: number, round: number): Promise<Run> {
  const relay = await startServer('relay', { FAKE_LLM_URL: fake.baseUrl, ...DEEP_BACKLOG })
  try {
    const spec = { url: `${relay.baseUrl}/chat`, headers: JSON_HEADERS, body: messageBody }
    await burst(Array(WARMUP_STREAMS).fill(spec), EVENTS, { server: null, fake: fake.pid })
    await sleep(SETTLE_MS)
    process.stdout.write(`chat-streams: round ${round} relay, ${streams.toLocaleString('en-US')} streams ... `)
    return summarise(
      'relay',
      round,
      await burst(Array(streams).fill(spec), EVENTS, { server: relay.pid, fake: fake.pid }),
    )
  } finally {
    await relay.stop()
  }
}

/** Creates `count` conversations, 16 at a time, spread over the users; returns their ids by user. */
async function createAll(baseUrl: string, users: RequestHeaders[], count: number): Promise<string[][]> {
  const agent = new Agent({ connections: 16 })
  const ids: string[][] = users.map(() => [])
  let next = 0
  try {
    await Promise.all(
      Array.from({ length: 16 }, async () => {
        while (next < count) {
          const user = next++ % users.length
          const response = await request(`${baseUrl}/api/v1/conversations`, {
            method: 'POST',
            headers: { ...users[user], ...JSON_HEADERS },
            body: '{}',
            dispatcher: agent,
          })
          const body = (await response.body.json()) as { id?: string }
          if (response.statusCode !== 201 || !body.id) {
            throw new Error(`creating a conversation answered ${response.statusCode}: ${JSON.stringify(body)}`)
          }
          ids[user]?.push(body.id)
        }
      }),
    )
  } finally {
    await agent.close()
  }
  return ids
}

/** One message per conversation, the users' streams interleaved. */
function messages(baseUrl: string, users: RequestHeaders[], ids: string[][]): StreamRequest[] {
  const requests: StreamRequest[] = []
  const longest = Math.max(...ids.map((list) => list.length))
  for (let i = 0; i < longest; i++) {
    for (const [user, list] of ids.entries()) {
      const id = list[i]
      if (id === undefined) continue
      requests.push({
        url: `${baseUrl}/api/v1/conversations/${id}/messages`,
        headers: { ...users[user], ...JSON_HEADERS },
        body: messageBody,
      })
    }
  }
  return requests
}

async function measureApp(fixture: PostgresFixture, fake: RunningServer, streams: number, round: number) {
  const app = await startServer('app', {
    BENCH_DATABASE_URL: fixture.databaseUrl,
    ...UNLIMITED,
    ...DEEP_BACKLOG,
    OPENAI_API_KEY: 'bench',
    OPENAI_BASE_URL: `${fake.baseUrl}/v1`,
    CHAT_FALLBACK_MODELS: '',
    CHAT_RATE_LIMIT_PER_MINUTE: '100000',
    CHAT_MAX_CONCURRENT_STREAMS: '1000',
    CHAT_DAILY_TOKEN_BUDGET: '0',
    // The whole burst reaches the local fake at once, as it reaches the relay: the bucket is sized
    // to let it through (and still drawn from), since a real provider's limits are not measured here.
    INTEGRATION_RATE_LIMITS: 'openai=100000:100000',
  })
  try {
    const users: RequestHeaders[] = []
    for (let i = 0; i < Math.ceil(streams / STREAMS_PER_USER); i++) users.push(await signUp(app.baseUrl))
    const warmup = messages(app.baseUrl, users, await createAll(app.baseUrl, users, WARMUP_STREAMS))
    const measured = messages(app.baseUrl, users, await createAll(app.baseUrl, users, streams))
    await burst(warmup, EVENTS, { server: null, fake: fake.pid })
    // Statistics as autovacuum keeps them in a database in service: the fixture analysed the chat
    // tables empty, and a plan made for an empty table scans the whole of it once it is not.
    await analyze(fixture)
    await sleep(SETTLE_MS)
    process.stdout.write(
      `chat-streams: round ${round} backplane (conversations, ${users.length} users, event log on PostgreSQL), ` +
        `${streams.toLocaleString('en-US')} streams ... `,
    )
    const run = summarise('backplane', round, await burst(measured, EVENTS, { server: app.pid, fake: fake.pid }))
    await checkLog(fixture, measured, streams)
    return run
  } finally {
    await app.stop()
  }
}

async function analyze(fixture: PostgresFixture) {
  const db = new pg.Client({ connectionString: fixture.databaseUrl })
  await db.connect()
  try {
    await db.query('analyze conversations, chat_messages, chat_message_events, chat_usage')
  } finally {
    await db.end()
  }
}

/** The answers are really stored: every message complete, its tokens and `done` in the event log. */
async function checkLog(fixture: PostgresFixture, requests: StreamRequest[], streams: number) {
  const ids = requests.map((spec) => /conversations\/([^/]+)\/messages$/.exec(spec.url)?.[1] ?? '')
  const db = new pg.Client({ connectionString: fixture.databaseUrl })
  await db.connect()
  try {
    const { rows } = await db.query<{ complete: string; events: string }>(
      `select count(*) filter (where m.status = 'complete') as complete,
              (select sum(e.last_seq - e.seq + 1) from chat_message_events e
                 join chat_messages a on a.id = e.message_id
                where a.conversation_id = any($1)) as events
         from chat_messages m
        where m.conversation_id = any($1) and m.role = 'assistant'`,
      [ids],
    )
    const complete = Number(rows[0]?.complete)
    const events = Number(rows[0]?.events)
    if (complete !== streams || events !== streams * (TOKENS + 1)) {
      console.warn(
        `WARNING: the log holds ${complete} complete answers of ${streams} and ${events} events ` +
          `of ${streams * (TOKENS + 1)}`,
      )
    }
  } finally {
    await db.end()
  }
}

const lowest = (runs: Run[], pick: (run: Run) => number) =>
  Math.min(...runs.map(pick).filter((value) => Number.isFinite(value)))

/** Runs the rounds; returns the summary lines. */
export async function chatStreamBenchmarks(fixture: PostgresFixture): Promise<string[]> {
  const streams = streamCount()
  const fake = await startServer('fake-llm', {}, { cpu: 'load' })
  const runs: Run[] = []
  try {
    // The fake's own code warm before the first measurement, like the servers'.
    await burst(Array(WARMUP_STREAMS).fill(directSpec(fake)), OPENAI, { server: null, fake: fake.pid })
    console.log(
      `chat-streams: ${streams.toLocaleString('en-US')} streams at once, ${TOKENS} tokens 20 ms apart from a fake ` +
        `upstream on the load CPU; warmup ${WARMUP_STREAMS} streams per server; ${ROUNDS} rounds, best of each side counts`,
    )
    for (let round = 1; round <= ROUNDS; round++) {
      runs.push(await measureDirect(fake, streams, round))
      runs.push(await measureRelay(fake, streams, round))
      runs.push(await measureApp(fixture, fake, streams, round))
    }
  } finally {
    await fake.stop()
  }

  console.log()
  console.log(
    formatTable(
      [
        'side',
        'round',
        'TTFT p50 ms',
        'TTFT p99 ms',
        'end p99 ms',
        'KB/open stream',
        'open',
        'server CPU ms',
        'failed',
      ],
      runs.map((run) => [
        run.side,
        String(run.round),
        ms(run.p50Ms),
        ms(run.p99Ms),
        ms(run.p99EndMs),
        Number.isFinite(run.kbPerStream) ? run.kbPerStream.toFixed(1) : '-',
        run.side === 'direct' ? '-' : String(run.openAtSample),
        run.side === 'direct' ? '-' : ms(run.serverCpuMs),
        String(run.failed),
      ]),
      [1, 2, 3, 4, 5, 6, 7, 8],
    ),
  )

  const of = (side: Run['side']) => runs.filter((run) => run.side === side)
  const direct = lowest(of('direct'), (run) => run.p99Ms)
  const relayAdded = lowest(of('relay'), (run) => run.p99Ms) - direct
  const appAdded = lowest(of('backplane'), (run) => run.p99Ms) - direct
  const ratio = appAdded / relayAdded
  // Failed streams never had a first token: past 1% of them, the app's real p99 is unbounded.
  const appFailed = Math.max(...of('backplane').map((run) => run.failed))
  const ttftPass = relayAdded > 0 && ratio <= ADDED_TTFT_TARGET && appFailed <= streams / 100
  const relayKb = lowest(of('relay'), (run) => run.kbPerStream)
  const appKb = lowest(of('backplane'), (run) => run.kbPerStream)
  const memoryPass = appKb <= MEMORY_TARGET_KB
  const tainted = runs.some((run) => run.failed > 0) ? ' (failed streams: see warnings)' : ''
  return [
    `chat-streams: added p99 TTFT backplane ${ms(appAdded)} ms vs relay ${ms(relayAdded)} ms = ${ratio.toFixed(2)} ` +
      `(direct p99 ${ms(direct)} ms; target <= ${ADDED_TTFT_TARGET.toFixed(2)}) ${ttftPass ? 'PASS' : 'FAIL'}${tainted}`,
    `chat-streams: memory per open stream backplane ${appKb.toFixed(1)} KB, relay ${relayKb.toFixed(1)} KB ` +
      `(target <= ${MEMORY_TARGET_KB} KB) ${memoryPass ? 'PASS' : 'FAIL'}`,
    `chat-streams: server CPU per burst backplane ${ms(lowest(of('backplane'), (run) => run.serverCpuMs))} ms, ` +
      `relay ${ms(lowest(of('relay'), (run) => run.serverCpuMs))} ms (reported, no target)`,
    `chat-streams: backplane streams without done: ${appFailed} of ${streams.toLocaleString('en-US')} (worst round)`,
  ]
}
