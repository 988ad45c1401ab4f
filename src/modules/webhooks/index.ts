import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import type { Config } from '../../config.js'
import { createTargetGuard } from '../../lib/ssrf-guard.js'
import { createEndpointsRepository } from './endpoints-repository.js'
import { endpointsRoutes } from './endpoints-routes.js'
import { createEndpointsService } from './endpoints-service.js'
import { webhooksAdminRoutes } from './webhooks-admin-routes.js'
import { createWebhooksRepository } from './webhooks-repository.js'
import { webhooksReceiveRoutes } from './webhooks-routes.js'
import { createWebhooksService, PROCESS_QUEUE, type WebhookHandlers } from './webhooks-service.js'

declare module 'fastify' {
  interface FastifyInstance {
    /** Register what to do with a provider's inbound event type (e.g. billing: Stripe subscriptions). */
    webhookHandlers: WebhookHandlers
  }
}

/**
 * Inbound webhooks: verified, stored and queued before they are acknowledged, processed by the
 * handlers other modules register. Outbound: the endpoints orgs register to receive events.
 * Wrapped with fastify-plugin so that `webhookHandlers` is
 * visible to the modules registered after it; its routes stay in their own context.
 */
async function webhooksModule(app: FastifyInstance, { config }: { config: Config }) {
  const service = createWebhooksService({
    db: app.db,
    repository: createWebhooksRepository(app.db),
    jobs: app.jobs,
    retryLimit: config.INBOUND_WEBHOOK_RETRY_LIMIT,
    metrics: app.metrics,
  })
  app.decorate('webhookHandlers', service.handlers)
  await app.jobs.define<{ eventId: string }>({
    name: PROCESS_QUEUE,
    retryLimit: config.INBOUND_WEBHOOK_RETRY_LIMIT,
    retryDelaySeconds: config.INBOUND_WEBHOOK_RETRY_DELAY_SECONDS,
    expireInSeconds: config.INBOUND_WEBHOOK_TIMEOUT_SECONDS,
    handler: ({ eventId }, job) => service.process(eventId, job.retryCount),
  })
  await app.register(webhooksReceiveRoutes(service, config), { prefix: '/api/v1' })
  await app.register(
    webhooksAdminRoutes(service, (userId) => app.authService.isPlatformAdmin(userId)),
    { prefix: '/api/v1' },
  )

  // Outbound: every call to a customer's URL goes through the SSRF guard.
  const guard = createTargetGuard({ allowPrivate: config.WEBHOOK_ALLOW_PRIVATE_TARGETS })
  app.addHook('onClose', () => guard.close())
  const endpoints = createEndpointsService({
    db: app.db,
    repository: createEndpointsRepository(app.db),
    cryptoBox: app.cryptoBox,
    guard,
    orgs: app.orgsService,
  })
  await app.register(endpointsRoutes(endpoints), { prefix: '/api/v1' })
}

export default fp(webhooksModule, { name: 'webhooks', fastify: '5.x', dependencies: ['jobs', 'auth', 'crypto'] })
