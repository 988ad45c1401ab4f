import { pgTable, text, timestamp } from 'drizzle-orm/pg-core'

/**
 * Instance-wide facts that must survive restarts and be shared by every process on the same
 * database (for example generated key material). Small, keyed, rarely written.
 */
export const systemSettings = pgTable('system_settings', {
  key: text().primaryKey(),
  value: text().notNull(),
  updatedAt: timestamp({ withTimezone: true }).notNull().defaultNow(),
})
