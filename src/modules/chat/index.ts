import type { FastifyInstance } from 'fastify'
import type { Config } from '../../config.js'
import { createChatRepository } from './chat-repository.js'
import { chatRoutes } from './chat-routes.js'
import { createChatService } from './chat-service.js'
import { createProviders } from './providers.js'

/** AI answers streamed over SSE from the configured providers, metered per org. */
export async function chatModule(app: FastifyInstance, { config }: { config: Config }) {
  const chat = createChatService({
    repository: createChatRepository(app.db),
    providers: createProviders(config),
    projects: app.projectsService,
    config,
    log: app.log.child({ module: 'chat' }),
  })
  await app.register(chatRoutes(chat, config), { prefix: '/api/v1' })
}
