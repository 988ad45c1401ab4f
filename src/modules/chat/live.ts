import type { FastifyBaseLogger } from 'fastify'
import type { ChatRepository, LoggedEvent } from './chat-repository.js'

/** How often the events of every live answer are written, together, in one statement. */
export const FLUSH_INTERVAL_MS = 200

/** An answer being generated in this process: its events so far, and who is watching. */
export interface LiveAnswer {
  readonly messageId: string
  readonly conversationId: string
  /** Every event so far, in order; `seq` is the index + 1. */
  readonly events: string[]
  /** Events written to the log so far. */
  flushed: number
  /** Receives each new event; `final` marks the last one. */
  readonly watchers: Set<(seq: number, data: string, final: boolean) => void>
  /** Aborting it stops the generation (a stop request, the process shutting down). */
  readonly controller: AbortController
  finished: boolean
}

/**
 * The answers this process is generating. Events reach watchers at once, from memory; the log in
 * the database is written every FLUSH_INTERVAL_MS for all answers together (2,000 streams at 50
 * tokens a second are 100,000 events a second, which no database takes one row at a time).
 */
export function createLiveAnswers(repository: ChatRepository, log: FastifyBaseLogger) {
  const live = new Map<string, LiveAnswer>()
  let flushing: Promise<void> | null = null

  async function flush() {
    const batch: LoggedEvent[] = []
    const marks: [LiveAnswer, number][] = []
    for (const answer of live.values()) {
      if (answer.finished) continue
      const upTo = answer.events.length
      for (let seq = answer.flushed + 1; seq <= upTo; seq++) {
        batch.push({ messageId: answer.messageId, seq, data: answer.events[seq - 1] as string })
      }
      marks.push([answer, upTo])
    }
    if (marks.length === 0) return
    try {
      await repository.appendEvents(batch)
      await repository.heartbeat(marks.map(([answer]) => answer.messageId))
      for (const [answer, upTo] of marks) answer.flushed = Math.max(answer.flushed, upTo)
    } catch (error) {
      // Kept in memory and written by the next tick or at the end of the answer.
      log.warn({ err: error, answers: marks.length }, 'chat event log write failed')
    }
  }

  const timer = setInterval(() => {
    if (flushing || live.size === 0) return
    flushing = flush().finally(() => {
      flushing = null
    })
  }, FLUSH_INTERVAL_MS)
  timer.unref()

  return {
    start(messageId: string, conversationId: string): LiveAnswer {
      const answer: LiveAnswer = {
        messageId,
        conversationId,
        events: [],
        flushed: 0,
        watchers: new Set(),
        controller: new AbortController(),
        finished: false,
      }
      live.set(messageId, answer)
      return answer
    },

    /** Adds an event and hands it to every watcher; returns its sequence number. */
    emit(answer: LiveAnswer, event: object, final = false): number {
      const data = JSON.stringify(event)
      answer.events.push(data)
      const seq = answer.events.length
      for (const watcher of answer.watchers) watcher(seq, data, final)
      return seq
    },

    /**
     * The events not yet in the log, for the transaction that ends the answer; after it commits,
     * `release` drops the answer from memory (resumes read the log from then on).
     */
    unflushed(answer: LiveAnswer): LoggedEvent[] {
      // A tick may be writing some of them right now; the log ignores duplicates.
      return answer.events
        .slice(answer.flushed)
        .map((data, i) => ({ messageId: answer.messageId, seq: answer.flushed + i + 1, data }))
    },

    release(answer: LiveAnswer) {
      answer.finished = true
      live.delete(answer.messageId)
    },

    get(messageId: string): LiveAnswer | undefined {
      return live.get(messageId)
    },

    /** Stops every answer (shutdown); each ends as stopped and is written. */
    stopAll() {
      for (const answer of live.values()) answer.controller.abort(new Error('the server is shutting down'))
    },

    get size() {
      return live.size
    },

    async close() {
      clearInterval(timer)
      await flushing
    },
  }
}

export type LiveAnswers = ReturnType<typeof createLiveAnswers>
