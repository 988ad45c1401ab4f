import type { Executor } from '../../db/client.js'
import { newId } from '../../lib/ids.js'
import type { EventsRepository } from './events-repository.js'

/** A fact about a change, as modules report it. */
export interface DomainEvent<Data = unknown> {
  /** `<subject>.<past-tense verb>`, e.g. `project.updated`. */
  type: string
  orgId: string
  subject: { type: string; id: string }
  /** The subject after the change (for a deletion: as it was when deleted). */
  data: Data
}

/** An event as it was committed, in the envelope every consumer sends on: `{id, type, timestamp, orgId, data}`. */
export interface CommittedEvent {
  id: string
  type: string
  timestamp: string
  orgId: string
  data: unknown
}

/** Where an outbox reader hands events on, inside the transaction that marks them dispatched. */
export type EventConsumer = (events: CommittedEvent[], tx: Executor) => Promise<void>

/**
 * The transactional outbox. `record` must be given the transaction of the change it describes:
 * the event then commits or rolls back with it, so no event is ever lost or invented.
 */
export interface Outbox {
  record(event: DomainEvent, tx: Executor): Promise<{ id: string }>
  /**
   * Hands up to `limit` undispatched events, oldest first, to `consume` and marks them dispatched
   * in the same transaction: an event is handed on exactly once however many processes dispatch
   * concurrently, and again if `consume` throws. Returns how many were handed on.
   */
  dispatch(consume: EventConsumer, limit: number): Promise<number>
}

export function createOutbox(db: Executor, repository: EventsRepository): Outbox {
  return {
    async record(event, tx) {
      const id = newId('evt')
      await repository.insert(
        {
          id,
          type: event.type,
          orgId: event.orgId,
          subjectType: event.subject.type,
          subjectId: event.subject.id,
          // Stored as JSON.stringify renders it (Dates as ISO strings), as the API shows it.
          data: event.data,
        },
        tx,
      )
      return { id }
    },

    async dispatch(consume, limit) {
      return db.transaction(async (tx) => {
        const rows = await repository.lockPending(limit, tx)
        if (rows.length === 0) return 0
        await consume(
          rows.map((row) => ({
            id: row.id,
            type: row.type,
            timestamp: row.occurredAt.toISOString(),
            orgId: row.orgId,
            data: row.data,
          })),
          tx,
        )
        await repository.markDispatched(
          rows.map((row) => row.seq),
          tx,
        )
        return rows.length
      })
    },
  }
}
