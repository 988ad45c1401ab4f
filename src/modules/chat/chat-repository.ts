import { and, asc, desc, eq, gt, gte, inArray, lt, or, sql } from 'drizzle-orm'
import type { Database, Executor } from '../../db/client.js'
import { chatMessageEvents, chatMessages, chatUsage, conversations } from '../../db/schema/index.js'
import type { Cursor } from '../../lib/cursor.js'

/** Where stop requests for generations are announced to every instance. */
export const STOP_CHANNEL = 'backplane_chat_stop'

export type UsageRow = typeof chatUsage.$inferInsert
export type ConversationRow = typeof conversations.$inferSelect
export type MessageRow = typeof chatMessages.$inferSelect
export type MessageStatus = MessageRow['status']

/** One stream event of an answer: its number within the message and its JSON. */
export interface LoggedEvent {
  messageId: string
  seq: number
  data: string
}

/** Consecutive events of one answer, `seq` to `lastSeq`, written as one row: their JSON, one per line. */
export interface EventBatch {
  messageId: string
  seq: number
  lastSeq: number
  data: string
}

/** Everything the end of an answer writes: its last events, the message's final state, its usage. */
export interface AnswerEnding {
  events: EventBatch
  message: {
    id: string
    status: Exclude<MessageStatus, 'streaming'>
    content: string
    model: string | null
    errorCode: string | null
  }
  usage: UsageRow | null
}

/** A new turn of a conversation: the user's message and the assistant's answer, streaming. */
export interface NewTurn {
  conversationId: string
  userMessageId: string
  assistantMessageId: string
  content: string
  model: string
  /** The conversation's title if it has none yet. */
  title: string
}

/** What starting a turn needs to know about the conversation, read in one round trip. */
export interface TurnContext {
  conversation: ConversationRow
  /** The answer being generated, if one is; `abandoned` when its process stopped renewing it. */
  streaming: { id: string; abandoned: boolean } | null
  /** The latest turns with text, oldest first. */
  history: { role: 'user' | 'assistant'; content: string }[]
}

const rowsOf = <T>(result: unknown): T[] =>
  (Array.isArray(result) ? result : ((result as { rows?: unknown[] }).rows ?? [])) as T[]

