import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import type { NotificationHandlers } from '../db/client.js'
import { createEventsRepository } from '../modules/events/events-repository.js'
import { createOutbox, type Outbox } from '../modules/events/events-service.js'

/** Announced by a trigger (migration 0008) when outbox rows are committed. */
const OUTBOX_CHANNEL = 'backplane_outbox'

declare module 'fastify' {
  interface FastifyInstance {
    /** Where modules record domain events, inside the transaction of the change. */
    outbox: Outbox & {
      /** Called after events are committed, by any process on this database; stop with the returned function. */
      watch(handlers: NotificationHandlers): Promise<() => Promise<void>>
    }
  }
}

async function outboxPlugin(app: FastifyInstance) {
  const outbox = createOutbox(app.db, createEventsRepository(app.db))
  app.decorate('outbox', {
    ...outbox,
    watch: (handlers: NotificationHandlers) => app.database.listen(OUTBOX_CHANNEL, handlers),
  })
}

export default fp(outboxPlugin, { name: 'outbox', fastify: '5.x', dependencies: ['db'] })
