import type { FastifyInstance } from 'fastify'
import type { Config } from '../../config.js'
import { createChatRepository, STOP_CHANNEL } from './chat-repository.js'
import { chatRoutes } from './chat-routes.js'
import { createChatService } from './chat-service.js'
import { conversationsRoutes } from './conversations-routes.js'
import { createConversationsService } from './conversations-service.js'
import { createLiveAnswers } from './live.js'
import { EMBEDDING_DIMENSIONS } from '../../db/schema/index.js'
import { createDocumentsRepository } from './documents-repository.js'
import { documentsRoutes } from './documents-routes.js'
import { createDocumentsService, EMBED_QUEUE } from './documents-service.js'
import { LRUCache } from 'lru-cache'
import {
  type ChatProvider,
  createEmbedder,
  createProviders,
  type Embedder,
  type ProviderName,
  serverKeys,
} from './providers.js'
import { createStreamingFetch } from './streaming-fetch.js'

/** AI answers streamed over SSE from the configured providers, metered per org; resumable conversations. */
export async function chatModule(app: FastifyInstance, { config }: { config: Config }) {
  const log = app.log.child({ module: 'chat' })
  const repository = createChatRepository(app.db)
  const streamingFetch = createStreamingFetch()
  const policy = (service: ProviderName) => app.integrations.policy(service)
  const serverProviders = createProviders(config, { policy, fetch: streamingFetch.fetch })
  const serverEmbedder = createEmbedder(config, EMBEDDING_DIMENSIONS, { policy: policy('openai') })
  // Clients built for orgs that brought their own keys, rebuilt when a key changes (its version).
  const orgClients = new LRUCache<
    string,
    { version: string; providers: Map<ProviderName, ChatProvider>; embedder: Embedder | null }
  >({ max: 1000 })
  async function clientsFor(orgId: string) {
    const own = await app.orgCredentials.keysFor(orgId)
    if (own.version === '') return null
    const cached = orgClients.get(orgId)
    if (cached?.version === own.version) return cached
    const keys = { ...serverKeys(config), ...own.keys }
    const built = {
      version: own.version,
      providers: createProviders(config, { policy, fetch: streamingFetch.fetch, keys }),
      embedder: createEmbedder(config, EMBEDDING_DIMENSIONS, { policy: policy('openai'), key: keys.openai }),
    }
    orgClients.set(orgId, built)
    return built
  }
  const documents = createDocumentsService({
    db: app.db,
    repository: createDocumentsRepository(app.db),
    embedderFor: async (orgId) => ((await clientsFor(orgId)) ?? { embedder: serverEmbedder }).embedder,
    jobs: app.jobs,
    projects: app.projectsService,
    log,
  })
  const embedRetries = 5
  await app.jobs.define<{ documentId: string }>({
    name: EMBED_QUEUE,
    retryLimit: embedRetries,
    retryDelaySeconds: 10,
    expireInSeconds: 600,
    handler: ({ documentId }, job) => documents.embedJob(documentId, job.retryCount, job.retryCount >= embedRetries),
  })
  const chat = createChatService({
    repository,
    providersFor: async (orgId) => (await clientsFor(orgId))?.providers ?? serverProviders,
    projects: app.projectsService,
    retrieval: documents,
    billing: app.billing,
    config,
    log,
  })
  const live = createLiveAnswers(repository, log)
  const conversations = createConversationsService({
    repository,
    chat,
    live,
    projects: app.projectsService,
    requestStop: (messageId) => repository.notifyStop(messageId),
    countTokensToday: app.billing.limitsTokens,
    config,
    log,
  })
  app.billing.registerUsage('dailyTokens', (orgId, tx) => repository.tokensToday(orgId, tx))
  await app.register(chatRoutes(chat, config), { prefix: '/api/v1' })
  await app.register(conversationsRoutes(conversations, config), { prefix: '/api/v1' })
  await app.register(documentsRoutes(documents), { prefix: '/api/v1' })

  // A stop request may reach any instance; the one generating the answer hears it here.
  let unlisten: (() => Promise<void>) | undefined
  app.addHook('onReady', async () => {
    unlisten = await app.database.listen(STOP_CHANNEL, {
      onMessage: (messageId) => live.get(messageId)?.controller.abort(new Error('stopped by the user')),
      onListening: () => {},
    })
  })
  // Answers in progress end as stopped, and are written, before the database closes.
  app.addHook('preClose', async () => conversations.drain())
  app.addHook('onClose', async () => {
    await unlisten?.()
    await live.close()
    await streamingFetch.close()
  })
}
