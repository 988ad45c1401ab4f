import { and, asc, eq, gte, lt, sql } from 'drizzle-orm'
import type { Executor } from '../../db/client.js'
import { chatUsage } from '../../db/schema/index.js'

export type UsageRow = typeof chatUsage.$inferInsert

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
  }
}

export type ChatRepository = ReturnType<typeof createChatRepository>
