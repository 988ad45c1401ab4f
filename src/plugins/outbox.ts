import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { createEventsRepository } from '../modules/events/events-repository.js'
import { createOutbox, type Outbox } from '../modules/events/events-service.js'

declare module 'fastify' {
  interface FastifyInstance {
    /** Where modules record domain events, inside the transaction of the change. */
    outbox: Outbox
  }
}

async function outboxPlugin(app: FastifyInstance) {
  app.decorate('outbox', createOutbox(createEventsRepository(app.db)))
}

export default fp(outboxPlugin, { name: 'outbox', fastify: '5.x', dependencies: ['db'] })
