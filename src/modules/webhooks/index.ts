import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import type { Config } from '../../config.js'
import { durationListMs, durationMs } from '../../lib/duration.js'
import { createTargetGuard } from '../../lib/ssrf-guard.js'
import { createDeliveriesRepository } from './deliveries-repository.js'
import { createDeliveriesService, DELIVER_QUEUE, type DeliveriesService, leaseDuration } from './deliveries-service.js'
import { coalescingRunner } from './dispatcher.js'
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
  const timeoutMs = durationMs(config.WEBHOOK_DELIVERY_TIMEOUT)
  const guard = createTargetGuard({
    allowPrivate: config.WEBHOOK_ALLOW_PRIVATE_TARGETS,
    connectTimeoutMs: timeoutMs,
    headersTimeoutMs: timeoutMs,
    bodyTimeoutMs: timeoutMs,
  })
  app.addHook('onClose', () => guard.close())
  // Set below; the endpoints service only needs it once requests arrive.
  const late: { deliveries?: DeliveriesService } = {}
  const endpoints = createEndpointsService({
    db: app.db,
    repository: createEndpointsRepository(app.db),
    cryptoBox: app.cryptoBox,
    guard,
    orgs: app.orgsService,
    onEnabled: (endpointId) => late.deliveries?.wake(endpointId) ?? Promise.resolve(),
  })
  const delivering = createDeliveriesService({
    db: app.db,
    repository: createDeliveriesRepository(app.db),
    endpoints,
    guard,
    jobs: app.jobs,
    outbox: app.outbox,
    log: app.log.child({ module: 'webhook-deliveries' }),
    metrics: app.metrics,
    settings: {
      scheduleMs: durationListMs(config.WEBHOOK_RETRY_SCHEDULE),
      timeoutMs,
      disableAfterFailingMs: durationMs(config.WEBHOOK_DISABLE_AFTER_FAILING),
    },
  })
  late.deliveries = delivering
  // A drain renews its lease after every batch; a worker that dies is noticed once it runs out.
  const drainSeconds = Math.ceil(leaseDuration(timeoutMs) / 1000)
  await app.jobs.define<{ endpointId: string }>({
    name: DELIVER_QUEUE,
    concurrency: config.WEBHOOK_DELIVERY_CONCURRENCY,
    retryLimit: 5,
    retryDelaySeconds: drainSeconds,
    expireInSeconds: drainSeconds,
    handler: ({ endpointId }) => delivering.drain(endpointId),
  })
  await app.register(endpointsRoutes(endpoints, delivering), { prefix: '/api/v1' })
  // Before anything closes (the HTTP client included): attempts in flight finish, none starts, and
  // what is left stays due for the next worker.
  app.addHook('preClose', async () => delivering.stopDelivering())

  if (app.jobs.working) {
    // Committed events are fanned out as soon as their notification arrives; the sweep catches
    // what a lost notification or a dead worker left behind.
    const dispatcher = coalescingRunner(() => delivering.dispatch(), app.log, 'outbox dispatch')
    const sweeper = coalescingRunner(() => delivering.sweep(), app.log, 'webhook delivery sweep')
    let unwatch: (() => Promise<void>) | undefined
    let timer: NodeJS.Timeout | undefined
    app.addHook('onReady', async () => {
      unwatch = await app.outbox.watch({
        onMessage: () => dispatcher.trigger(),
        onListening: (listening) => {
          if (listening) dispatcher.trigger()
        },
      })
      timer = setInterval(() => {
        dispatcher.trigger()
        sweeper.trigger()
      }, config.JOBS_MAINTENANCE_INTERVAL_SECONDS * 1000)
      timer.unref()
      dispatcher.trigger()
      sweeper.trigger()
    })
    app.addHook('onClose', async () => {
      clearInterval(timer)
      await unwatch?.()
      await Promise.all([dispatcher.stop(), sweeper.stop()])
    })
  }
}

export default fp(webhooksModule, {
  name: 'webhooks',
  fastify: '5.x',
  dependencies: ['jobs', 'auth', 'crypto', 'outbox'],
})
