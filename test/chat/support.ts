import { and, asc, eq, gt, lte, sql } from 'drizzle-orm'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { chatMessageEvents, chatUsage } from '../../src/db/schema/index.js'
import type { Test } from '../auth/support.js'

/** One Server-Sent Event as the chat stream frames it: an `id:` and one JSON object on `data:`. */
export interface SseEvent {
  id: string | undefined
  /** The `data:` lines joined with newlines (the SSE rule), unparsed. */
  data: string
}

export interface ChatUsage {
  model: string
  inputTokens: number
  outputTokens: number
  totalTokens: number
}

export interface ChatSource {
  index: number
  text: string
  title: string | null
  source: string | null
}

export type ChatEvent =
  | { type: 'content'; content: string }
  | { type: 'done'; messageId: string; sources: ChatSource[]; usage: ChatUsage; fullContent: string }
  | { type: 'error'; error: string; code: string }

/**
 * Splits an event-stream body into events, following the SSE parsing rules: events end at a blank
 * line, `:` lines are comments (heartbeats), one optional space after the field's colon is dropped,
 * and an unterminated last block is not an event.
 */
export function parseSse(body: string): SseEvent[] {
  const events: SseEvent[] = []
  const normalised = body.replace(/\r\n?/g, '\n')
  const blocks = normalised.split('\n\n')
  // The part after the last blank line was never terminated.
  blocks.pop()
  for (const block of blocks) {
    let id: string | undefined
    const data: string[] = []
    for (const line of block.split('\n')) {
      if (line === '' || line.startsWith(':')) continue
      const colon = line.indexOf(':')
      const field = colon === -1 ? line : line.slice(0, colon)
      let value = colon === -1 ? '' : line.slice(colon + 1)
      if (value.startsWith(' ')) value = value.slice(1)
      if (field === 'id') id = value
      else if (field === 'data') data.push(value)
    }
    if (data.length > 0 || id !== undefined) events.push({ id, data: data.join('\n') })
  }
  return events
}

/** Incremental SSE parsing for a body read in pieces (a real HTTP client). */
export class SseBuffer {
  private pending = ''

  push(text: string): SseEvent[] {
    this.pending += text.replace(/\r\n?/g, '\n')
    const end = this.pending.lastIndexOf('\n\n')
    if (end === -1) return []
    const complete = this.pending.slice(0, end + 2)
    this.pending = this.pending.slice(end + 2)
    return parseSse(complete)
  }
}

export interface ChatStream {
  events: ChatEvent[]
  contents: string[]
  /** The content events joined. */
  text: string
  done: Extract<ChatEvent, { type: 'done' }> | undefined
  error: Extract<ChatEvent, { type: 'error' }> | undefined
}

/** The events of a stream as chat events: every `data:` must be one JSON object with a `type`. */
export function chatEvents(t: Test, events: SseEvent[]): ChatEvent[] {
  return events.map((event) => {
    let parsed: unknown
    try {
      parsed = JSON.parse(event.data)
    } catch {
      t.fail(`data is not JSON: ${event.data}`)
    }
    return parsed as ChatEvent
  })
}

/**
 * Checks the framing every chat stream must have, and splits it: 200 `text/event-stream`, ids
 * 1, 2, 3… on every event, `content` events, then exactly one `done` or `error`, last.
 */
export function readChat(t: Test, response: LightMyRequestResponse, label = 'chat'): ChatStream {
  t.equal(response.statusCode, 200, `${label}: status 200 (${response.body.slice(0, 300)})`)
  t.match(response.headers['content-type'], /^text\/event-stream(;|$)/, `${label}: text/event-stream`)
  return checkStream(t, parseSse(response.body), label)
}

export function checkStream(t: Test, raw: SseEvent[], label = 'chat'): ChatStream {
  const ids = raw.map((event) => Number(event.id))
  t.same(
    ids,
    raw.map((_, i) => i + 1),
    `${label}: event ids run 1, 2, 3… with no gap`,
  )
  const events = chatEvents(t, raw)
  const terminal = events.filter((event) => event.type === 'done' || event.type === 'error')
  t.equal(terminal.length, 1, `${label}: exactly one done or error event`)
  const last = events.at(-1)
  t.ok(last && (last.type === 'done' || last.type === 'error'), `${label}: the stream ends with done or error`)
  const unknown = events.filter((event) => !['content', 'done', 'error'].includes(event.type))
  t.same(unknown, [], `${label}: no other event types`)
  const contents = events.flatMap((event) => (event.type === 'content' ? [event.content] : []))
  t.ok(
    contents.every((content) => typeof content === 'string'),
    `${label}: every content event carries a string`,
  )
  return {
    events,
    contents,
    text: contents.join(''),
    done: events.find((event) => event.type === 'done'),
    error: events.find((event) => event.type === 'error'),
  }
}

