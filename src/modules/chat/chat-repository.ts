import { and, asc, desc, eq, gt, gte, inArray, lt, or, sql } from 'drizzle-orm'
import type { Executor } from '../../db/client.js'
import { chatMessageEvents, chatMessages, chatUsage, conversations } from '../../db/schema/index.js'
import type { Cursor } from '../../lib/cursor.js'

/** Where stop requests for generations are announced to every instance. */
export const STOP_CHANNEL = 'backplane_chat_stop'

export type UsageRow = typeof chatUsage.$inferInsert
export type ConversationRow = typeof conversations.$inferSelect
export type MessageRow = typeof chatMessages.$inferSelect
export type MessageStatus = MessageRow['status']

/** One stream event as the log keeps it: its number within the message and its JSON. */
export interface LoggedEvent {
  messageId: string
  seq: number
  data: string
}

/** The only code that touches the chat tables. */
export function createChatRepository(db: Executor) {
  return {
    /** Once per answer: the id is the answer's message id, so a second write of it changes nothing. */
    async recordUsage(row: UsageRow, tx: Executor = db): Promise<void> {
      await tx.insert(chatUsage).values(row).onConflictDoNothing()
    },

    /** Tokens the org has used since the start of the current UTC day. */
    async tokensToday(orgId: string, tx: Executor = db): Promise<number> {
      const [row] = await tx
        .select({ total: sql<string>`coalesce(sum(${chatUsage.inputTokens} + ${chatUsage.outputTokens}), 0)` })
        .from(chatUsage)
        .where(
          and(
            eq(chatUsage.orgId, orgId),
            gte(chatUsage.createdAt, sql`date_trunc('day', now() at time zone 'UTC') at time zone 'UTC'`),
          ),
        )
      return Number(row?.total ?? 0)
    },

    /** Usage per UTC day and model within [from, to). */
    async usageByDay(orgId: string, from: Date, to: Date, tx: Executor = db) {
      const day = sql<string>`to_char(${chatUsage.createdAt} at time zone 'UTC', 'YYYY-MM-DD')`
      return tx
        .select({
          day,
          model: chatUsage.model,
          requests: sql<number>`count(*)::int`,
          inputTokens: sql<number>`sum(${chatUsage.inputTokens})::int`,
          outputTokens: sql<number>`sum(${chatUsage.outputTokens})::int`,
        })
        .from(chatUsage)
        .where(and(eq(chatUsage.orgId, orgId), gte(chatUsage.createdAt, from), lt(chatUsage.createdAt, to)))
        .groupBy(day, chatUsage.model)
        .orderBy(asc(day), asc(chatUsage.model))
    },

    async createConversation(values: typeof conversations.$inferInsert, tx: Executor = db): Promise<ConversationRow> {
      const [row] = await tx.insert(conversations).values(values).returning()
      return row as ConversationRow
    },

    /** A conversation of this user in one of these orgs; anyone else's does not exist for them. */
    async findConversation(id: string, userId: string, orgIds: string[], tx: Executor = db) {
      if (orgIds.length === 0) return null
      const [row] = await tx
        .select()
        .from(conversations)
        .where(and(eq(conversations.id, id), eq(conversations.createdBy, userId), inArray(conversations.orgId, orgIds)))
      return row ?? null
    },

    /** The user's conversations, most recently active first; (updatedAt, id) is the keyset. */
    async listConversations(userId: string, orgIds: string[], limit: number, before: Cursor | null, tx: Executor = db) {
      if (orgIds.length === 0) return []
      const keyset = before
        ? or(
            lt(conversations.updatedAt, sql`${before.k}::timestamptz`),
            and(eq(conversations.updatedAt, sql`${before.k}::timestamptz`), lt(conversations.id, before.id)),
          )
        : undefined
      return tx
        .select({ conversation: conversations, sortKey: sql<string>`${conversations.updatedAt}::text` })
        .from(conversations)
        .where(and(eq(conversations.createdBy, userId), inArray(conversations.orgId, orgIds), keyset))
        .orderBy(desc(conversations.updatedAt), desc(conversations.id))
        .limit(limit)
    },

    async deleteConversation(id: string, tx: Executor = db): Promise<void> {
      await tx.delete(conversations).where(eq(conversations.id, id))
    },

    /** The latest `limit` messages, oldest first. */
    async messages(conversationId: string, limit: number, tx: Executor = db): Promise<MessageRow[]> {
      const rows = await tx
        .select()
        .from(chatMessages)
        .where(eq(chatMessages.conversationId, conversationId))
        .orderBy(desc(chatMessages.createdAt), desc(chatMessages.id))
        .limit(limit)
      return rows.reverse()
    },

    async message(id: string, conversationId: string, tx: Executor = db): Promise<MessageRow | null> {
      const [row] = await tx
        .select()
        .from(chatMessages)
        .where(and(eq(chatMessages.id, id), eq(chatMessages.conversationId, conversationId)))
      return row ?? null
    },

    async latestAssistantMessage(conversationId: string, tx: Executor = db): Promise<MessageRow | null> {
      const [row] = await tx
        .select()
        .from(chatMessages)
        .where(and(eq(chatMessages.conversationId, conversationId), eq(chatMessages.role, 'assistant')))
        .orderBy(desc(chatMessages.createdAt), desc(chatMessages.id))
        .limit(1)
      return row ?? null
    },

    /**
     * The user's message and the assistant's, streaming, in one transaction; the conversation
     * becomes the latest. Under a lock on the conversation: of two turns started at once, the second
     * finds the first's answer streaming and gets false.
     */
    async startTurn(
      conversation: ConversationRow,
      turn: { userMessageId: string; assistantMessageId: string; content: string; model: string },
      tx: Executor,
    ): Promise<boolean> {
      await tx
        .select({ id: conversations.id })
        .from(conversations)
        .where(eq(conversations.id, conversation.id))
        .for('update')
      const [streaming] = await tx
        .select({ id: chatMessages.id })
        .from(chatMessages)
        .where(and(eq(chatMessages.conversationId, conversation.id), eq(chatMessages.status, 'streaming')))
        .limit(1)
      if (streaming) return false
      await tx.insert(chatMessages).values([
        {
          id: turn.userMessageId,
          conversationId: conversation.id,
          role: 'user',
          content: turn.content,
          status: 'complete',
        },
        {
          id: turn.assistantMessageId,
          conversationId: conversation.id,
          role: 'assistant',
          status: 'streaming',
          model: turn.model,
          heartbeatAt: sql`now()`,
          // After the user's message, even within the same microsecond.
          createdAt: sql`now() + interval '1 microsecond'`,
        },
      ])
      await tx
        .update(conversations)
        .set({
          updatedAt: sql`now()`,
          // Cut on whole characters: half an emoji would be stored as U+FFFD.
          ...(conversation.title === '' ? { title: [...turn.content].slice(0, 80).join('') } : {}),
        })
        .where(eq(conversations.id, conversation.id))
      return true
    },

    /** Appends events in one statement with one parameter, whatever their number. */
    async appendEvents(events: LoggedEvent[], tx: Executor = db): Promise<void> {
      if (events.length === 0) return
      await tx.execute(sql`
        insert into chat_message_events (message_id, seq, data)
        select e.message_id, e.seq, e.data
        from jsonb_to_recordset(${JSON.stringify(events.map((event) => ({ message_id: event.messageId, seq: event.seq, data: event.data })))}::jsonb)
          as e(message_id text, seq int, data text)
        -- A message deleted meanwhile (its conversation was) must not fail the others' events.
        where exists (select 1 from chat_messages m where m.id = e.message_id)
        on conflict do nothing
      `)
    },

    async heartbeat(messageIds: string[], tx: Executor = db): Promise<void> {
      if (messageIds.length === 0) return
      await tx
        .update(chatMessages)
        .set({ heartbeatAt: sql`now()` })
        .where(and(inArray(chatMessages.id, messageIds), eq(chatMessages.status, 'streaming')))
    },

    async events(messageId: string, afterSeq: number, limit: number, tx: Executor = db): Promise<LoggedEvent[]> {
      return tx
        .select({ messageId: chatMessageEvents.messageId, seq: chatMessageEvents.seq, data: chatMessageEvents.data })
        .from(chatMessageEvents)
        .where(and(eq(chatMessageEvents.messageId, messageId), gt(chatMessageEvents.seq, afterSeq)))
        .orderBy(asc(chatMessageEvents.seq))
        .limit(limit)
    },

    /** Ends a streaming message; false when it had already ended. */
    async finishMessage(
      id: string,
      values: {
        status: Exclude<MessageStatus, 'streaming'>
        content: string
        model: string | null
        errorCode: string | null
      },
      tx: Executor = db,
    ): Promise<boolean> {
      const rows = await tx
        .update(chatMessages)
        .set({ ...values, heartbeatAt: null, updatedAt: sql`now()` })
        .where(and(eq(chatMessages.id, id), eq(chatMessages.status, 'streaming')))
        .returning({ id: chatMessages.id })
      return rows.length > 0
    },

    /** Announces to every instance that a message's generation is to stop. */
    async notifyStop(messageId: string, tx: Executor = db): Promise<void> {
      await tx.execute(sql`select pg_notify(${STOP_CHANNEL}, ${messageId})`)
    },

    /** Whether a streaming message's process is gone: no heartbeat for `staleMs`. */
    async isAbandoned(id: string, staleMs: number, tx: Executor = db): Promise<boolean> {
      const [row] = await tx
        .select({ id: chatMessages.id })
        .from(chatMessages)
        .where(
          and(
            eq(chatMessages.id, id),
            eq(chatMessages.status, 'streaming'),
            lt(chatMessages.heartbeatAt, sql`now() - ${staleMs} * interval '1 millisecond'`),
          ),
        )
      return row !== undefined
    },
  }
}

export type ChatRepository = ReturnType<typeof createChatRepository>
