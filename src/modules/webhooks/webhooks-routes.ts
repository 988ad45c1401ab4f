import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { FastifyRequest } from 'fastify'
import { Type } from 'typebox'
import type { Config } from '../../config.js'
import { HttpProblem, ProblemResponse, problems } from '../../lib/problem.js'
import { verifyMeta, verifyMetaChallenge } from './meta.js'
import { verifyStripe } from './stripe.js'
import { verifyTwilio } from './twilio.js'
import { EventShapeError, secretList, SignatureError } from './verification.js'
import type { VerifiedEvent, WebhooksService } from './webhooks-service.js'

/** Providers send at most this much; anything larger is not one of their events. */
export const WEBHOOK_BODY_LIMIT = 1024 * 1024

const Received = Type.Object(
  {
    received: Type.Literal(true),
    duplicate: Type.Boolean({ description: 'Every event of the delivery was stored before; none is processed again' }),
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

/** Twilio expects TwiML back; an empty response tells it to do nothing more (processing is queued). */
const EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'

export function webhooksReceiveRoutes(service: WebhooksService, config: Config): FastifyPluginAsyncTypebox {
  return async (app) => {
    // Signatures cover the exact bytes sent, so this context keeps bodies raw; no other does.
    app.removeAllContentTypeParsers()
    app.addContentTypeParser('*', { parseAs: 'buffer', bodyLimit: WEBHOOK_BODY_LIMIT }, (_request, body, done) =>
      done(null, body),
    )

    const stripeSecrets = secretList(config.STRIPE_WEBHOOK_SECRET)
    const twilioTokens = secretList(config.TWILIO_AUTH_TOKEN)
    const metaSecrets = secretList(config.META_APP_SECRET)
    const publicUrl = config.PUBLIC_URL

    /**
     * Verification comes first and stores nothing when it fails; the answer is sent only after
     * every event of the delivery is committed with its processing job.
     */
    async function receive(request: FastifyRequest, provider: string, verify: (raw: Buffer) => VerifiedEvent[]) {
      const raw = request.body
      let events: VerifiedEvent[]
      try {
        if (!Buffer.isBuffer(raw)) throw new SignatureError('the request has no body to verify')
        events = verify(raw)
      } catch (error) {
        if (error instanceof SignatureError) {
          service.countRejected(provider)
          request.log.info({ provider, reason: error.message }, 'webhook signature refused')
          throw problems.badRequest(
            'INVALID_SIGNATURE',
            `The ${providerNames[provider]} signature does not verify this request.`,
          )
        }
        if (error instanceof EventShapeError) {
          service.countRejected(provider)
          throw new HttpProblem(400, 'INVALID_EVENT', error.message)
        }
        throw error
      }
      const results = await Promise.all(events.map((event) => service.ingest(event)))
      return { received: true as const, duplicate: results.every((result) => result.duplicate) }
    }

    // Providers deliver in bursts from a few addresses: ten times a client's budget, since a 429
    // would only delay their retries.
    const rateLimit = { max: config.RATE_LIMIT_MAX * 10, timeWindow: config.RATE_LIMIT_WINDOW_MS }

    app.post(
      '/webhooks/stripe',
      {
        bodyLimit: WEBHOOK_BODY_LIMIT,
        config: { rateLimit },
        schema: {
          operationId: 'receiveStripeEvent',
          tags: ['webhooks'],
          summary: 'Stripe events, verified with the Stripe-Signature header (STRIPE_WEBHOOK_SECRET)',
          description:
            'The event is stored and its processing queued before the 200 is sent; a redelivered event answers 200 ' +
            'with duplicate: true and is not processed twice. A bad or stale (over 300 s) signature stores nothing (400).',
          headers: Type.Object({ 'stripe-signature': Type.Optional(Type.String({ maxLength: 4096 })) }),
          response: { 200: Type.Unsafe(Type.Ref('WebhookReceived')), ...errors },
        },
      },
      async (request) => {
        if (stripeSecrets.length === 0) throw problems.notConfigured('Stripe webhooks (STRIPE_WEBHOOK_SECRET)')
        return receive(request, 'stripe', (raw) => [
          verifyStripe(raw, request.headers['stripe-signature'], stripeSecrets),
        ])
      },
    )

    app.post(
      '/webhooks/twilio',
      {
        bodyLimit: WEBHOOK_BODY_LIMIT,
        config: { rateLimit },
        schema: {
          operationId: 'receiveTwilioEvent',
          tags: ['webhooks'],
          summary: 'Twilio messaging and voice callbacks, verified with X-Twilio-Signature (TWILIO_AUTH_TOKEN)',
          description:
            'Form-encoded callbacks are signed over the URL and the sorted parameters; JSON callbacks over the URL, ' +
            'whose bodySHA256 parameter must match the body. The URL is rebuilt from PUBLIC_URL, so configure Twilio ' +
            'with PUBLIC_URL + /api/v1/webhooks/twilio. A message or call is deduplicated on its SID and status. ' +
            'The answer is empty TwiML once the event is stored and queued.',
          headers: Type.Object({ 'x-twilio-signature': Type.Optional(Type.String({ maxLength: 1024 })) }),
          response: {
            200: {
              description: 'Stored and queued (or stored before)',
              content: { 'text/xml': { schema: Type.String() } },
            },
            ...errors,
          },
        },
      },
      async (request, reply) => {
        if (twilioTokens.length === 0) throw problems.notConfigured('Twilio webhooks (TWILIO_AUTH_TOKEN)')
        await receive(request, 'twilio', (raw) => [
          verifyTwilio({
            rawBody: raw,
            contentType: request.headers['content-type'],
            // What Twilio requested, whatever host and scheme a proxy forwarded to us.
            url: `${publicUrl}${request.url}`,
            signature: request.headers['x-twilio-signature'],
            authTokens: twilioTokens,
          }),
        ])
        return reply.type('text/xml; charset=utf-8').send(EMPTY_TWIML)
      },
    )

    app.get(
      '/webhooks/meta',
      {
        config: { rateLimit },
        schema: {
          operationId: 'verifyMetaSubscription',
          tags: ['webhooks'],
          summary: 'Meta (WhatsApp, Messenger, Instagram) subscription handshake (META_VERIFY_TOKEN)',
          description: 'Echoes hub.challenge when hub.mode is subscribe and hub.verify_token matches; 403 otherwise.',
          querystring: Type.Object(
            {
              'hub.mode': Type.Optional(Type.String({ maxLength: 64 })),
              'hub.verify_token': Type.Optional(Type.String({ maxLength: 1024 })),
              'hub.challenge': Type.Optional(Type.String({ maxLength: 1024, pattern: '^[\\x21-\\x7e]+$' })),
            },
            { additionalProperties: false },
          ),
          response: {
            200: { description: 'The challenge, as sent', content: { 'text/plain': { schema: Type.String() } } },
            400: ProblemResponse,
            403: ProblemResponse,
            429: ProblemResponse,
            503: ProblemResponse,
          },
        },
      },
      async (request, reply) => {
        if (!config.META_VERIFY_TOKEN) throw problems.notConfigured('Meta webhooks (META_VERIFY_TOKEN)')
        const query = request.query
        if (!verifyMetaChallenge(query['hub.mode'], query['hub.verify_token'], config.META_VERIFY_TOKEN)) {
          throw problems.forbidden('The verify token does not match.', 'INVALID_VERIFY_TOKEN')
        }
        const challenge = query['hub.challenge']
        if (!challenge) throw problems.badRequest('INVALID_CHALLENGE', 'hub.challenge is missing.')
        return reply.type('text/plain; charset=utf-8').send(challenge)
      },
    )

    app.post(
      '/webhooks/meta',
      {
        bodyLimit: WEBHOOK_BODY_LIMIT,
        config: { rateLimit },
        schema: {
          operationId: 'receiveMetaEvents',
          tags: ['webhooks'],
          summary: 'Meta (WhatsApp, Messenger, Instagram) updates, verified with X-Hub-Signature-256 (META_APP_SECRET)',
          description:
            'Each update of a batched delivery (an entry change or messaging item) is stored as one event of type ' +
            '<object>.<field>, identified by the hash of its content, so a redelivered batch is not processed twice.',
          headers: Type.Object({ 'x-hub-signature-256': Type.Optional(Type.String({ maxLength: 1024 })) }),
          response: { 200: Type.Unsafe(Type.Ref('WebhookReceived')), ...errors },
        },
      },
      async (request) => {
        if (metaSecrets.length === 0) throw problems.notConfigured('Meta webhooks (META_APP_SECRET)')
        return receive(request, 'meta', (raw) => verifyMeta(raw, request.headers['x-hub-signature-256'], metaSecrets))
      },
    )
  }
}

const providerNames: Record<string, string> = { stripe: 'Stripe', twilio: 'Twilio', meta: 'Meta' }
