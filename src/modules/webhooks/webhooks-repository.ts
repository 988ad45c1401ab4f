import { and, desc, eq, lt, notInArray, or, sql } from 'drizzle-orm'
import type { Executor } from '../../db/client.js'
import { webhookEvents } from '../../db/schema/index.js'
import type { Cursor } from '../../lib/cursor.js'

export type WebhookEventRow = typeof webhookEvents.$inferSelect
export type WebhookEventStatus = WebhookEventRow['status']

/** Statuses after which an event is not processed again unless replayed. */
const DONE: WebhookEventStatus[] = ['processed', 'ignored']

/** The only code that touches the webhook_events table. */
export function createWebhooksRepository(db: Executor) {
  return {
    /** Inserts the events not stored before; returns those it inserted (id, provider, event id). */
    async insertManyIfNew(values: (typeof webhookEvents.$inferInsert)[], tx: Executor = db) {
      if (values.length === 0) return []
      return tx
        .insert(webhookEvents)
        .values(values)
        .onConflictDoNothing({ target: [webhookEvents.provider, webhookEvents.providerEventId] })
        .returning({
          id: webhookEvents.id,
          provider: webhookEvents.provider,
          providerEventId: webhookEvents.providerEventId,
        })
    },

    async find(id: string, tx: Executor = db): Promise<WebhookEventRow | null> {
      const [row] = await tx.select().from(webhookEvents).where(eq(webhookEvents.id, id))
      return row ?? null
    },

    /** Puts an event back to `received` for another round of processing; null when unknown. */
    async requeue(id: string, tx: Executor = db): Promise<WebhookEventRow | null> {
      const [row] = await tx
        .update(webhookEvents)
        .set({ status: 'received', lastError: null, processedAt: null, updatedAt: sql`now()` })
        .where(eq(webhookEvents.id, id))
        .returning()
      return row ?? null
    },

    /** Starts an attempt on an event not yet done: counts it and marks it processing. */
    async startAttempt(id: string, tx: Executor = db): Promise<WebhookEventRow | null> {
      const [row] = await tx
        .update(webhookEvents)
        .set({ status: 'processing', attempts: sql`${webhookEvents.attempts} + 1`, updatedAt: sql`now()` })
        .where(and(eq(webhookEvents.id, id), notInArray(webhookEvents.status, DONE)))
        .returning()
      return row ?? null
    },

    /** Locks the event for the rest of `tx`; false when it is done (or gone) meanwhile. */
    async lockUnfinished(id: string, tx: Executor): Promise<boolean> {
      const [row] = await tx
        .select({ status: webhookEvents.status })
        .from(webhookEvents)
        .where(eq(webhookEvents.id, id))
        .for('update')
      return row !== undefined && !DONE.includes(row.status)
    },

    async finish(
      id: string,
      outcome: { status: WebhookEventStatus; lastError?: string | null },
      tx: Executor = db,
    ): Promise<void> {
      const done = DONE.includes(outcome.status)
      await tx
        .update(webhookEvents)
        .set({
          status: outcome.status,
          lastError: outcome.lastError ?? null,
          updatedAt: sql`now()`,
          ...(done ? { processedAt: sql`now()` } : {}),
        })
        .where(eq(webhookEvents.id, id))
    },

    /** Newest first; ids are UUIDv7, so (receivedAt, id) is the keyset. */
    async list(
      filter: { provider?: string | undefined; status?: WebhookEventStatus | undefined },
      limit: number,
      before: Cursor | null,
      tx: Executor = db,
    ) {
      const keyset = before
        ? or(
            lt(webhookEvents.receivedAt, sql`${before.k}::timestamptz`),
            and(eq(webhookEvents.receivedAt, sql`${before.k}::timestamptz`), lt(webhookEvents.id, before.id)),
          )
        : undefined
      return tx
        .select({
          id: webhookEvents.id,
          provider: webhookEvents.provider,
          providerEventId: webhookEvents.providerEventId,
          type: webhookEvents.type,
          status: webhookEvents.status,
          attempts: webhookEvents.attempts,
          lastError: webhookEvents.lastError,
          receivedAt: webhookEvents.receivedAt,
          processedAt: webhookEvents.processedAt,
          sortKey: sql<string>`${webhookEvents.receivedAt}::text`,
        })
        .from(webhookEvents)
        .where(
          and(
            filter.provider ? eq(webhookEvents.provider, filter.provider) : undefined,
            filter.status ? eq(webhookEvents.status, filter.status) : undefined,
            keyset,
          ),
        )
        .orderBy(desc(webhookEvents.receivedAt), desc(webhookEvents.id))
        .limit(limit)
    },
  }
}

export type WebhooksRepository = ReturnType<typeof createWebhooksRepository>
