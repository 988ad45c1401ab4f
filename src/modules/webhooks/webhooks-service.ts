import { Counter, type Registry } from 'prom-client'
import type { Database, Executor } from '../../db/client.js'
import { timestampCursorParam, toPage } from '../../lib/cursor.js'
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

/**
 * Handles one event. Database writes made through `tx` commit together with the event's
 * `processed` mark, so they happen exactly once even when a crash makes the queue run the event
 * again; calls to other systems must be idempotent by `event.id`. Use only `tx` for the database
 * inside a handler: on the embedded engine another connection would wait for this transaction.
 */
export type InboundHandler = (event: InboundEvent, tx: Executor) => Promise<void>

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
  metrics: Registry
}) {
  const { db, repository, jobs, retryLimit } = deps
  const handlers = new Map<string, InboundHandler>()
  // Counted where it happens: deliveries on API instances, processing outcomes where workers run.
  const events = new Counter({
    name: 'webhook_events_total',
    help: 'Inbound webhook events by provider and status: received (stored), duplicate, rejected (signature or shape), then processed, ignored, failed (will retry) or dead',
    labelNames: ['provider', 'status'] as const,
    registers: [deps.metrics],
  })

  async function storeBatch(batch: VerifiedEvent[]): Promise<{ duplicate: boolean }[]> {
    return db.transaction(async (tx) => {
      const inserted = await repository.insertManyIfNew(
        batch.map((event) => ({
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
      return batch.map((event) => ({ duplicate: !fresh.delete(keyOf(event.provider, event.providerEventId)) }))
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
    async ingest(event: VerifiedEvent): Promise<{ duplicate: boolean }> {
      const result = await ingestion.submit(event)
      events.inc({ provider: event.provider, status: result.duplicate ? 'duplicate' : 'received' })
      return result
    },

    countRejected(provider: string) {
      events.inc({ provider, status: 'rejected' })
    },

    /**
     * One processing attempt (a job). No handler: ignored. A failure is rethrown so the queue
     * retries it with backoff; the last one leaves the event dead.
     */
    async process(eventId: string, retryCount: number): Promise<void> {
      const event = await repository.startAttempt(eventId)
      if (!event) return // already done (a job that ran again after a crash) or deleted
      const handler = handlers.get(keyOf(event.provider, event.type))
      if (!handler) {
        await repository.finish(eventId, { status: 'ignored' })
        events.inc({ provider: event.provider, status: 'ignored' })
        return
      }
      let ran: boolean
      try {
        ran = await db.transaction(async (tx) => {
          // Another run of this event (an expired job's retry, a replay) waits on this lock and
          // then finds it done, so the handler's writes commit once.
          if (!(await repository.lockUnfinished(eventId, tx))) return false
          await handler(toInbound(event), tx)
          await repository.finish(eventId, { status: 'processed' }, tx)
          return true
        })
      } catch (error) {
        const status = retryCount >= retryLimit ? 'dead' : 'failed'
        const message = error instanceof Error ? error.message : String(error)
        await repository.finish(eventId, { status, lastError: message.slice(0, 1000) })
        events.inc({ provider: event.provider, status })
        throw error
      }
      if (ran) events.inc({ provider: event.provider, status: 'processed' })
    },

    /** Processes a stored event again (after a fix, or to re-run its side effects idempotently). */
    async replay(eventId: string): Promise<WebhookEventRow> {
      const replayed = await db.transaction(async (tx) => {
        const event = await repository.requeue(eventId, tx)
        if (!event) return null
        await jobs.send(PROCESS_QUEUE, { eventId }, { tx })
        // Its dead-lettered job is dealt with: readiness no longer counts it.
        await jobs.clearDead(PROCESS_QUEUE, 'eventId', eventId, { tx })
        return event
      })
      if (!replayed) throw problems.notFound('Webhook event not found.', 'WEBHOOK_EVENT_NOT_FOUND')
      return replayed
    },

    async list(
      filter: { provider?: string | undefined; status?: WebhookEventStatus | undefined },
      limit: number,
      cursor: string | undefined,
    ) {
      const scope = `${filter.provider ?? ''}|${filter.status ?? ''}`
      const before = timestampCursorParam(cursor, scope)
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
