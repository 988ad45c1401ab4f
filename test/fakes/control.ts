import { randomBytes } from 'node:crypto'
import {
  createServer,
  type IncomingHttpHeaders,
  type IncomingMessage,
  type Server,
  type ServerResponse,
} from 'node:http'
import type { AddressInfo } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'

/**
 * Shared machinery of the fake LLM providers (`openai.ts`, `anthropic.ts`): per-request behaviours
 * (latency, failures, cut and hanging streams), a record of every request, and wait helpers.
 */

export interface Teardown {
  teardown(fn: () => unknown): void
}

/** An HTTP error answered instead of the stream, in the provider's own error JSON. */
export interface FailBehaviour {
  /** 429, 500, 503, 529 (Anthropic's "overloaded"), or any other status. */
  status: number
  /** Sent as `retry-after` (seconds; fractions allowed, both SDKs parse it with parseFloat). */
  retryAfterSeconds?: number
  /** Sent as `retry-after-ms`, which both SDKs prefer over `retry-after`. */
  retryAfterMs?: number
  /** Sent as `x-should-retry: true|false`, which both SDKs obey over their status rules. */
  shouldRetry?: boolean
  /** Defaults to a message like the provider's own. */
  message?: string
}

export interface UsageOverride {
  /** OpenAI `prompt_tokens`; Anthropic `input_tokens` (the uncached part). Default: an estimate of the prompt. */
  input?: number
  /** OpenAI `completion_tokens`; Anthropic `output_tokens`. Default: the number of tokens sent. */
  output?: number
  /** Anthropic `cache_creation_input_tokens`. Default: simulated (see the Anthropic fake). */
  cacheCreation?: number
  /** Anthropic `cache_read_input_tokens`; OpenAI `prompt_tokens_details.cached_tokens`. */
  cacheRead?: number
}

/**
 * What the fake does with one request. `fake.next(b)` is layered over `fake.default` (give a field
 * as `undefined` to drop the default's value); missing fields take the built-in defaults.
 */
export interface Behaviour {
  /** How many text chunks to stream (default 5; fewer if the request's max tokens is lower). */
  tokens?: number
  /** Pause before every token but the first (default 0). */
  tokenDelayMs?: number
  /** Pause before the first token, after headers and the preamble events were sent (default tokenDelayMs). */
  firstTokenDelayMs?: number
  /** Text of token i (0-based); default `tok${i} `. */
  text?: (i: number) => string
  /** Answer this HTTP error instead of a stream. */
  failBeforeFirstToken?: FailBehaviour
  /** Stop the stream after N tokens, before the final events (N >= tokens: after all of them). */
  cutAfterTokens?: number
  /**
   * How a cut ends the connection: 'destroy' (default) kills the socket, so the chunked body is
   * incomplete; 'end' ends the HTTP response cleanly, as a proxy that drops the tail would.
   */
  cutMode?: 'destroy' | 'end'
  /** true: accept the request and never answer (no headers); 'headers': send 200 headers, then nothing. */
  hang?: boolean | 'headers'
  /**
   * After N tokens, send the provider's error event inside the 200 stream (the body of this HTTP
   * status, as the provider words it) and end the response cleanly.
   */
  errorAfterTokens?: { tokens: number; status: number }
  usage?: UsageOverride
}

export interface ResolvedBehaviour {
  tokens: number
  tokenDelayMs: number
  firstTokenDelayMs: number
  text: (i: number) => string
  failBeforeFirstToken: FailBehaviour | undefined
  cutAfterTokens: number | undefined
  cutMode: 'destroy' | 'end'
  hang: boolean | 'headers'
  errorAfterTokens: { tokens: number; status: number } | undefined
  usage: UsageOverride
}

export function resolveBehaviour(behaviour: Behaviour): ResolvedBehaviour {
  const tokenDelayMs = behaviour.tokenDelayMs ?? 0
  return {
    tokens: behaviour.tokens ?? 5,
    tokenDelayMs,
    firstTokenDelayMs: behaviour.firstTokenDelayMs ?? tokenDelayMs,
    text: behaviour.text ?? ((i) => `tok${i} `),
    failBeforeFirstToken: behaviour.failBeforeFirstToken,
    errorAfterTokens: behaviour.errorAfterTokens,
    cutAfterTokens: behaviour.cutAfterTokens,
    cutMode: behaviour.cutMode ?? 'destroy',
    hang: behaviour.hang ?? false,
    usage: behaviour.usage ?? {},
  }
}

