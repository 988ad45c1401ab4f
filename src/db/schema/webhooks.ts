import { boolean, index, integer, jsonb, pgEnum, pgTable, text, timestamp, uniqueIndex } from 'drizzle-orm/pg-core'
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
    createdBy: text().notNull(),
    createdAt: timestamp({ withTimezone: true }).notNull().defaultNow(),
    updatedAt: timestamp({ withTimezone: true }).notNull().defaultNow(),
  },
  (table) => [index('webhook_endpoints_org_created_idx').on(table.orgId, table.createdAt, table.id)],
)
