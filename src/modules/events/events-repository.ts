import { asc, inArray, isNull, sql } from 'drizzle-orm'
import type { Executor } from '../../db/client.js'
import { outboxEvents } from '../../db/schema/index.js'

export type OutboxRow = typeof outboxEvents.$inferSelect

/** Advisory lock key of outbox dispatch ("outbox" in ASCII). */
const DISPATCH_LOCK = 0x6f7574626f78

/** The only code that touches the outbox table. */
export function createEventsRepository(db: Executor) {
  return {
    async insert(values: typeof outboxEvents.$inferInsert, tx: Executor = db) {
      await tx.insert(outboxEvents).values(values)
    },

    /**
     * The oldest events not yet handed on. Dispatchers take turns (a transaction-scoped advisory
     * lock): two running side by side would each hand on a part, and the later events of one could
     * reach a consumer before the earlier events of the other.
     */
    async lockPending(limit: number, tx: Executor): Promise<OutboxRow[]> {
      await tx.execute(sql`select pg_advisory_xact_lock(${DISPATCH_LOCK}::bigint)`)
      return tx
        .select()
        .from(outboxEvents)
        .where(isNull(outboxEvents.dispatchedAt))
        .orderBy(asc(outboxEvents.seq))
        .limit(limit)
    },

    async markDispatched(seqs: number[], tx: Executor): Promise<void> {
      if (seqs.length === 0) return
      await tx.update(outboxEvents).set({ dispatchedAt: new Date() }).where(inArray(outboxEvents.seq, seqs))
    },
  }
}

export type EventsRepository = ReturnType<typeof createEventsRepository>