/** A default behaviour plus a queue of one-shot behaviours, taken one per request in arrival order. */
export class BehaviourQueue {
  default: Behaviour = {}
  private readonly queue: Behaviour[] = []

  /** The behaviour of the next request only (queued: calling it twice sets the next two). */
  next(behaviour: Behaviour): this {
    this.queue.push(behaviour)
    return this
  }

  /** One-shot behaviours not yet used. */
  get pending(): number {
    return this.queue.length
  }

  clear(): void {
    this.queue.length = 0
  }

  take(): ResolvedBehaviour {
    return resolveBehaviour({ ...this.default, ...this.queue.shift() })
  }
}

export type RequestKind = 'chat' | 'embeddings' | 'models' | 'other'

export interface RecordedRequest {
  /** Position in `fake.requests`. */
  index: number
  method: string
  /** Path without the query, e.g. `/v1/chat/completions`. */
  path: string
  kind: RequestKind
  headers: IncomingHttpHeaders
  /** The key the client sent: `authorization: Bearer …` (OpenAI) or `x-api-key` (Anthropic). */
  apiKey: string | undefined
  /** The parsed JSON body (`{}` if it was empty or not JSON). */
  body: Record<string, unknown>
  /** When the request arrived (Date.now()). */
  receivedAt: number
  behaviour: ResolvedBehaviour
  /** HTTP status sent; undefined while no headers were sent (hang). */
  status: number | undefined
  /** Text tokens written to the stream. */
  tokensSent: number
  /** The whole response, final events included, was sent. */
  completed: boolean
  /** The fake cut the stream on purpose (cutAfterTokens). */
  cut: boolean
  /** When the client closed the connection before the response finished (abort, timeout, `break`). */
  closedAt?: number
  /** When the exchange ended for whatever reason (completed, cut, client gone, fake closed). */
  endedAt?: number
}

/** SSE framing as both providers send it. */
export function sse(data: unknown, event?: string): string {
  const json = typeof data === 'string' ? data : JSON.stringify(data)
  return event === undefined ? `data: ${json}\n\n` : `event: ${event}\ndata: ${json}\n\n`
}

export function randomId(prefix: string, bytes = 12): string {
  return `${prefix}${randomBytes(bytes).toString('hex')}`
}

/** A rough token count (about 4 characters a token), 0 for no text. */
export function estimateTokens(text: string): number {
  return text.length === 0 ? 0 : Math.max(1, Math.ceil(text.length / 4))
}

/** All text in a prompt value: strings, arrays of content blocks, `{text}` and `{content}` objects. */
export function textOf(value: unknown): string {
  if (typeof value === 'string') return value
  if (Array.isArray(value)) return value.map(textOf).join('\n')
  if (value && typeof value === 'object') {
    const record = value as Record<string, unknown>
    if (typeof record.text === 'string') return record.text
    if ('content' in record) return textOf(record.content)
  }
  return ''
}

/** One request/response pair, with helpers that stop quietly once the connection is gone. */
export class Exchange {
  ended = false
  private readonly controller = new AbortController()

  constructor(
    readonly req: IncomingMessage,
    readonly res: ServerResponse,
    readonly record: RecordedRequest,
    private readonly changed: () => void,
  ) {}

  get body(): Record<string, unknown> {
    return this.record.body
  }

  get behaviour(): ResolvedBehaviour {
    return this.record.behaviour
  }

  /** Aborted when the connection closes, for any reason. */
  get signal(): AbortSignal {
    return this.controller.signal
  }

  get gone(): boolean {
    return this.controller.signal.aborted
  }

  /** The socket closed: by the client if the response was not finished yet. */
  onClose(shuttingDown: boolean): void {
    if (!this.ended) {
      this.ended = true
      const now = Date.now()
      if (!shuttingDown) this.record.closedAt = now
      this.record.endedAt = now
    }
    this.controller.abort()
    this.changed()
  }

