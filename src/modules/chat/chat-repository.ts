import { and, asc, desc, eq, gt, gte, inArray, lt, or, sql } from 'drizzle-orm'
import type { Executor } from '../../db/client.js'
import { resultRows } from '../../db/results.js'
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

/** Who asks to start a turn in which conversation. */
export interface TurnContextRequest {
  id: string
  userId: string
  orgIds: string[]
}

interface TurnContextRow {
  i: number | string
  id: string
  org_id: string
  project_id: string | null
  created_by: string
  title: string
  model: string | null
  created_at: Date | string
  updated_at: Date | string
  streaming: TurnContext['streaming'] | string | null
  history: TurnContext['history'] | string | null
  tokens_today: string | number | null
}

/** A json column: parsed by the pg driver, and by PGlite too, but a string is accepted as well. */
const parsedJson = <T>(value: T | string | null): T | null =>
  typeof value === 'string' ? (JSON.parse(value) as T) : value

/** What starting a turn needs to know about the conversation, read in one round trip. */
export interface TurnContext {
  conversation: ConversationRow
  /** The answer being generated, if one is; `abandoned` when its process stopped renewing it. */
  streaming: { id: string; model: string | null; abandoned: boolean } | null
  /** The latest turns with text, oldest first. */
  history: { role: 'user' | 'assistant'; content: string }[]
  /** Tokens the conversation's org used since UTC midnight, when asked for (a daily budget is set). */
  tokensToday: number | null
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
     * For each request: the caller's conversation, whether an answer is streaming in it, and its
     * latest `historyTurns` turns with text; null where the conversation is not the caller's. One
     * statement for any number of requests (messages sent at the same moment share it).
     */
    async turnContexts(
      requests: TurnContextRequest[],
      options: { staleMs: number; historyTurns: number; countTokensToday: boolean },
      tx: Executor = db,
    ): Promise<(TurnContext | null)[]> {
      const result = await tx.execute(sql`
        select q.i, c.id, c.org_id, c.project_id, c.created_by, c.title, c.model, c.created_at, c.updated_at,
          case when ${options.countTokensToday}::boolean then
            (select coalesce(sum(u.input_tokens + u.output_tokens), 0)
               from chat_usage u
              where u.org_id = c.org_id
                and u.created_at >= date_trunc('day', now() at time zone 'UTC') at time zone 'UTC')
          end as tokens_today,
          (select json_build_object(
                    'id', m.id,
                    'model', m.model,
                    'abandoned', m.heartbeat_at < now() - ${options.staleMs}::integer * interval '1 millisecond')
             from chat_messages m
            where m.conversation_id = c.id and m.status = 'streaming'
            limit 1) as streaming,
          (select json_agg(json_build_object('role', t.role, 'content', t.content) order by t.created_at, t.id)
             from (select h.role, h.content, h.created_at, h.id
                     from chat_messages h
                    where h.conversation_id = c.id and h.content <> ''
                    order by h.created_at desc, h.id desc
                    limit ${options.historyTurns}::integer) t) as history
        from jsonb_to_recordset(${JSON.stringify(
          requests.map((request, i) => ({ i, id: request.id, user_id: request.userId, org_ids: request.orgIds })),
        )}::jsonb) as q(i int, id text, user_id text, org_ids jsonb)
        join conversations c
          on c.id = q.id and c.created_by = q.user_id and c.org_id in (select jsonb_array_elements_text(q.org_ids))
      `)
      const found = new Map(resultRows<TurnContextRow>(result).map((row) => [Number(row.i), row]))
      return requests.map((_, i) => {
        const row = found.get(i)
        if (!row) return null
        return {
          conversation: {
            id: row.id,
            orgId: row.org_id,
            projectId: row.project_id,
            createdBy: row.created_by,
            title: row.title,
            model: row.model,
            createdAt: new Date(row.created_at),
            updatedAt: new Date(row.updated_at),
          },
          streaming: parsedJson(row.streaming),
          history: parsedJson(row.history) ?? [],
          tokensToday: row.tokens_today === null ? null : Number(row.tokens_today),
        }
      })
    },

    /**
     * Stores each turn's user message and its assistant message, streaming, and makes the
     * conversation the latest: one statement for any number of turns. False for a turn whose
     * conversation has an answer streaming already (a unique index admits one per conversation,
     * so of two turns started at once, in one statement or two, one loses).
     */
    async startTurns(turns: NewTurn[], tx: Executor = db): Promise<boolean[]> {
      const result = await tx.execute(sql`
        with turn as (
          select * from jsonb_to_recordset(${JSON.stringify(
            turns.map((turn, i) => ({
              i,
              conversation_id: turn.conversationId,
              user_message_id: turn.userMessageId,
              assistant_message_id: turn.assistantMessageId,
              content: turn.content,
              model: turn.model,
              title: turn.title,
            })),
          )}::jsonb) as t(i int, conversation_id text, user_message_id text, assistant_message_id text,
                          content text, model text, title text)
        ), answer as (
          insert into chat_messages (id, conversation_id, role, content, status, model, heartbeat_at, created_at)
          -- After the user's message, even within the same microsecond.
          select assistant_message_id, conversation_id, 'assistant', '', 'streaming', model,
                 now(), now() + interval '1 microsecond'
          from turn
          on conflict (conversation_id) where status = 'streaming' do nothing
          returning id
        ), started as (
          select turn.* from turn join answer on answer.id = turn.assistant_message_id
        ), question as (
          insert into chat_messages (id, conversation_id, role, content, status)
          select user_message_id, conversation_id, 'user', content, 'complete' from started
        ), touched as (
          update conversations c
          set updated_at = now(), title = case when c.title = '' then started.title else c.title end
          from started
          where c.id = started.conversation_id
        )
        select i from started
      `)
      const started = new Set(resultRows<{ i: number }>(result).map((row) => Number(row.i)))
      return turns.map((_, i) => started.has(i))
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
