import { sql } from 'drizzle-orm'
import { boolean, index, integer, pgEnum, pgTable, primaryKey, text, timestamp, uniqueIndex } from 'drizzle-orm/pg-core'
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

/** A user's conversation with the assistant, in one org, optionally grounded in a project. */
export const conversations = pgTable(
  'conversations',
  {
    id: text().primaryKey(),
    orgId: text()
      .notNull()
      .references(() => orgs.id, { onDelete: 'cascade' }),
    // Without a foreign key: the chat module does not own projects; a deleted project only stops grounding.
    projectId: text(),
    createdBy: text().notNull(),
    title: text().notNull().default(''),
    model: text(),
    createdAt: timestamp({ withTimezone: true }).notNull().defaultNow(),
    updatedAt: timestamp({ withTimezone: true }).notNull().defaultNow(),
  },
  (table) => [index('conversations_owner_idx').on(table.createdBy, table.updatedAt, table.id)],
)

export const messageStatus = pgEnum('message_status', ['streaming', 'complete', 'stopped', 'incomplete', 'error'])

/** The turns of a conversation. An assistant message is `streaming` while its answer is generated. */
export const chatMessages = pgTable(
  'chat_messages',
  {
    id: text().primaryKey(),
    conversationId: text()
      .notNull()
      .references(() => conversations.id, { onDelete: 'cascade' }),
    role: text({ enum: ['user', 'assistant'] }).notNull(),
    content: text().notNull().default(''),
    status: messageStatus().notNull(),
    model: text(),
    errorCode: text(),
    // Renewed while the answer is generated: a streaming message whose heartbeat stopped lost its process.
    heartbeatAt: timestamp({ withTimezone: true }),
    createdAt: timestamp({ withTimezone: true }).notNull().defaultNow(),
    updatedAt: timestamp({ withTimezone: true }).notNull().defaultNow(),
  },
  (table) => [
    index('chat_messages_conversation_idx').on(table.conversationId, table.createdAt, table.id),
    // One answer at a time per conversation: a second turn started at once finds the first here.
    uniqueIndex('chat_messages_one_streaming_idx')
      .on(table.conversationId)
      .where(sql`status = 'streaming'`),
  ],
)

/**
 * Every event of an answer's stream, as its clients received it, written in batches while it is
 * generated and completely when it ends: a client that dropped resumes from here. A row holds the
 * consecutive events `seq` to `lastSeq` that one write took, one JSON per line (JSON text never
 * holds a raw line break): a row per event would be 100,000 rows a second at 2,000 streams.
 */
export const chatMessageEvents = pgTable(
  'chat_message_events',
  {
    messageId: text()
      .notNull()
      .references(() => chatMessages.id, { onDelete: 'cascade' }),
    seq: integer().notNull(),
    lastSeq: integer().notNull(),
    data: text().notNull(),
  },
  (table) => [primaryKey({ columns: [table.messageId, table.seq] })],
)
