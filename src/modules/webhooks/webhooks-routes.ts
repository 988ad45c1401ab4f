import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'
import type { Config } from '../../config.js'
import { HttpProblem, ProblemResponse, problems } from '../../lib/problem.js'
import { EventShapeError, SignatureError, verifyStripe } from './stripe.js'
import type { WebhooksService } from './webhooks-service.js'

/** Providers send at most this much; anything larger is not one of their events. */
export const WEBHOOK_BODY_LIMIT = 1024 * 1024

const Received = Type.Object(
  {
    received: Type.Literal(true),
    duplicate: Type.Boolean({ description: 'The event was stored before; it is not processed again' }),
  },
  { $id: 'WebhookReceived', title: 'WebhookReceived' },
)
export const webhookReceiveSchemas = [Received]

const errors = {
  400: ProblemResponse,
  413: ProblemResponse,
  415: ProblemResponse,
  429: ProblemResponse,
  503: ProblemResponse,
}

const invalidSignature = (detail: string) => problems.badRequest('INVALID_SIGNATURE', detail)

export function webhooksReceiveRoutes(service: WebhooksService, config: Config): FastifyPluginAsyncTypebox {
  return async (app) => {
    // Signatures cover the exact bytes sent, so this context keeps bodies raw; no other does.
    app.removeAllContentTypeParsers()
    app.addContentTypeParser('*', { parseAs: 'buffer', bodyLimit: WEBHOOK_BODY_LIMIT }, (_request, body, done) =>
      done(null, body),
    )

    const stripeSecrets = (config.STRIPE_WEBHOOK_SECRET ?? '')
      .split(',')
      .map((secret) => secret.trim())
      .filter((secret) => secret !== '')

    app.post(
      '/webhooks/stripe',
      {
        bodyLimit: WEBHOOK_BODY_LIMIT,
        // Providers deliver in bursts from a few addresses: ten times a client's budget, since a
        // 429 would only delay their retries.
        config: { rateLimit: { max: config.RATE_LIMIT_MAX * 10, timeWindow: config.RATE_LIMIT_WINDOW_MS } },
        schema: {
          operationId: 'receiveStripeEvent',
          tags: ['webhooks'],
          summary: 'Stripe events, verified with the Stripe-Signature header (STRIPE_WEBHOOK_SECRET)',
          description:
            'The event is stored and its processing queued before the 200 is sent; a redelivered event answers 200 ' +
            'with duplicate: true and is not processed twice. A bad or stale signature stores nothing (400).',
          headers: Type.Object({ 'stripe-signature': Type.Optional(Type.String({ maxLength: 4096 })) }),
          response: { 200: Type.Unsafe(Type.Ref('WebhookReceived')), ...errors },
        },
      },
      async (request) => {
        if (stripeSecrets.length === 0) throw problems.notConfigured('Stripe webhooks (STRIPE_WEBHOOK_SECRET)')
        const raw = request.body
        if (!Buffer.isBuffer(raw)) throw invalidSignature('The request has no body to verify.')
        let verified
        try {
          verified = verifyStripe(raw, request.headers['stripe-signature'], stripeSecrets)
        } catch (error) {
          if (error instanceof SignatureError) {
            request.log.info({ reason: error.message }, 'stripe signature refused')
            throw invalidSignature('The Stripe-Signature header does not verify this body.')
          }
          if (error instanceof EventShapeError) throw new HttpProblem(400, 'INVALID_EVENT', error.message)
          throw error
        }
        const { duplicate } = await service.ingest(verified)
        return { received: true as const, duplicate }
      },
    )
  }
}
