import { and, asc, desc, eq, inArray, isNotNull, isNull, lt, lte, or, sql } from 'drizzle-orm'
import type { Executor } from '../../db/client.js'
import { resultRows } from '../../db/results.js'
import { webhookDeliveries, webhookDeliveryAttempts, webhookEndpoints, webhookMessages } from '../../db/schema/index.js'
import type { Cursor } from '../../lib/cursor.js'
import type { EndpointRow } from './endpoints-repository.js'

export type DeliveryStatus = (typeof webhookDeliveries.$inferSelect)['status']

/** A delivery as the worker needs it: the message's exact body included. */
export interface DueDelivery {
  id: string
  messageId: string
  eventType: string
  body: string
  attempts: number
  scheduleStep: number
}

/** One line of the delivery log. */
export interface AttemptEntry {
  id: string
  deliveryId: string
  endpointId: string
  attempt: number
  attemptedAt: Date
  succeeded: boolean
  statusCode: number | null
  latencyMs: number
  responseBody: string | null
  error: string | null
}

/** How an attempt ended, as the delivery keeps it. */
export interface Settlement {
  status: DeliveryStatus
  scheduleStep: number
  nextAttemptAt: Date | null
}

const leaseIsFree = or(
  isNull(webhookEndpoints.deliveryLeaseUntil),
  lte(webhookEndpoints.deliveryLeaseUntil, sql`now()`),
)

