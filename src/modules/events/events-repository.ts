import { asc, inArray, isNull } from 'drizzle-orm'
import type { Executor } from '../../db/client.js'
import { outboxEvents } from '../../db/schema/index.js'

export type OutboxRow = typeof outboxEvents.$inferSelect

/** The only code that touches the outbox table. */
export function createEventsRepository(db: Executor) {
  return {
    async insert(values: typeof outboxEvents.$inferInsert, tx: Executor = db) {
      await tx.insert(outboxEvents).values(values)
    },

    /**
     * The oldest events not yet handed on, locked for this transaction. Another dispatcher skips
     * them rather than waiting, and takes the next ones.
     */
    async lockPending(limit: number, tx: Executor): Promise<OutboxRow[]> {
      return tx
        .select()
        .from(outboxEvents)
        .where(isNull(outboxEvents.dispatchedAt))
        .orderBy(asc(outboxEvents.seq))
        .limit(limit)
        .for('update', { skipLocked: true })
    },

    async markDispatched(seqs: number[], tx: Executor): Promise<void> {
      if (seqs.length === 0) return
      await tx.update(outboxEvents).set({ dispatchedAt: new Date() }).where(inArray(outboxEvents.seq, seqs))
    },
  }
}

export type EventsRepository = ReturnType<typeof createEventsRepository>
