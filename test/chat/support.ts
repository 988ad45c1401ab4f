import { asc, eq } from 'drizzle-orm'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { chatUsage } from '../../src/db/schema/index.js'
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
