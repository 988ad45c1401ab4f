import { boolean, index, integer, pgEnum, pgTable, text, timestamp } from 'drizzle-orm/pg-core'
import { orgs } from './auth.js'

export const chatMessageStatus = pgEnum('chat_message_status', ['complete', 'stopped', 'incomplete', 'error'])

/**
 * Tokens used by each answer, written once when the answer ends however it ended (complete,
 * stopped by the client, cut by the provider, failed): the org's daily budget and the usage report
 * read it. The id is the answer's message id.
 */
export const chatUsage = pgTable(
  'chat_usage',
  {
    id: text().primaryKey(),
    orgId: text()
      .notNull()
      .references(() => orgs.id, { onDelete: 'cascade' }),
    userId: text().notNull(),
    conversationId: text(),
    provider: text().notNull(),
    model: text().notNull(),
    inputTokens: integer().notNull(),
    outputTokens: integer().notNull(),
    // True when the provider never reported usage (the stream was cut or stopped) and it was counted here.
    estimated: boolean().notNull(),
    status: chatMessageStatus().notNull(),
    createdAt: timestamp({ withTimezone: true }).notNull().defaultNow(),
  },
  (table) => [index('chat_usage_org_created_idx').on(table.orgId, table.createdAt)],
)
