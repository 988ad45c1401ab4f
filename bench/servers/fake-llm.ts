import { createServer, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'

/**
 * A fake OpenAI-compatible upstream for the streaming benchmark: `POST /v1/chat/completions` with
 * `stream: true` answers `data: <chat.completion.chunk>` lines as the OpenAI API does (a role
 * chunk at once, TOKENS content chunks TOKEN_INTERVAL_MS apart, a finish chunk, a usage chunk,
 * `data: [DONE]`).
 *
 * Built to hold thousands of streams on a fraction of the load generator's core: one shared timer
 * ticks every TICK_MS and writes the next token to the streams in that tick's slot, so each stream
 * gets a token every TOKEN_INTERVAL_MS (the first 15-20 ms after its request) without a timer of
 * its own; every chunk is serialised once per model and written as the same buffer to every
 * stream; and the answer's length is known up front, so it goes out with a Content-Length and
 * each token is one plain socket write, with no chunk framing.
 */
const TOKENS = 50
const TOKEN_INTERVAL_MS = 20
const SLOTS = 4
const TICK_MS = TOKEN_INTERVAL_MS / SLOTS

const CREATED = Math.floor(Date.now() / 1000)

/** The text of token `i`: a word with its leading space, as tokenizers cut English. */
const tokenText = (i: number) => ` word${i}`

interface Script {
  preamble: Buffer
  tokens: Buffer[]
  /** Bytes of the preamble and all tokens. */
  length: number
  /** The finish chunk, the usage chunk (prompt tokens counted per request) and [DONE]. */
  finale: (promptTokens: number) => Buffer
}

const scripts = new Map<string, Script>()

function scriptFor(model: string): Script {
  const known = scripts.get(model)
  if (known) return known
  const common = `"id":"chatcmpl-bench","object":"chat.completion.chunk","created":${CREATED},"model":${JSON.stringify(model)}`
  const chunk = (delta: object, finish: string | null) =>
    `data: {${common},"choices":[{"index":0,"delta":${JSON.stringify(delta)},"logprobs":null,` +
    `"finish_reason":${JSON.stringify(finish)}}],"usage":null}\n\n`
  const preamble = Buffer.from(chunk({ role: 'assistant', content: '', refusal: null }, null))
  const tokens = Array.from({ length: TOKENS }, (_, i) => Buffer.from(chunk({ content: tokenText(i) }, null)))
  const script: Script = {
    preamble,
    tokens,
    length: tokens.reduce((sum, token) => sum + token.length, preamble.length),
    finale: (promptTokens) =>
      Buffer.from(
        chunk({}, 'stop') +
          `data: {${common},"choices":[],"usage":{"prompt_tokens":${promptTokens},"completion_tokens":${TOKENS},` +
          `"total_tokens":${promptTokens + TOKENS}}}\n\n` +
          'data: [DONE]\n\n',
      ),
  }
  scripts.set(model, script)
  return script
}

interface Stream {
  response: ServerResponse
  script: Script
  finale: Buffer
  sent: number
}

/** Streams by slot: slot `tick % SLOTS` is written on each tick. */
const wheel: Set<Stream>[] = Array.from({ length: SLOTS }, () => new Set())
let open = 0
let tick = 0
let timer: NodeJS.Timeout | undefined

function onTick() {
  tick++
  const slot = wheel[tick % SLOTS] as Set<Stream>
  for (const stream of slot) {
    const token = stream.script.tokens[stream.sent++] as Buffer
    if (stream.sent < TOKENS) {
      stream.response.write(token)
      continue
    }
    stream.response.write(token)
    stream.response.end(stream.finale)
    remove(stream, slot)
  }
}

function remove(stream: Stream, slot: Set<Stream>) {
  if (!slot.delete(stream)) return
  if (--open === 0) {
    clearInterval(timer)
    timer = undefined
  }
}

function begin(response: ServerResponse, model: string, promptTokens: number) {
  const script = scriptFor(model)
  const finale = script.finale(promptTokens)
  response.writeHead(200, {
    'content-type': 'text/event-stream; charset=utf-8',
    'content-length': script.length + finale.length,
    'cache-control': 'no-cache',
    'openai-version': '2020-10-01',
    'x-request-id': 'req_bench',
  })
  response.write(script.preamble)
  // The slot that was just written comes round again in TOKEN_INTERVAL_MS.
  const slot = wheel[tick % SLOTS] as Set<Stream>
  const stream: Stream = { response, script, finale, sent: 0 }
  slot.add(stream)
  open++
  timer ??= setInterval(onTick, TICK_MS)
  response.once('close', () => remove(stream, slot))
}

function fail(response: ServerResponse, status: number, message: string) {
  const body = JSON.stringify({ error: { message, type: 'invalid_request_error', param: null, code: null } })
  response.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) })
  response.end(body)
}

const server = createServer((request, response) => {
  if (request.method !== 'POST' || request.url !== '/v1/chat/completions') return fail(response, 404, 'Not found')
  const chunks: Buffer[] = []
  request.on('data', (chunk: Buffer) => chunks.push(chunk))
  request.on('end', () => {
    const raw = Buffer.concat(chunks).toString('utf8')
    let body: { model?: unknown; stream?: unknown }
    try {
      body = JSON.parse(raw) as typeof body
    } catch {
      return fail(response, 400, 'The request body is not valid JSON.')
    }
    if (typeof body.model !== 'string') return fail(response, 400, 'you must provide a model parameter')
    if (body.stream !== true) return fail(response, 400, 'This fake only streams.')
    begin(response, body.model, Math.ceil(raw.length / 4))
  })
})
server.keepAliveTimeout = 60_000

// A deep accept queue: the upstream is not what is measured, so it must not drop a burst's connections.
server.listen({ host: '127.0.0.1', port: Number(process.env.PORT ?? 0), backlog: 4096 }, () => {
  process.stdout.write(`READY ${(server.address() as AddressInfo).port}\n`)
})

process.on('SIGTERM', () => {
  clearInterval(timer)
  server.closeAllConnections()
  server.close(() => process.exit(0))
})