/** The only code that touches the outbound message, delivery and attempt tables. */
export function createDeliveriesRepository(db: Executor) {
  return {
    /** Enabled endpoints of these orgs, which new events are fanned out to. */
    async enabledEndpoints(orgIds: string[], tx: Executor = db) {
      if (orgIds.length === 0) return []
      return tx
        .select({
          id: webhookEndpoints.id,
          orgId: webhookEndpoints.orgId,
          events: webhookEndpoints.events,
          createdAt: webhookEndpoints.createdAt,
        })
        .from(webhookEndpoints)
        .where(and(inArray(webhookEndpoints.orgId, orgIds), eq(webhookEndpoints.enabled, true)))
    },

    /** Deliveries are created in the order given; that order is the order they are attempted in. */
    async enqueue(
      messages: (typeof webhookMessages.$inferInsert)[],
      deliveries: { id: string; messageId: string; endpointId: string }[],
      tx: Executor,
    ): Promise<void> {
      if (messages.length > 0) await tx.insert(webhookMessages).values(messages).onConflictDoNothing()
      if (deliveries.length > 0) {
        await tx
          .insert(webhookDeliveries)
          .values(deliveries.map((delivery) => ({ ...delivery, nextAttemptAt: sql`now()` })))
          .onConflictDoNothing()
      }
    },

    /**
     * Takes the endpoint's delivery lease when nobody holds it (or the holder's lease ran out) and
     * the endpoint is enabled; returns the endpoint, or null when another worker delivers to it.
     */
    async acquireLease(endpointId: string, token: string, leaseMs: number, tx: Executor = db) {
      const [row] = await tx
        .update(webhookEndpoints)
        .set({
          deliveryLeaseToken: token,
          deliveryLeaseUntil: sql`now() + ${leaseMs} * interval '1 millisecond'`,
        })
        .where(and(eq(webhookEndpoints.id, endpointId), eq(webhookEndpoints.enabled, true), leaseIsFree))
        .returning()
      return row ?? null
    },

    /** Extends a lease this worker holds; returns the endpoint as it now is, or null when the lease was lost. */
    async renewLease(endpointId: string, token: string, leaseMs: number, tx: Executor = db) {
      const [row] = await tx
        .update(webhookEndpoints)
        .set({ deliveryLeaseUntil: sql`now() + ${leaseMs} * interval '1 millisecond'` })
        .where(and(eq(webhookEndpoints.id, endpointId), eq(webhookEndpoints.deliveryLeaseToken, token)))
        .returning()
      return row ?? null
    },

    /** Gives the lease up; `pausedUntil` keeps every worker away until then (the receiver asked for it). */
    async releaseLease(endpointId: string, token: string, pausedUntil: Date | null, tx: Executor = db) {
      await tx
        .update(webhookEndpoints)
        .set({ deliveryLeaseToken: null, deliveryLeaseUntil: pausedUntil })
        .where(and(eq(webhookEndpoints.id, endpointId), eq(webhookEndpoints.deliveryLeaseToken, token)))
    },

    /** Pending deliveries of the endpoint that are due, in the order their events were committed. */
    async due(endpointId: string, limit: number, tx: Executor = db): Promise<DueDelivery[]> {
      return tx
        .select({
          id: webhookDeliveries.id,
          messageId: webhookDeliveries.messageId,
          eventType: webhookMessages.eventType,
          body: webhookMessages.body,
          attempts: webhookDeliveries.attempts,
          scheduleStep: webhookDeliveries.scheduleStep,
        })
        .from(webhookDeliveries)
        .innerJoin(webhookMessages, eq(webhookMessages.id, webhookDeliveries.messageId))
        .where(
          and(
            eq(webhookDeliveries.endpointId, endpointId),
            eq(webhookDeliveries.status, 'pending'),
            lte(webhookDeliveries.nextAttemptAt, sql`now()`),
          ),
        )
        .orderBy(asc(webhookDeliveries.seq))
        .limit(limit)
    },

    /** Enabled endpoints with due deliveries that no worker is delivering to: what a sweep wakes. */
    async neglectedEndpoints(limit: number, tx: Executor = db): Promise<string[]> {
      const rows = await tx
        .select({ id: webhookEndpoints.id })
        .from(webhookDeliveries)
        .innerJoin(webhookEndpoints, eq(webhookEndpoints.id, webhookDeliveries.endpointId))
        .where(
          and(
            eq(webhookDeliveries.status, 'pending'),
            lte(webhookDeliveries.nextAttemptAt, sql`now()`),
            eq(webhookEndpoints.enabled, true),
            leaseIsFree,
          ),
        )
        .groupBy(webhookEndpoints.id)
        // The longest waiting first, so that a large backlog cannot starve anyone.
        .orderBy(sql`min(${webhookDeliveries.nextAttemptAt})`)
        .limit(limit)
      return rows.map((row) => row.id)
    },

    async hasDue(endpointId: string, tx: Executor = db): Promise<boolean> {
      const [row] = await tx
        .select({ id: webhookDeliveries.id })
        .from(webhookDeliveries)
        .innerJoin(webhookEndpoints, eq(webhookEndpoints.id, webhookDeliveries.endpointId))
        .where(
          and(
            eq(webhookDeliveries.endpointId, endpointId),
            eq(webhookDeliveries.status, 'pending'),
            lte(webhookDeliveries.nextAttemptAt, sql`now()`),
            eq(webhookEndpoints.enabled, true),
          ),
        )
        .limit(1)
      return row !== undefined
    },

    /**
     * Records attempt `entry.attempt` of a delivery and its log entry in one statement, only if the
     * delivery is still pending with one attempt fewer: when a worker died after sending and another
     * sent again, the outcome is kept once. Returns whether it was recorded.
     */
    async settle(settlement: Settlement, entry: AttemptEntry, tx: Executor = db): Promise<boolean> {
      const timestamp = (value: Date | null) => (value ? value.toISOString() : null)
      const result = await tx.execute(sql`
        with settled as (
          update webhook_deliveries
          set status = ${settlement.status}::webhook_delivery_status,
              schedule_step = ${settlement.scheduleStep},
              next_attempt_at = ${timestamp(settlement.nextAttemptAt)}::timestamptz,
              attempts = ${entry.attempt},
              updated_at = now()
          where id = ${entry.deliveryId} and status = 'pending' and attempts = ${entry.attempt - 1}
          returning id
        )
        insert into webhook_delivery_attempts
          (id, delivery_id, endpoint_id, attempt, attempted_at, succeeded, status_code, latency_ms,
           response_body, error, next_retry_at)
        select ${entry.id}, settled.id, ${entry.endpointId}, ${entry.attempt},
               ${entry.attemptedAt.toISOString()}::timestamptz, ${entry.succeeded}, ${entry.statusCode}::integer,
               ${entry.latencyMs}, ${entry.responseBody}::text, ${entry.error}::text,
               ${timestamp(settlement.nextAttemptAt)}::timestamptz
        from settled
        returning id
      `)
      return resultRows(result).length > 0
    },

    async endpointRecovered(endpointId: string, tx: Executor): Promise<void> {
      await tx
        .update(webhookEndpoints)
        .set({ failingSince: null })
        .where(and(eq(webhookEndpoints.id, endpointId), isNotNull(webhookEndpoints.failingSince)))
    },

    /** Notes a failure; returns since when the endpoint has been failing without a success. */
    async endpointFailed(endpointId: string, at: Date, tx: Executor): Promise<Date> {
      const [row] = await tx
        .update(webhookEndpoints)
        .set({ failingSince: sql`coalesce(${webhookEndpoints.failingSince}, ${at.toISOString()}::timestamptz)` })
        .where(eq(webhookEndpoints.id, endpointId))
        .returning({ failingSince: webhookEndpoints.failingSince })
      return row?.failingSince ?? at
    },

    /** Disables an enabled endpoint; returns it, or null when it was already disabled (or deleted). */
    async disable(endpointId: string, reason: string, tx: Executor): Promise<EndpointRow | null> {
      const [row] = await tx
        .update(webhookEndpoints)
        .set({ enabled: false, disabledReason: reason, updatedAt: sql`clock_timestamp()` })
        .where(and(eq(webhookEndpoints.id, endpointId), eq(webhookEndpoints.enabled, true)))
        .returning()
      return row ?? null
    },

    /** Fails every pending delivery of an endpoint (it was disabled). */
    async failPending(endpointId: string, tx: Executor): Promise<void> {
      await tx
        .update(webhookDeliveries)
        .set({ status: 'failed', nextAttemptAt: null, updatedAt: sql`now()` })
        .where(and(eq(webhookDeliveries.endpointId, endpointId), eq(webhookDeliveries.status, 'pending')))
    },

    /**
     * Makes a failed delivery pending again, due now, with the retry schedule started over. Returns
     * the status it had (only a failed one changes), or null when the endpoint has no such delivery.
     */
    async retry(
      endpointId: string,
      deliveryId: string,
      tx: Executor = db,
    ): Promise<{ status: DeliveryStatus; messageId: string } | null> {
      const [row] = await tx
        .select({ status: webhookDeliveries.status, messageId: webhookDeliveries.messageId })
        .from(webhookDeliveries)
        .where(and(eq(webhookDeliveries.id, deliveryId), eq(webhookDeliveries.endpointId, endpointId)))
        .for('update')
      if (!row || row.status !== 'failed') return row ?? null
      await tx
        .update(webhookDeliveries)
        .set({ status: 'pending', scheduleStep: 0, nextAttemptAt: sql`now()`, updatedAt: sql`now()` })
        .where(eq(webhookDeliveries.id, deliveryId))
      return row
    },

    /** The delivery log of an endpoint, newest attempt first; attempt ids are UUIDv7, so (attemptedAt, id) is the keyset. */
    async attempts(endpointId: string, limit: number, before: Cursor | null, tx: Executor = db) {
      const keyset = before
        ? or(
            lt(webhookDeliveryAttempts.attemptedAt, sql`${before.k}::timestamptz`),
            and(
              eq(webhookDeliveryAttempts.attemptedAt, sql`${before.k}::timestamptz`),
              lt(webhookDeliveryAttempts.id, before.id),
            ),
          )
        : undefined
      return tx
        .select({
          attempt: webhookDeliveryAttempts,
          deliveryStatus: webhookDeliveries.status,
          eventId: webhookDeliveries.messageId,
          eventType: webhookMessages.eventType,
          sortKey: sql<string>`${webhookDeliveryAttempts.attemptedAt}::text`,
        })
        .from(webhookDeliveryAttempts)
        .innerJoin(webhookDeliveries, eq(webhookDeliveries.id, webhookDeliveryAttempts.deliveryId))
        .innerJoin(webhookMessages, eq(webhookMessages.id, webhookDeliveries.messageId))
        .where(and(eq(webhookDeliveryAttempts.endpointId, endpointId), keyset))
        .orderBy(desc(webhookDeliveryAttempts.attemptedAt), desc(webhookDeliveryAttempts.id))
        .limit(limit)
    },
  }
}

export type DeliveriesRepository = ReturnType<typeof createDeliveriesRepository>
