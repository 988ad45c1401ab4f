import type { Database } from '../../db/client.js'
import { cursorParam, isTimestampText, toPage } from '../../lib/cursor.js'
import { newId } from '../../lib/ids.js'
import { problems } from '../../lib/problem.js'
import { createGroupCommit } from '../../lib/group-commit.js'
import type { Jobs } from '../../plugins/jobs.js'
import type { WebhookEventRow, WebhookEventStatus, WebhooksRepository } from './webhooks-repository.js'

export const PROCESS_QUEUE = 'webhooks.process'

/** A verified event as a provider sent it, ready to be stored. */
export interface VerifiedEvent {
  provider: string
  providerEventId: string
  type: string
  payload: unknown
}

/** What a handler receives: the stored event. Side effects must be idempotent by `id`. */
export interface InboundEvent {
  id: string
  provider: string
  providerEventId: string
  type: string
  payload: unknown
  receivedAt: Date
  /** 1 on the first attempt. */
  attempt: number
}

export type InboundHandler = (event: InboundEvent) => Promise<void>

/** Where modules register what to do with a provider's event types (billing: Stripe subscriptions). */
export interface WebhookHandlers {
  register(provider: string, type: string, handler: InboundHandler): void
}

export function createWebhooksService(deps: {
  db: Database
  repository: WebhooksRepository
  jobs: Jobs
  /** Retries after the first attempt; the last failure leaves the event dead. */
  retryLimit: number
}) {
  const { db, repository, jobs, retryLimit } = deps
  const handlers = new Map<string, InboundHandler>()

  async function storeBatch(events: VerifiedEvent[]): Promise<{ duplicate: boolean }[]> {
    return db.transaction(async (tx) => {
      const inserted = await repository.insertManyIfNew(
        events.map((event) => ({
          id: newId('wev'),
          provider: event.provider,
          providerEventId: event.providerEventId,
          type: event.type,
          payload: event.payload,
        })),
        tx,
      )
      await jobs.sendMany(
        PROCESS_QUEUE,
        inserted.map((row) => ({ eventId: row.id })),
        { tx },
      )
      // The first delivery of an event in this batch is the new one; any other is a duplicate.
      const fresh = new Set(inserted.map((row) => keyOf(row.provider, row.providerEventId)))
      return events.map((event) => ({ duplicate: !fresh.delete(keyOf(event.provider, event.providerEventId)) }))
    })
  }
  const ingestion = createGroupCommit({ write: storeBatch, maxBatch: 200, writers: 2 })
  const keyOf = (provider: string, type: string) => `${provider}\u0000${type}`

  return {
    handlers: {
      register(provider: string, type: string, handler: InboundHandler) {
        const key = keyOf(provider, type)
        if (handlers.has(key)) throw new Error(`a handler for ${provider} ${type} is already registered`)
        handlers.set(key, handler)
      },
    } satisfies WebhookHandlers,

    /**
     * Stores a verified event and enqueues its processing in one transaction; only after the
     * commit may the caller acknowledge it. A duplicate is recognised and enqueues nothing.
     * Concurrent deliveries share transactions (group commit): a burst costs a few round trips
     * per batch instead of four per event.
     */
    ingest: (event: VerifiedEvent): Promise<{ duplicate: boolean }> => ingestion.submit(event),

    /**
     * One processing attempt (a job). No handler: ignored. A failure is rethrown so the queue
     * retries it with backoff; the last one leaves the event dead.
     */
    async process(eventId: string, retryCount: number): Promise<void> {
      const event = await repository.startAttempt(eventId)
      if (!event) return // deleted meanwhile: nothing to do
      const handler = handlers.get(keyOf(event.provider, event.type))
      if (!handler) {
        await repository.finish(eventId, { status: 'ignored' })
        return
      }
      try {
        await handler(toInbound(event))
      } catch (error) {
        const last = retryCount >= retryLimit
        const message = error instanceof Error ? error.message : String(error)
        await repository.finish(eventId, { status: last ? 'dead' : 'failed', lastError: message.slice(0, 1000) })
        throw error
      }
      await repository.finish(eventId, { status: 'processed' })
    },

    /** Processes a stored event again (after a fix, or to re-run its side effects idempotently). */
    async replay(eventId: string): Promise<WebhookEventRow> {
      const event = await repository.find(eventId)
      if (!event) throw problems.notFound('Webhook event not found.', 'WEBHOOK_EVENT_NOT_FOUND')
      await db.transaction(async (tx) => {
        await repository.finish(eventId, { status: 'received' }, tx)
        await jobs.send(PROCESS_QUEUE, { eventId }, { tx })
      })
      return { ...event, status: 'received' }
    },

    async list(
      filter: { provider?: string | undefined; status?: WebhookEventStatus | undefined },
      limit: number,
      cursor: string | undefined,
    ) {
      const scope = `${filter.provider ?? ''}|${filter.status ?? ''}`
      const before = cursorParam(cursor, scope)
      if (before && !isTimestampText(before.k)) {
        throw problems.badRequest('INVALID_CURSOR', 'The cursor is malformed or was not issued by this server.')
      }
      const rows = await repository.list(filter, limit + 1, before)
      const { data, nextCursor } = toPage(rows, limit, (row) => ({ k: row.sortKey, id: row.id, scope }))
      return { data: data.map(({ sortKey: _sortKey, ...event }) => event), nextCursor }
    },
  }
}

function toInbound(event: WebhookEventRow): InboundEvent {
  return {
    id: event.id,
    provider: event.provider,
    providerEventId: event.providerEventId,
    type: event.type,
    payload: event.payload,
    receivedAt: event.receivedAt,
    attempt: event.attempts,
  }
}

export type WebhooksService = ReturnType<typeof createWebhooksService>
