import type { FastifyInstance, FastifyReply } from 'fastify'
import fp from 'fastify-plugin'

declare module 'fastify' {
  interface FastifyReply {
    /**
     * Takes over the response as a Server-Sent Events stream (`text/event-stream`). From here on
     * errors are events, not problem+json: validate and authorize before calling this.
     */
    eventStream(): EventStream
  }
}

export interface EventStream {
  /** Writes one event, one JSON object on its `data:` line, with the next id (or `id` when given). */
  send(data: object, id?: string | number): void
  /** Writes an event whose JSON is already serialised (a logged event, replayed). */
  sendSerialized(json: string, id: string | number): void
  /** Ends the stream; a no-op once ended or once the client left. */
  end(): void
  /** Aborted when the client disconnects before `end()`. */
  readonly signal: AbortSignal
}

/** A comment line now and then keeps proxies and load balancers from closing a quiet stream. */
const HEARTBEAT_MS = 15_000

/**
 * The open streams' heartbeat: one timer for all of them rather than one per stream (thousands
 * of streams open at once would be thousands of timers to create and cancel). A stream opened
 * just before a tick gets its first comment early, which is harmless.
 */
const openStreams = new Set<{ write(chunk: string): unknown }>()
let heartbeat: NodeJS.Timeout | null = null
function beatWhileOpen(raw: { write(chunk: string): unknown }) {
  openStreams.add(raw)
  heartbeat ??= setInterval(() => {
    for (const stream of openStreams) stream.write(': keep-alive\n\n')
  }, HEARTBEAT_MS).unref()
}
function stopBeating(raw: { write(chunk: string): unknown }) {
  openStreams.delete(raw)
  if (openStreams.size === 0 && heartbeat) {
    clearInterval(heartbeat)
    heartbeat = null
  }
}

function openEventStream(reply: FastifyReply): EventStream {
  reply.hijack()
  const raw = reply.raw
  const disconnected = new AbortController()
  let nextId = 1
  let ended = false
  raw.writeHead(200, {
    // What hooks set so far (security headers, rate-limit headers, the request id) still applies.
    ...(reply.getHeaders() as Record<string, string>),
    'content-type': 'text/event-stream; charset=utf-8',
    'cache-control': 'no-cache, no-transform',
    connection: 'keep-alive',
    // Nginx buffers responses unless told otherwise, which would hold every token back.
    'x-accel-buffering': 'no',
  })
  raw.flushHeaders()
  beatWhileOpen(raw)
  const finish = () => {
    stopBeating(raw)
    if (!ended) {
      ended = true
      disconnected.abort(new Error('the client disconnected'))
    }
  }
  // 'close' on the response fires when the connection goes, whether or not we ended it first.
  raw.on('close', finish)
  // A client that left while the request was being admitted is gone before the stream opens.
  if (raw.destroyed || reply.request.raw.socket?.destroyed) finish()
  return {
    signal: disconnected.signal,
    send(data, id) {
      if (ended) return
      const eventId = id ?? nextId++
      raw.write(`id: ${eventId}\ndata: ${JSON.stringify(data)}\n\n`)
    },
    sendSerialized(json, id) {
      if (ended) return
      raw.write(`id: ${id}\ndata: ${json}\n\n`)
    },
    end() {
      if (ended) return
      ended = true
      stopBeating(raw)
      raw.end()
    },
  }
}

async function ssePlugin(app: FastifyInstance) {
  app.decorateReply('eventStream', function (this: FastifyReply) {
    return openEventStream(this)
  })
}

export default fp(ssePlugin, { name: 'sse', fastify: '5.x' })
