import { sql } from 'drizzle-orm'
import {
  bigint,
  boolean,
  index,
  integer,
  jsonb,
  pgEnum,
  pgTable,
  text,
  timestamp,
  uniqueIndex,
} from 'drizzle-orm/pg-core'
import { orgs } from './auth.js'

export const webhookEventStatus = pgEnum('webhook_event_status', [
  'received',
  'processing',
  'processed',
  'ignored',
  'failed',
  'dead',
])

/**
 * Inbound events from third parties, stored before they are acknowledged. (provider, provider
 * event id) is unique: a provider's retry of an event already stored is recognised and not
 * processed again.
 */
export const webhookEvents = pgTable(
  'webhook_events',
  {
    id: text().primaryKey(),
    provider: text().notNull(),
    providerEventId: text().notNull(),
    type: text().notNull(),
    payload: jsonb().notNull(),
    status: webhookEventStatus().notNull().default('received'),
    attempts: integer().notNull().default(0),
    lastError: text(),
    receivedAt: timestamp({ withTimezone: true }).notNull().defaultNow(),
    processedAt: timestamp({ withTimezone: true }),
    updatedAt: timestamp({ withTimezone: true }).notNull().defaultNow(),
  },
  (table) => [
    uniqueIndex('webhook_events_provider_event_key').on(table.provider, table.providerEventId),
    index('webhook_events_received_idx').on(table.receivedAt, table.id),
    index('webhook_events_status_idx').on(table.status, table.receivedAt, table.id),
  ],
)

/**
 * Where an org's systems receive Backplane's events (outbound webhooks). Signing secrets are
 * sealed with the server's encryption key; after a rotation the previous secret keeps signing
 * alongside the new one until `previousSecretExpiresAt`, so receivers can switch over.
 */
export const webhookEndpoints = pgTable(
  'webhook_endpoints',
  {
    id: text().primaryKey(),
    orgId: text()
      .notNull()
      .references(() => orgs.id, { onDelete: 'cascade' }),
    url: text().notNull(),
    // Event types, or ['*'] for every event.
    events: text().array().notNull(),
    description: text().notNull().default(''),
    enabled: boolean().notNull().default(true),
    // Why the server disabled it (the receiver answered 410, or kept failing); null when enabled by hand.
    disabledReason: text(),
    secretSealed: text().notNull(),
    previousSecretSealed: text(),
    previousSecretExpiresAt: timestamp({ withTimezone: true }),
    // Since when every attempt has failed (null after a success): an endpoint failing for too long is disabled.
    failingSince: timestamp({ withTimezone: true }),
    // Who delivers to this endpoint now: one worker at a time, so events arrive in order.
    deliveryLeaseToken: text(),
    deliveryLeaseUntil: timestamp({ withTimezone: true }),
    createdBy: text().notNull(),
    createdAt: timestamp({ withTimezone: true }).notNull().defaultNow(),
    updatedAt: timestamp({ withTimezone: true }).notNull().defaultNow(),
  },
  (table) => [index('webhook_endpoints_org_created_idx').on(table.orgId, table.createdAt, table.id)],
)

/**
 * One event as it is sent to endpoints: the body is stored as the exact text that is signed, so
 * every attempt, retry and manual resend carries the same bytes. Its id is the event's id, sent as
 * `webhook-id`.
 */
export const webhookMessages = pgTable(
  'webhook_messages',
  {
    id: text().primaryKey(),
    orgId: text()
      .notNull()
      .references(() => orgs.id, { onDelete: 'cascade' }),
    eventType: text().notNull(),
    body: text().notNull(),
    createdAt: timestamp({ withTimezone: true }).notNull().defaultNow(),
  },
  (table) => [index('webhook_messages_created_idx').on(table.createdAt)],
)

export const webhookDeliveryStatus = pgEnum('webhook_delivery_status', ['pending', 'succeeded', 'failed'])

/**
 * One message for one endpoint. `seq` is the order deliveries were created in, which is the order
 * their events were committed: an endpoint receives its due deliveries in that order.
 */
export const webhookDeliveries = pgTable(
  'webhook_deliveries',
  {
    id: text().primaryKey(),
    seq: bigint({ mode: 'number' }).notNull().generatedAlwaysAsIdentity(),
    messageId: text()
      .notNull()
      .references(() => webhookMessages.id, { onDelete: 'cascade' }),
    endpointId: text()
      .notNull()
      .references(() => webhookEndpoints.id, { onDelete: 'cascade' }),
    status: webhookDeliveryStatus().notNull().default('pending'),
    attempts: integer().notNull().default(0),
    // Position in the retry schedule; a retry by hand starts the schedule over.
    scheduleStep: integer().notNull().default(0),
    nextAttemptAt: timestamp({ withTimezone: true }),
    createdAt: timestamp({ withTimezone: true }).notNull().defaultNow(),
    updatedAt: timestamp({ withTimezone: true }).notNull().defaultNow(),
  },
  (table) => [
    uniqueIndex('webhook_deliveries_endpoint_message_key').on(table.endpointId, table.messageId),
    // A drain reads an endpoint's pending deliveries in seq order and keeps those that are due.
    index('webhook_deliveries_pending_idx')
      .on(table.endpointId, table.seq)
      .where(sql`${table.status} = 'pending'`),
    index('webhook_deliveries_message_idx').on(table.messageId),
  ],
)

/** The delivery log: one row per HTTP attempt, as the endpoint's owners see it. */
export const webhookDeliveryAttempts = pgTable(
  'webhook_delivery_attempts',
  {
    id: text().primaryKey(),
    deliveryId: text()
      .notNull()
      .references(() => webhookDeliveries.id, { onDelete: 'cascade' }),
    endpointId: text()
      .notNull()
      .references(() => webhookEndpoints.id, { onDelete: 'cascade' }),
    attempt: integer().notNull(),
    attemptedAt: timestamp({ withTimezone: true }).notNull(),
    succeeded: boolean().notNull(),
    // Null when no response arrived (timeout, refused connection, refused target).
    statusCode: integer(),
    latencyMs: integer().notNull(),
    responseBody: text(),
    error: text(),
    nextRetryAt: timestamp({ withTimezone: true }),
  },
  (table) => [
    index('webhook_delivery_attempts_endpoint_idx').on(table.endpointId, table.attemptedAt, table.id),
    index('webhook_delivery_attempts_delivery_idx').on(table.deliveryId),
  ],
)
