import { sql } from 'drizzle-orm'
import { bigint, index, integer, jsonb, pgTable, primaryKey, text, timestamp, uniqueIndex } from 'drizzle-orm/pg-core'

/**
 * Instance-wide facts that must survive restarts and be shared by every process on the same
 * database (for example generated key material). Small, keyed, rarely written.
 */
export const systemSettings = pgTable('system_settings', {
  key: text().primaryKey(),
  value: text().notNull(),
  updatedAt: timestamp({ withTimezone: true }).notNull().defaultNow(),
})

/**
 * The transactional outbox: every domain event is inserted in the same transaction as the change
 * it describes, so an event exists exactly when its change was committed. Delivery (outbound
 * webhooks) reads it in `seq` order and marks what it has handed on.
 */
export const outboxEvents = pgTable(
  'outbox_events',
  {
    seq: bigint({ mode: 'number' }).primaryKey().generatedAlwaysAsIdentity(),
    id: text().notNull(),
    type: text().notNull(),
    orgId: text().notNull(),
    subjectType: text().notNull(),
    subjectId: text().notNull(),
    data: jsonb().notNull(),
    occurredAt: timestamp({ withTimezone: true }).notNull().defaultNow(),
    dispatchedAt: timestamp({ withTimezone: true }),
  },
  (table) => [
    uniqueIndex('outbox_events_id_key').on(table.id),
    index('outbox_events_pending_idx')
      .on(table.seq)
      .where(sql`${table.dispatchedAt} is null`),
    index('outbox_events_subject_idx').on(table.subjectType, table.subjectId),
  ],
)

/**
 * Idempotency keys of mutating requests, per principal and route, kept for 24 h. A row is
 * `running` while its first request executes (under a lease, so a crashed request does not block
 * the key for a day) and `completed` with the response to replay once it finished.
 */
export const idempotencyKeys = pgTable(
  'idempotency_keys',
  {
    principal: text().notNull(),
    route: text().notNull(),
    key: text().notNull(),
    requestHash: text().notNull(),
    state: text({ enum: ['running', 'completed'] }).notNull(),
    leaseExpiresAt: timestamp({ withTimezone: true }).notNull(),
    responseStatus: integer(),
    responseHeaders: jsonb().$type<Record<string, string>>(),
    responseBody: text(),
    createdAt: timestamp({ withTimezone: true }).notNull().defaultNow(),
    expiresAt: timestamp({ withTimezone: true }).notNull(),
  },
  (table) => [
    primaryKey({ columns: [table.principal, table.route, table.key] }),
    index('idempotency_keys_expires_idx').on(table.expiresAt),
  ],
)