/** The chat_usage rows of one user, oldest first. */
export function usageRowsOf(app: FastifyInstance, userId: string) {
  return app.db.select().from(chatUsage).where(eq(chatUsage.userId, userId)).orderBy(asc(chatUsage.createdAt))
}

/** `tok0 tok1 …`: what the fakes stream by default for `n` tokens. */
export function defaultText(n: number): string {
  return Array.from({ length: n }, (_, i) => `tok${i} `).join('')
}

// ---------------------------------------------------------------------------------------------------
// Conversations: streams whose event ids are `<messageId>:<n>`, resumable with Last-Event-ID.

export type ConversationDone = {
  type: 'done'
  messageId: string
  status: 'complete' | 'stopped'
  sources: ChatSource[]
  usage: ChatUsage
  fullContent: string
}

export type ConversationEvent =
  { type: 'content'; content: string } | ConversationDone | { type: 'error'; error: string; code: string }

/** A conversation event id split into its message and number; seq is NaN when it is not of that form. */
export function splitEventId(id: string | undefined): { messageId: string; seq: number } {
  const match = /^(msg_[0-9a-f]{32}):(\d+)$/.exec(id ?? '')
  if (!match) return { messageId: '', seq: Number.NaN }
  return { messageId: match[1] ?? '', seq: Number(match[2]) }
}

export interface ConversationStream {
  raw: SseEvent[]
  events: ConversationEvent[]
  /** The message every event id names ('' if there was no event). */
  messageId: string
  seqs: number[]
  contents: string[]
  /** The content events joined. */
  text: string
  done: ConversationDone | undefined
  error: Extract<ConversationEvent, { type: 'error' }> | undefined
}

/**
 * Checks (part of) a conversation stream: every id is `<messageId>:<n>` of one message (`messageId`
 * if given), n running after + 1, after + 2… with no gap or repeat; only content events before the
 * end; with `ends` (default), exactly one done or error, last, and none otherwise.
 */
export function checkConversationStream(
  t: Test,
  raw: SseEvent[],
  options: { messageId?: string; after?: number; ends?: boolean; label?: string } = {},
): ConversationStream {
  const label = options.label ?? 'stream'
  const after = options.after ?? 0
  const ends = options.ends ?? true
  const ids = raw.map((event) => splitEventId(event.id))
  const messageId = options.messageId ?? ids[0]?.messageId ?? ''
  t.ok(
    ids.every((id) => id.messageId === messageId && messageId !== ''),
    `${label}: every id is <messageId>:<n> of ${messageId || 'one message'} (${raw.map((e) => e.id).join(' ')})`,
  )
  const seqs = ids.map((id) => id.seq)
  t.same(
    seqs,
    raw.map((_, i) => after + i + 1),
    `${label}: event numbers run ${after + 1}, ${after + 2}… with no gap or repeat`,
  )
  const events = chatEvents(t, raw) as ConversationEvent[]
  const terminal = events.filter((event) => event.type === 'done' || event.type === 'error')
  const last = events.at(-1)
  if (ends) {
    t.equal(terminal.length, 1, `${label}: exactly one done or error event`)
    t.ok(last && (last.type === 'done' || last.type === 'error'), `${label}: it is the last event`)
  } else {
    t.equal(terminal.length, 0, `${label}: no done or error yet`)
  }
  const unknown = events.filter((event) => !['content', 'done', 'error'].includes(event.type))
  t.same(unknown, [], `${label}: no other event types`)
  const contents = events.flatMap((event) => (event.type === 'content' ? [event.content] : []))
  return {
    raw,
    events,
    messageId,
    seqs,
    contents,
    text: contents.join(''),
    done: events.find((event): event is ConversationDone => event.type === 'done'),
    error: events.find((event): event is Extract<ConversationEvent, { type: 'error' }> => event.type === 'error'),
  }
}

/**
 * An event stream read over real HTTP (fetch), event by event, so a test can stop reading, drop the
 * connection or keep going while the server is still producing.
 */
export class LiveStream {
  readonly events: SseEvent[] = []
  ended = false
  private readonly parser = new SseBuffer()
  private readonly decoder = new TextDecoder()
  private readonly reader: ReadableStreamDefaultReader<Uint8Array> | undefined

