import { setTimeout as sleep } from 'node:timers/promises'
import type { FastifyBaseLogger } from 'fastify'
import { createGroupCommit } from '../../lib/group-commit.js'
import type { AnswerEnding, ChatRepository, EventBatch } from './chat-repository.js'

/** How often the events of every live answer are written, together, in one statement. */
export const FLUSH_INTERVAL_MS = 200
/** How often a live answer's heartbeat is renewed; a message without one for long lost its process. */
export const HEARTBEAT_INTERVAL_MS = 2_000
/** Attempts at writing the end of an answer before it is given up (logged), with a pause after each. */
const END_RETRY_DELAYS_MS = [250, 1_000, 2_000]
/** Answers ended in one statement at most. */
const MAX_ENDINGS_PER_WRITE = 500

/** An answer being generated in this process: its events so far, and who is watching. */
export interface LiveAnswer {
  readonly messageId: string
  readonly conversationId: string
  /** Every event so far, in order; `seq` is the index + 1. */
  readonly events: string[]
  /** Events written to the log so far. */
  flushed: number
  /** When the message's heartbeat was last renewed (ms since the epoch); the turn's insert set the first. */
  beatAt: number
  /** Receives each new event; `final` marks the last one. */
  readonly watchers: Set<(seq: number, data: string, final: boolean) => void>
  /** Aborting it stops the generation (a stop request, the process shutting down). */
  readonly controller: AbortController
  /** Set once the generation ended: from then on its end, not the ticks, writes its events. */
  ending: boolean
}

/** How an answer ended, for its message and its meter. */
export type Ending = Pick<AnswerEnding, 'message' | 'usage'>

/**
 * The answers this process is generating. Events reach watchers at once, from memory; the log in
 * the database is written every FLUSH_INTERVAL_MS for all answers together, one row per answer
 * (2,000 streams at 50 tokens a second are 100,000 events a second, which no database takes one
 * row at a time). The end of an answer (its last events, its message, its usage) is written by a
 * group commit shared with the answers ending at the same moment, and only then does its final
 * event reach the watchers: a client that saw `done` finds the answer stored.
 */
export function createLiveAnswers(repository: ChatRepository, log: FastifyBaseLogger) {
  const live = new Map<string, LiveAnswer>()
  let flushing: Promise<void> | null = null
  const endings = createGroupCommit<AnswerEnding, void>({
    write: async (batch) => {
      await repository.endAnswers(batch)
      return batch.map(() => undefined)
    },
    maxBatch: MAX_ENDINGS_PER_WRITE,
    writers: 2,
    // During a burst answers end one at a time; a moment's wait lets them share a statement.
    lingerMs: 10,
  })

  /** The events of `answer` not in the log yet, as one row. */
  const unflushed = (answer: LiveAnswer, upTo: number): EventBatch => ({
    messageId: answer.messageId,
    seq: answer.flushed + 1,
    lastSeq: upTo,
    data: answer.events.slice(answer.flushed, upTo).join('\n'),
  })

  async function flush() {
    const batches: EventBatch[] = []
    const beating: LiveAnswer[] = []
    const marks: [LiveAnswer, number][] = []
    const now = Date.now()
    for (const answer of live.values()) {
      if (answer.ending) continue
      const upTo = answer.events.length
      if (upTo > answer.flushed) {
        batches.push(unflushed(answer, upTo))
        marks.push([answer, upTo])
      }
      if (now - answer.beatAt >= HEARTBEAT_INTERVAL_MS) beating.push(answer)
    }
    if (batches.length === 0 && beating.length === 0) return
    try {
      await repository.writeLog(
        batches,
        beating.map((answer) => answer.messageId),
      )
      for (const [answer, upTo] of marks) answer.flushed = upTo
      for (const answer of beating) answer.beatAt = now
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

  function release(answer: LiveAnswer) {
    answer.ending = true
    live.delete(answer.messageId)
  }

  return {
    start(messageId: string, conversationId: string): LiveAnswer {
      const answer: LiveAnswer = {
        messageId,
        conversationId,
        events: [],
        flushed: 0,
        beatAt: Date.now(),
        watchers: new Set(),
        controller: new AbortController(),
        ending: false,
      }
      live.set(messageId, answer)
      return answer
    },

    /** Adds a piece of text as a `content` event and hands it to every watcher; returns its sequence number. */
    emitContent(answer: LiveAnswer, text: string): number {
      // Serialised by hand: no object per token, and the same JSON as JSON.stringify of one.
      const data = `{"type":"content","content":${JSON.stringify(text)}}`
      answer.events.push(data)
      const seq = answer.events.length
      for (const watcher of answer.watchers) watcher(seq, data, false)
      return seq
    },

    /**
     * Ends the answer with its final event: writes the rest of its log, its message and its usage
     * (retrying a while if the database fails), then hands the final event to the watchers and
     * drops the answer from memory (resumes read the log from then on). Never rejects.
     */
    async end(answer: LiveAnswer, final: object, ending: Ending): Promise<void> {
      answer.ending = true
      // A tick may be writing part of this answer's events; the rest is written from where it stops.
      await flushing
      const data = JSON.stringify(final)
      const upTo = answer.events.length
      const batch = unflushed(answer, upTo)
      const events = {
        ...batch,
        lastSeq: upTo + 1,
        data: batch.data === '' ? data : `${batch.data}\n${data}`,
      }
      for (let attempt = 0; ; attempt++) {
        try {
          await endings.submit({ events, ...ending })
          break
        } catch (error) {
          const delay = END_RETRY_DELAYS_MS[attempt]
          if (delay === undefined) {
            // The message stays streaming; once its heartbeat is old, resumes end it as incomplete.
            log.error({ err: error, messageId: answer.messageId }, 'chat answer could not be recorded')
            break
          }
          await sleep(delay)
        }
      }
      answer.events.push(data)
      for (const watcher of answer.watchers) watcher(upTo + 1, data, true)
      release(answer)
    },

    /** Drops an answer that never got to its end (its generation failed to start). */
    release,

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
