import type { Executor } from '../../db/client.js'
import { outboxEvents } from '../../db/schema/index.js'

export type OutboxRow = typeof outboxEvents.$inferSelect

/** The only code that touches the outbox table. */
export function createEventsRepository(db: Executor) {
  return {
    async insert(values: typeof outboxEvents.$inferInsert, tx: Executor = db) {
      await tx.insert(outboxEvents).values(values)
    },
  }
}

export type EventsRepository = ReturnType<typeof createEventsRepository>
