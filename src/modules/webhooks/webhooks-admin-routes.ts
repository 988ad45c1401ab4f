import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'
import { ProblemResponse } from '../../lib/problem.js'
import { Pagination } from '../auth/auth-schemas.js'
import { requirePlatformAdmin } from '../auth/authorization.js'
import type { WebhooksService } from './webhooks-service.js'

const Timestamp = Type.String({ format: 'date-time' })
const Status = Type.Union(
  ['received', 'processing', 'processed', 'ignored', 'failed', 'dead'].map((status) => Type.Literal(status)),
  { description: 'received: queued; failed: will be retried; dead: out of retries (replay it after a fix)' },
)

const WebhookEvent = Type.Object(
  {
    id: Type.String(),
    provider: Type.String({ description: 'stripe, twilio or meta' }),
    providerEventId: Type.String({ description: "The provider's id of the event (what deduplicates it)" }),
    type: Type.String(),
    status: Status,
    attempts: Type.Integer({ description: 'Processing attempts so far' }),
    lastError: Type.Union([Type.String(), Type.Null()], { description: 'Why the last attempt failed' }),
    receivedAt: Timestamp,
    processedAt: Type.Union([Timestamp, Type.Null()]),
  },
  { $id: 'WebhookEvent', title: 'WebhookEvent', description: 'An inbound event as stored (without its payload)' },
)
const WebhookEventList = Type.Object(
  {
    data: Type.Array(Type.Unsafe(Type.Ref('WebhookEvent'))),
    nextCursor: Type.Union([Type.String(), Type.Null()]),
  },
  { $id: 'WebhookEventList', title: 'WebhookEventList' },
)
export const webhookAdminSchemas = [WebhookEvent, WebhookEventList]

const ListEventsQuery = Type.Object(
  {
    provider: Type.Optional(Type.String({ minLength: 1, maxLength: 50 })),
    status: Type.Optional(Status),
    ...Pagination,
  },
  { additionalProperties: false },
)
const EventParams = Type.Object({ id: Type.String({ minLength: 1, maxLength: 100 }) }, { additionalProperties: false })

const ref = (id: string) => Type.Unsafe(Type.Ref(id))
const security = [{ bearer: [] }]
const errors = {
  400: ProblemResponse,
  401: ProblemResponse,
  403: ProblemResponse,
  429: ProblemResponse,
}

/** Operations on stored inbound events, for platform administrators only. */
export function webhooksAdminRoutes(
  service: WebhooksService,
  isPlatformAdmin: (userId: string) => Promise<boolean>,
): FastifyPluginAsyncTypebox {
  return async (app) => {
    app.get(
      '/webhooks/events',
      {
        schema: {
          operationId: 'listWebhookEvents',
          tags: ['webhooks'],
          summary: 'Inbound events, newest first (platform administrators)',
          security,
          querystring: ListEventsQuery,
          response: { 200: ref('WebhookEventList'), ...errors },
        },
      },
      async (request) => {
        await requirePlatformAdmin(request, isPlatformAdmin)
        const { provider, status, limit = 20, cursor } = request.query
        return service.list({ provider, status }, limit, cursor)
      },
    )

    app.post(
      '/webhooks/events/:id/replay',
      {
        schema: {
          operationId: 'replayWebhookEvent',
          tags: ['webhooks'],
          summary: 'Process a stored event again (platform administrators)',
          description:
            'Queues the event for processing with a fresh set of retries, whatever its status: after fixing the ' +
            'cause of a dead event, or to run its handler again (handlers are idempotent by event id). A replay ' +
            'that meets a running attempt waits for it and does not repeat its effects.',
          security,
          params: EventParams,
          response: { 202: ref('WebhookEvent'), ...errors, 404: ProblemResponse },
        },
      },
      async (request, reply) => {
        await requirePlatformAdmin(request, isPlatformAdmin)
        // The response schema leaves out the payload.
        return reply.code(202).send(await service.replay(request.params.id))
      },
    )
  }
}
