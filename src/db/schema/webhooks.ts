import { index, integer, jsonb, pgEnum, pgTable, text, timestamp, uniqueIndex } from 'drizzle-orm/pg-core'

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
