import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import Stripe from 'stripe'
import { billingPlans, type Config } from '../../config.js'
import { createBillingRepository } from './billing-repository.js'
import { billingRoutes } from './billing-routes.js'
import { type Billing, type BillingService, createBillingService, SUBSCRIPTION_EVENTS } from './billing-service.js'

declare module 'fastify' {
  interface FastifyInstance {
    /** Plans and their limits, for the modules that own what is limited. */
    billing: Billing
    billingService: BillingService
  }
}

/** Stripe's SDK, pointed at STRIPE_API_URL when set; its own retries are off (the policy retries). */
function stripeClient(config: Config): Stripe | null {
  if (!config.STRIPE_SECRET_KEY) return null
  const api = config.STRIPE_API_URL ? new URL(config.STRIPE_API_URL) : undefined
  return new Stripe(config.STRIPE_SECRET_KEY, {
    maxNetworkRetries: 0,
    ...(api
      ? {
          host: api.hostname,
          port: Number(api.port || (api.protocol === 'https:' ? 443 : 80)),
          protocol: api.protocol === 'http:' ? 'http' : 'https',
        }
      : {}),
  })
}

/**
 * Plans and limits, registered before the modules that enforce them (orgs: seats; projects;
 * chat: tokens per day). Routes and the Stripe webhook handlers come later, in billingModule.
 */
async function billingPlugin(app: FastifyInstance, { config }: { config: Config }) {
  const service = createBillingService({
    repository: createBillingRepository(app.db),
    plans: billingPlans(config),
    freePlanId: config.BILLING_FREE_PLAN,
    stripe: stripeClient(config),
    policy: app.integrations.policy('stripe'),
    returnUrl: config.BILLING_RETURN_URL ?? config.PUBLIC_URL,
    log: app.log.child({ module: 'billing' }),
  })
  app.decorate('billing', service.billing)
  app.decorate('billingService', service)
}

export const billingLimitsPlugin = fp(billingPlugin, {
  name: 'billing',
  fastify: '5.x',
  dependencies: ['db', 'integrations'],
})

/** Billing routes under /api/v1, and the Stripe events that change subscriptions. */
export async function billingModule(app: FastifyInstance) {
  for (const type of SUBSCRIPTION_EVENTS) {
    app.webhookHandlers.register('stripe', type, (event, tx) => app.billingService.syncFromEvent(event, tx))
  }
  await app.register(billingRoutes(app.billingService), { prefix: '/api/v1' })
}