  /** Waits; false if the connection went away meanwhile. */
  async pause(ms: number): Promise<boolean> {
    if (ms > 0 && !this.gone) {
      try {
        await sleep(ms, undefined, { signal: this.signal })
      } catch {
        return false
      }
    }
    return !this.gone
  }

  /** Resolves when the connection closes (for hanging requests). */
  waitClosed(): Promise<void> {
    if (this.gone) return Promise.resolve()
    return new Promise((resolve) => this.signal.addEventListener('abort', () => resolve(), { once: true }))
  }

  json(status: number, body: unknown, headers: Record<string, string> = {}): void {
    this.record.status = status
    this.markEnded(status < 400)
    this.res.writeHead(status, { 'content-type': 'application/json', ...headers })
    this.res.end(JSON.stringify(body))
  }

  /** Sends 200 SSE headers at once, so the SDK's request resolves before any event. */
  startStream(headers: Record<string, string>): void {
    this.record.status = 200
    this.res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache',
      connection: 'keep-alive',
      ...headers,
    })
    this.res.flushHeaders()
    this.changed()
  }

  /** Writes and waits until the bytes reached the socket; false if the connection is gone. */
  write(chunk: string): Promise<boolean> {
    if (this.gone) return Promise.resolve(false)
    return new Promise((resolve) => {
      const onAbort = () => resolve(false)
      this.signal.addEventListener('abort', onAbort, { once: true })
      this.res.write(chunk, (error) => {
        this.signal.removeEventListener('abort', onAbort)
        resolve(!error && !this.gone)
      })
    })
  }

  tokenSent(): void {
    this.record.tokensSent++
    this.changed()
  }

  /** Ends the response normally (all final events were written). */
  finish(): void {
    this.markEnded(true)
    this.res.end()
  }

  /** Cuts the stream: destroys the socket, or ends the HTTP response early but cleanly. */
  cut(mode: 'destroy' | 'end'): void {
    this.record.cut = true
    this.markEnded(false)
    if (mode === 'end') this.res.end()
    else this.res.destroy()
  }

  private markEnded(completed: boolean): void {
    this.ended = true
    this.record.completed = completed
    this.record.endedAt = Date.now()
    this.changed()
  }
}

/** What a provider's stream looks like on the wire, for `streamTokens`. */
export interface StreamScript {
  headers: Record<string, string>
  /** Events sent right after the headers (role chunk, message_start…). */
  preamble: string[]
  token(i: number, text: string): string
  /** Final events, given how many tokens were sent. */
  finale(tokensSent: number): string[]
  /** The provider's error event inside a stream, for an error it would answer with this status. */
  error(status: number): string
}

/** Streams `count` tokens following the exchange's behaviour (delays, cut, hang after headers). */
export async function streamTokens(ex: Exchange, count: number, script: StreamScript): Promise<void> {
  const b = ex.behaviour
  ex.startStream(script.headers)
  if (b.hang === 'headers') return ex.waitClosed()
  for (const event of script.preamble) if (!(await ex.write(event))) return
  for (let i = 0; i < count; i++) {
    if (b.cutAfterTokens !== undefined && ex.record.tokensSent >= b.cutAfterTokens) return ex.cut(b.cutMode)
    if (b.errorAfterTokens !== undefined && ex.record.tokensSent >= b.errorAfterTokens.tokens) {
      if (await ex.write(script.error(b.errorAfterTokens.status))) ex.cut('end')
      return
    }
    if (!(await ex.pause(i === 0 ? b.firstTokenDelayMs : b.tokenDelayMs))) return
    if (!(await ex.write(script.token(i, b.text(i))))) return
    ex.tokenSent()
  }
  if (b.cutAfterTokens !== undefined) return ex.cut(b.cutMode)
  for (const event of script.finale(ex.record.tokensSent)) if (!(await ex.write(event))) return
  ex.finish()
}

/**
 * For non-streaming answers: waits as long as the stream would have taken, then false if the
 * connection is gone or the behaviour cuts it (the socket is closed without a response).
 */
