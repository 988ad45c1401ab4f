import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'
import { ProblemResponse } from '../../lib/problem.js'
import { requireAuth, requireUserSession } from '../auth/authorization.js'
import { CheckoutBody, PortalBody, SubscriptionQuery } from './billing-schemas.js'
import type { BillingService } from './billing-service.js'

const ref = (id: string) => Type.Unsafe(Type.Ref(id))
const security = [{ bearer: [] }]
const errors = {
  400: ProblemResponse,
  401: ProblemResponse,
  403: ProblemResponse,
  404: ProblemResponse,
  429: ProblemResponse,
}
const upstream = { 409: ProblemResponse, 502: ProblemResponse, 503: ProblemResponse }

export function billingRoutes(service: BillingService): FastifyPluginAsyncTypebox {
  return async (app) => {
    app.post(
      '/billing/checkout',
      {
        config: { rateLimit: { max: 20, timeWindow: 60_000 } },
        schema: {
          operationId: 'createCheckoutSession',
          tags: ['billing'],
          summary: "Start a Stripe Checkout for a plan (org owners and admins); creates the org's Stripe customer once",
          description:
            'The subscription takes effect when Stripe confirms it by webhook, not when this answers. 409 ALREADY_SUBSCRIBED: change plans in the portal.',
          security,
          body: CheckoutBody,
          response: { 201: ref('CheckoutSession'), ...errors, 422: ProblemResponse, ...upstream },
        },
      },
      async (request, reply) => {
        requireUserSession(request)
        return reply.code(201).send(await service.checkout(requireAuth(request), request.body))
      },
    )

    app.post(
      '/billing/portal',
      {
        config: { rateLimit: { max: 20, timeWindow: 60_000 } },
        schema: {
          operationId: 'createBillingPortalSession',
          tags: ['billing'],
          summary: "A Stripe customer portal session for the org's subscription (org owners and admins)",
          security,
          body: PortalBody,
          response: { 201: ref('PortalSession'), ...errors, ...upstream },
        },
      },
      async (request, reply) => {
        requireUserSession(request)
        return reply.code(201).send(await service.portal(requireAuth(request), request.body))
      },
    )

    app.get(
      '/billing/subscription',
      {
        schema: {
          operationId: 'getSubscription',
          tags: ['billing'],
          summary: "The org's plan, subscription status and period, and its usage against the plan's limits",
          security,
          querystring: SubscriptionQuery,
          response: { 200: ref('Subscription'), ...errors },
        },
      },
      async (request) => service.subscription(requireAuth(request), request.query.orgId),
    )
  }
}
