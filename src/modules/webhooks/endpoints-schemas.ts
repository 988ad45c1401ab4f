import { Type } from 'typebox'
import { Pagination } from '../auth/auth-schemas.js'
import { ALL_EVENTS, EVENT_TYPES } from '../events/catalogue.js'
import { MAX_URL_LENGTH } from './endpoints-service.js'

const Timestamp = Type.String({ format: 'date-time' })
const Url = Type.String({
  minLength: 1,
  maxLength: MAX_URL_LENGTH,
  description: 'https URL of a public host (http and private addresses only with WEBHOOK_ALLOW_PRIVATE_TARGETS)',
})
const Events = Type.Array(Type.Enum([...EVENT_TYPES, ALL_EVENTS]), {
  minItems: 1,
  maxItems: EVENT_TYPES.length,
  uniqueItems: true,
  description: 'Event types to receive, or ["*"] for every event',
})
const Description = Type.String({ maxLength: 500 })

const endpointFields = {
  id: Type.String({ pattern: '^whe_' }),
  orgId: Type.String(),
  url: Type.String(),
  events: Type.Array(Type.String()),
  description: Type.String(),
  enabled: Type.Boolean(),
  disabledReason: Type.Union([Type.String(), Type.Null()], {
    description: 'Why the server disabled it (the receiver answered 410, or kept failing); cleared by enabling it',
  }),
  previousSecretExpiresAt: Type.Union([Timestamp, Type.Null()], {
    description: 'Until then the previous secret signs too (a second signature), after a rotation',
  }),
  createdAt: Timestamp,
  updatedAt: Timestamp,
}

export const WebhookEndpointSchema = Type.Object(endpointFields, {
  $id: 'WebhookEndpoint',
  title: 'WebhookEndpoint',
  description: 'Where an org receives events; its signing secret is shown only at creation and rotation',
})
export const WebhookEndpointWithSecretSchema = Type.Object(
  {
    ...endpointFields,
    secret: Type.String({
      pattern: '^whsec_',
      description: 'Signing secret (Standard Webhooks): store it now, it is never shown again',
    }),
  },
  { $id: 'WebhookEndpointWithSecret', title: 'WebhookEndpointWithSecret' },
)
export const WebhookEndpointListSchema = Type.Object(
  {
    data: Type.Array(Type.Unsafe(Type.Ref('WebhookEndpoint'))),
    nextCursor: Type.Union([Type.String(), Type.Null()]),
  },
  { $id: 'WebhookEndpointList', title: 'WebhookEndpointList' },
)

export const WebhookDeliveryAttemptSchema = Type.Object(
  {
    id: Type.String({ pattern: '^wha_' }),
    deliveryId: Type.String({
      pattern: '^whd_',
      description: 'The delivery of one event to this endpoint; retry it by this id',
    }),
    eventId: Type.String({ description: 'Also the webhook-id header, the same on every attempt' }),
    eventType: Type.String(),
    attempt: Type.Integer({ minimum: 1, description: 'Attempt number of this delivery, counting retries by hand' }),
    attemptedAt: Timestamp,
    succeeded: Type.Boolean(),
    statusCode: Type.Union([Type.Integer(), Type.Null()], { description: 'Null when no response arrived' }),
    latencyMs: Type.Integer({ minimum: 0 }),
    responseBody: Type.Union([Type.String(), Type.Null()], { description: 'The first 1 KB of the response body' }),
    error: Type.Union([Type.String(), Type.Null()], {
      description: 'Why it failed without a useful status: timed out, connection refused, redirect not followed, ...',
    }),
    nextRetryAt: Type.Union([Timestamp, Type.Null()], { description: 'When the next attempt was scheduled' }),
    deliveryStatus: Type.Union([Type.Literal('pending'), Type.Literal('succeeded'), Type.Literal('failed')], {
      description: 'Where the delivery stands now: failed means its retries ran out (or the receiver said 410)',
    }),
  },
  { $id: 'WebhookDeliveryAttempt', title: 'WebhookDeliveryAttempt' },
)
export const WebhookDeliveryAttemptListSchema = Type.Object(
  {
    data: Type.Array(Type.Unsafe(Type.Ref('WebhookDeliveryAttempt'))),
    nextCursor: Type.Union([Type.String(), Type.Null()]),
  },
  { $id: 'WebhookDeliveryAttemptList', title: 'WebhookDeliveryAttemptList' },
)
export const WebhookDeliveryQueuedSchema = Type.Object(
  {
    deliveryId: Type.String({ pattern: '^whd_' }),
    eventId: Type.String(),
    status: Type.Literal('pending'),
  },
  { $id: 'WebhookDeliveryQueued', title: 'WebhookDeliveryQueued', description: 'A delivery queued for sending now' },
)

export const endpointSchemas = [
  WebhookEndpointSchema,
  WebhookEndpointWithSecretSchema,
  WebhookEndpointListSchema,
  WebhookDeliveryAttemptSchema,
  WebhookDeliveryAttemptListSchema,
  WebhookDeliveryQueuedSchema,
]

export const CreateEndpointBody = Type.Object(
  {
    orgId: Type.Optional(Type.String({ minLength: 1, maxLength: 100, description: 'Default: your personal org' })),
    url: Url,
    events: Events,
    description: Type.Optional(Description),
    enabled: Type.Optional(Type.Boolean({ default: true })),
  },
  { additionalProperties: false },
)
export const UpdateEndpointBody = Type.Object(
  {
    url: Type.Optional(Url),
    events: Type.Optional(Events),
    description: Type.Optional(Description),
    enabled: Type.Optional(Type.Boolean()),
  },
  { additionalProperties: false, minProperties: 1 },
)
export const ListEndpointsQuery = Type.Object(
  {
    orgId: Type.Optional(Type.String({ minLength: 1, maxLength: 100, description: 'Default: your personal org' })),
    ...Pagination,
  },
  { additionalProperties: false },
)
export const EndpointParams = Type.Object(
  { id: Type.String({ minLength: 1, maxLength: 100 }) },
  { additionalProperties: false },
)
export const ListDeliveriesQuery = Type.Object({ ...Pagination }, { additionalProperties: false })
export const DeliveryParams = Type.Object(
  { id: Type.String({ minLength: 1, maxLength: 100 }), deliveryId: Type.String({ minLength: 1, maxLength: 100 }) },
  { additionalProperties: false },
)