  private constructor(
    readonly response: Response,
    private readonly controller: AbortController,
    /** The body of a response that is not an event stream (a refusal). */
    readonly text: string | undefined,
  ) {
    if (text === undefined) this.reader = response.body?.getReader()
  }

  static async open(url: string, init: { method?: string; headers?: Record<string, string>; body?: unknown } = {}) {
    const controller = new AbortController()
    const body = init.body === undefined ? undefined : JSON.stringify(init.body)
    const response = await fetch(url, {
      method: init.method ?? 'GET',
      headers: { ...(body === undefined ? {} : { 'content-type': 'application/json' }), ...init.headers },
      ...(body === undefined ? {} : { body }),
      signal: controller.signal,
    })
    const isStream = /^text\/event-stream/.test(response.headers.get('content-type') ?? '')
    return new LiveStream(response, controller, isStream ? undefined : await response.text())
  }

  get status(): number {
    return this.response.status
  }

  /** Reads until at least `n` events arrived or the stream ended; throws after `ms`. */
  async until(n: number, ms = 10_000): Promise<SseEvent[]> {
    const deadline = Date.now() + ms
    while (this.events.length < n && !this.ended) await this.readOnce(deadline, `${n} events`)
    return this.events
  }

  /** Reads until the server ends the stream; throws after `ms`. */
  async toEnd(ms = 15_000): Promise<SseEvent[]> {
    const deadline = Date.now() + ms
    while (!this.ended) await this.readOnce(deadline, 'the end of the stream')
    return this.events
  }

  /** Drops the connection, as a client that goes away does. */
  async abort(): Promise<void> {
    this.controller.abort()
    await this.reader?.cancel().catch(() => {})
    this.ended = true
  }

  private async readOnce(deadline: number, what: string): Promise<void> {
    if (!this.reader) {
      this.ended = true
      return
    }
    let timer: NodeJS.Timeout | undefined
    const timeout = new Promise<'timeout'>((resolve) => {
      timer = setTimeout(() => resolve('timeout'), Math.max(0, deadline - Date.now()))
    })
    const result = await Promise.race([this.reader.read(), timeout])
    clearTimeout(timer)
    if (result === 'timeout') {
      await this.abort()
      throw new Error(`timed out waiting for ${what}; got ${this.events.length} events: ${JSON.stringify(this.events)}`)
    }
    if (result.done) {
      this.events.push(...this.parser.push(this.decoder.decode()))
      this.ended = true
      return
    }
    this.events.push(...this.parser.push(this.decoder.decode(result.value, { stream: true })))
  }
}

/**
 * The event log of one answer, one entry per event. The log keeps consecutive events per row
 * (`seq` to `lastSeq`, one JSON per line); rows that overlap, leave a gap or disagree with their
 * line count fail here, so every test reading the log checks its shape too.
 */
export async function storedEvents(app: FastifyInstance, messageId: string): Promise<{ seq: number; data: string }[]> {
  const rows = await app.db
    .select({ seq: chatMessageEvents.seq, lastSeq: chatMessageEvents.lastSeq, data: chatMessageEvents.data })
    .from(chatMessageEvents)
    .where(eq(chatMessageEvents.messageId, messageId))
    .orderBy(asc(chatMessageEvents.seq))
  const events: { seq: number; data: string }[] = []
  for (const row of rows) {
    const lines = row.data.split('\n')
    const expected = (events.at(-1)?.seq ?? 0) + 1
    if (row.seq !== expected || row.lastSeq !== row.seq + lines.length - 1) {
      throw new Error(
        `log row ${row.seq}-${row.lastSeq} of ${messageId} holds ${lines.length} events, expected from ${expected}`,
      )
    }
    lines.forEach((data, i) => events.push({ seq: row.seq + i, data }))
  }
  return events
}

/** Cuts an answer's log after its first `kept` events, as if the rest had never been written. */
export async function truncateLog(app: FastifyInstance, messageId: string, kept: number): Promise<void> {
  const of = eq(chatMessageEvents.messageId, messageId)
  await app.db.delete(chatMessageEvents).where(and(of, gt(chatMessageEvents.seq, kept)))
  // The row that holds event `kept` keeps its lines up to it.
  await app.db
    .update(chatMessageEvents)
    .set({
      lastSeq: kept,
      data: sql`array_to_string((string_to_array(${chatMessageEvents.data}, E'\n'))[1:${kept} - ${chatMessageEvents.seq} + 1], E'\n')`,
    })
    .where(and(of, lte(chatMessageEvents.seq, kept), gt(chatMessageEvents.lastSeq, kept)))
}