/** The only code that touches the chat tables. */
export function createChatRepository(db: Database) {
  // Prepared once: it runs for every message sent, and building it from scratch costs more than
  // the database takes to run it. The subqueries name the outer table in full, since Drizzle
  // leaves a single table's columns unqualified.
  const turnContext = db
    .select({
      conversation: conversations,
      streaming: sql<TurnContext['streaming']>`(
        select json_build_object(
          'id', m.id,
          'abandoned', m.heartbeat_at < now() - ${sql.placeholder('staleMs')}::integer * interval '1 millisecond')
        from chat_messages m
        where m.conversation_id = conversations.id and m.status = 'streaming'
        limit 1)`,
      history: sql<TurnContext['history'] | null>`(
        select json_agg(json_build_object('role', t.role, 'content', t.content) order by t.created_at, t.id)
        from (
          select h.role, h.content, h.created_at, h.id
          from chat_messages h
          where h.conversation_id = conversations.id and h.content <> ''
          order by h.created_at desc, h.id desc
          limit ${sql.placeholder('historyTurns')}::integer
        ) t)`,
    })
    .from(conversations)
    .where(
      and(
        eq(conversations.id, sql.placeholder('id')),
        eq(conversations.createdBy, sql.placeholder('userId')),
        sql`${conversations.orgId} = any(${sql.placeholder('orgIds')})`,
      ),
    )
    .prepare('chat_turn_context')

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
     * The caller's conversation, whether an answer is streaming in it, and its latest
     * `historyTurns` turns with text, in one round trip; null when the conversation is not theirs.
     */
    async turnContext(
      id: string,
      userId: string,
      orgIds: string[],
      options: { staleMs: number; historyTurns: number },
    ): Promise<TurnContext | null> {
      if (orgIds.length === 0) return null
      const [row] = await turnContext.execute({ id, userId, orgIds, ...options })
      if (!row) return null
      return { conversation: row.conversation, streaming: row.streaming ?? null, history: row.history ?? [] }
    },

    /**
     * Stores the user's message and the assistant's, streaming, and makes the conversation the
     * latest, in one statement. False when an answer is streaming in the conversation already
     * (a unique index admits one per conversation, so of two turns started at once one loses).
     */
    async startTurn(turn: NewTurn, tx: Executor = db): Promise<boolean> {
      const result = await tx.execute(sql`
        with answer as (
          insert into chat_messages (id, conversation_id, role, content, status, model, heartbeat_at, created_at)
          -- After the user's message, even within the same microsecond.
          values (${turn.assistantMessageId}, ${turn.conversationId}, 'assistant', '', 'streaming', ${turn.model},
                  now(), now() + interval '1 microsecond')
          on conflict (conversation_id) where status = 'streaming' do nothing
          returning conversation_id
        ), question as (
          insert into chat_messages (id, conversation_id, role, content, status)
          select ${turn.userMessageId}, conversation_id, 'user', ${turn.content}, 'complete' from answer
        )
        update conversations
        set updated_at = now(), title = case when title = '' then ${turn.title} else title end
        where id = (select conversation_id from answer)
        returning id
      `)
      return rowsOf(result).length > 0
    },

    /**
     * Appends batches of events and renews the heartbeat of `streamingIds`, in one statement,
     * whatever their number. A message deleted meanwhile (its conversation was) is skipped.
     */
    async writeLog(batches: EventBatch[], streamingIds: string[], tx: Executor = db): Promise<void> {
      if (batches.length === 0 && streamingIds.length === 0) return
      await tx.execute(sql`
        with logged as (
          insert into chat_message_events (message_id, seq, last_seq, data)
          select b.message_id, b.seq, b.last_seq, b.data
          from jsonb_to_recordset(${JSON.stringify(batches.map(batchRecord))}::jsonb)
            as b(message_id text, seq int, last_seq int, data text)
          where exists (select 1 from chat_messages m where m.id = b.message_id)
          on conflict do nothing
        )
        update chat_messages set heartbeat_at = now()
        where id in (select jsonb_array_elements_text(${JSON.stringify(streamingIds)}::jsonb)) and status = 'streaming'
      `)
    },

    /**
     * Ends answers in one statement: their last events, their messages' final state (only if
     * still streaming) and their usage (once per answer, also when the message was deleted).
     */
    async endAnswers(endings: AnswerEnding[], tx: Executor = db): Promise<void> {
      if (endings.length === 0) return
      const usage = endings.flatMap((ending) => (ending.usage ? [ending.usage] : []))
      await tx.execute(sql`
        with logged as (
          insert into chat_message_events (message_id, seq, last_seq, data)
          select b.message_id, b.seq, b.last_seq, b.data
          from jsonb_to_recordset(${JSON.stringify(endings.map((ending) => batchRecord(ending.events)))}::jsonb)
            as b(message_id text, seq int, last_seq int, data text)
          where exists (select 1 from chat_messages m where m.id = b.message_id)
          on conflict do nothing
        ), finished as (
          update chat_messages m
          set status = f.status::message_status, content = f.content, model = f.model, error_code = f.error_code,
              heartbeat_at = null, updated_at = now()
          from jsonb_to_recordset(${JSON.stringify(
            endings.map(({ message }) => ({
              id: message.id,
              status: message.status,
              content: message.content,
              model: message.model,
              error_code: message.errorCode,
            })),
          )}::jsonb) as f(id text, status text, content text, model text, error_code text)
          where m.id = f.id and m.status = 'streaming'
        )
        insert into chat_usage
          (id, org_id, user_id, conversation_id, provider, model, input_tokens, output_tokens, estimated, status)
        select u.id, u.org_id, u.user_id, u.conversation_id, u.provider, u.model, u.input_tokens, u.output_tokens,
               u.estimated, u.status::chat_message_status
        from jsonb_to_recordset(${JSON.stringify(
          usage.map((row) => ({
            id: row.id,
            org_id: row.orgId,
            user_id: row.userId,
            conversation_id: row.conversationId ?? null,
            provider: row.provider,
            model: row.model,
            input_tokens: row.inputTokens,
            output_tokens: row.outputTokens,
            estimated: row.estimated,
            status: row.status,
          })),
        )}::jsonb) as u(id text, org_id text, user_id text, conversation_id text, provider text, model text,
                       input_tokens int, output_tokens int, estimated boolean, status text)
        on conflict do nothing
      `)
    },

    /**
     * The logged events after `afterSeq`, in order, from at most `rows` rows; `more` when there
     * may be further rows.
     */
    async events(
      messageId: string,
      afterSeq: number,
      rows = 200,
      tx: Executor = db,
    ): Promise<{ events: LoggedEvent[]; more: boolean }> {
      const found = await tx
        .select({ seq: chatMessageEvents.seq, data: chatMessageEvents.data })
        .from(chatMessageEvents)
        .where(and(eq(chatMessageEvents.messageId, messageId), gt(chatMessageEvents.lastSeq, afterSeq)))
        .orderBy(asc(chatMessageEvents.seq))
        .limit(rows)
      const events: LoggedEvent[] = []
      for (const row of found) {
        row.data.split('\n').forEach((data, i) => {
          if (row.seq + i > afterSeq) events.push({ messageId, seq: row.seq + i, data })
        })
      }
      return { events, more: found.length === rows }
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

const batchRecord = (batch: EventBatch) => ({
  message_id: batch.messageId,
  seq: batch.seq,
  last_seq: batch.lastSeq,
  data: batch.data,
})

export type ChatRepository = ReturnType<typeof createChatRepository>
