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

/**
 * The transactional outbox. `record` must be given the transaction of the change it describes:
 * the event then commits or rolls back with it, so no event is ever lost or invented.
 */
export interface Outbox {
  record(event: DomainEvent, tx: Executor): Promise<{ id: string }>
}

export function createOutbox(repository: EventsRepository): Outbox {
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
  }
}