export async function delayWholeAnswer(ex: Exchange, count: number): Promise<boolean> {
  const b = ex.behaviour
  if (b.hang === 'headers') {
    ex.startStream({ 'content-type': 'application/json' })
    await ex.waitClosed()
    return false
  }
  const total = count === 0 ? 0 : b.firstTokenDelayMs + (count - 1) * b.tokenDelayMs
  if (!(await ex.pause(total))) return false
  if (b.cutAfterTokens !== undefined) {
    ex.cut(b.cutMode)
    return false
  }
  return true
}

export interface WaitOptions {
  /** Only count requests of this kind (waitForRequests). */
  kind?: RequestKind
}

/** The HTTP server, request log and waiting logic shared by both fakes. */
export abstract class FakeLlmServer {
  readonly requests: RecordedRequest[] = []
  /** Behaviours of chat requests (`/v1/chat/completions`, `/v1/messages`). */
  readonly control = new BehaviourQueue()
  private readonly server: Server
  private readonly exchanges = new Set<Exchange>()
  private readonly waiters = new Set<() => void>()
  private shuttingDown = false
  private port = 0

  /** Keys the fake refuses with 401, as the provider refuses a revoked or mistyped key. */
  readonly invalidKeys = new Set<string>()

  protected abstract readonly requestIdHeader: string
  protected abstract kindOf(method: string, path: string): RequestKind
  /** The body of `GET /v1/models` (the cheap call that checks a key). */
  protected abstract modelsBody(): unknown
  protected abstract apiKeyOf(headers: IncomingHttpHeaders): string | undefined
  /** The provider's error JSON for a status. */
  protected abstract errorBody(status: number, message?: string, param?: string): unknown
  /** Answers a chat or embeddings request that neither hangs nor fails (valid JSON body). */
  protected abstract respond(ex: Exchange): Promise<void>

  constructor() {
    this.server = createServer((req, res) => {
      this.dispatch(req, res).catch((error: unknown) => {
        console.error('fake LLM server: handler failed', error)
        res.destroy()
      })
    })
  }

  /** Behaviour of every chat request without a queued one. */
  get default(): Behaviour {
    return this.control.default
  }

  set default(behaviour: Behaviour) {
    this.control.default = behaviour
  }

  /** Sets the behaviour of the next chat request only; queued, so successive calls apply in order. */
  next(behaviour: Behaviour): this {
    this.control.next(behaviour)
    return this
  }

  /** `http://127.0.0.1:PORT` */
  get origin(): string {
    return `http://127.0.0.1:${this.port}`
  }

  abstract get baseURL(): string

  /** The queue a request of this kind takes its behaviour from; undefined for unknown routes. */
  protected queueFor(kind: RequestKind): BehaviourQueue | undefined {
    return kind === 'chat' ? this.control : undefined
  }

  async listen(): Promise<this> {
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject)
      this.server.listen(0, '127.0.0.1', () => resolve())
    })
    this.port = (this.server.address() as AddressInfo).port
    return this
  }

  /** Stops serving, hanging and streaming requests included; idempotent. */
  async close(): Promise<void> {
    if (this.shuttingDown) return
    this.shuttingDown = true
    for (const ex of this.exchanges) ex.onClose(true)
    this.server.closeAllConnections()
    await new Promise<void>((resolve) => this.server.close(() => resolve()))
  }

  /** Resolves with the requests once at least `n` (of `kind`, if given) have arrived. */
  waitForRequests(n: number, ms = 2000, options: WaitOptions = {}): Promise<RecordedRequest[]> {
    const matching = () => this.requests.filter((r) => options.kind === undefined || r.kind === options.kind)
    return this.waitFor(
      () => (matching().length >= n ? matching() : undefined),
      ms,
      `${n} ${options.kind ?? ''} request(s)`,
    )
  }

  /**
   * Resolves with request `index` once the client has closed its connection before the response
   * finished; rejects at once if the response ended otherwise (completed, cut by the fake).
   */
  waitForClose(index: number, ms = 2000): Promise<RecordedRequest> {
    return this.waitFor(
      () => {
        const record = this.requests[index]
        if (record?.closedAt !== undefined) return record
        if (record?.endedAt !== undefined) {
          throw new Error(
            `request ${index} ended without the client closing it (completed: ${record.completed}, cut: ${record.cut})`,
          )
        }
        return undefined
      },
      ms,
      `the client to close request ${index}`,
    )
  }

  /** Resolves with the first non-undefined value of `probe`, re-checked on every change. */
  waitFor<T>(probe: () => T | undefined, ms: number, what: string): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const check = () => {
        try {
          const value = probe()
          if (value === undefined) return
          done()
          resolve(value)
        } catch (error) {
          done()
          reject(error)
        }
      }
      const timer = setTimeout(() => {
        done()
        const seen = this.requests.map((r) => ({
          path: r.path,
          status: r.status,
          tokensSent: r.tokensSent,
          completed: r.completed,
          cut: r.cut,
          closedAt: r.closedAt,
        }))
        reject(new Error(`timed out after ${ms}ms waiting for ${what}; requests: ${JSON.stringify(seen)}`))
      }, ms)
      const done = () => {
        clearTimeout(timer)
        this.waiters.delete(check)
      }
      this.waiters.add(check)
      check()
    })
  }

  private changed(): void {
    for (const waiter of [...this.waiters]) waiter()
  }

  private async dispatch(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const receivedAt = Date.now()
    const method = req.method ?? 'GET'
    const path = new URL(req.url ?? '/', 'http://localhost').pathname
    const kind = this.kindOf(method, path)
    const queue = this.queueFor(kind)
    const behaviour = queue ? queue.take() : resolveBehaviour({})
    // The client may go away while the body is still being read, before the exchange exists.
    const connection: { ex?: Exchange; closedEarly: boolean } = { closedEarly: false }
    res.on('close', () => {
      if (!connection.ex) connection.closedEarly = true
      else {
        this.exchanges.delete(connection.ex)
        connection.ex.onClose(this.shuttingDown)
      }
    })

    let raw = ''
    let readFailed = false
    try {
      req.setEncoding('utf8')
      for await (const chunk of req) raw += chunk as string
    } catch {
      readFailed = true
    }
    let body: Record<string, unknown> = {}
    let invalidJson = false
    if (raw.length > 0) {
      try {
        const parsed: unknown = JSON.parse(raw)
        if (parsed && typeof parsed === 'object' && !Array.isArray(parsed)) body = parsed as Record<string, unknown>
        else invalidJson = true
      } catch {
        invalidJson = true
      }
    }

    const record: RecordedRequest = {
      index: this.requests.length,
      method,
      path,
      kind,
      headers: req.headers,
      apiKey: this.apiKeyOf(req.headers),
      body,
      receivedAt,
      behaviour,
      status: undefined,
      tokensSent: 0,
      completed: false,
      cut: false,
    }
    this.requests.push(record)
    const ex = new Exchange(req, res, record, () => this.changed())
    connection.ex = ex
    if (readFailed || connection.closedEarly || this.shuttingDown) {
      ex.onClose(this.shuttingDown)
      return
    }
    this.exchanges.add(ex)
    this.changed()

    res.setHeader(this.requestIdHeader, randomId('req_'))
    if (kind === 'other') return ex.json(404, this.errorBody(404, `Unknown request URL: ${method} ${path}`))
    if (record.apiKey === undefined || this.invalidKeys.has(record.apiKey)) {
      return ex.json(401, this.errorBody(401))
    }
    if (kind === 'models') return ex.json(200, this.modelsBody())
    if (invalidJson) return ex.json(400, this.errorBody(400, 'We could not parse the JSON body of your request.'))
    if (behaviour.hang === true) return ex.waitClosed()
    const fail = behaviour.failBeforeFirstToken
    if (fail) {
      const headers: Record<string, string> = {}
      if (fail.retryAfterSeconds !== undefined) headers['retry-after'] = String(fail.retryAfterSeconds)
      if (fail.retryAfterMs !== undefined) headers['retry-after-ms'] = String(fail.retryAfterMs)
      if (fail.shouldRetry !== undefined) headers['x-should-retry'] = String(fail.shouldRetry)
      return ex.json(fail.status, this.errorBody(fail.status, fail.message), headers)
    }
    await this.respond(ex)
  }
}
