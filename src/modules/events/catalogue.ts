import { type TSchema, Type } from 'typebox'

// The webhooks section is not rewritten like route schemas are: refs name the component in full.
const ref = (id: string) => Type.Unsafe({ $ref: `#/components/schemas/${id}` })
const Timestamp = Type.String({ format: 'date-time' })

/**
 * Every event type Backplane publishes to outbound webhooks, with the schema of its `data`. An
 * endpoint subscribes to some of them, or to '*'; a type not listed here cannot be subscribed to,
 * so a typo is a 400 at registration rather than an endpoint that silently never receives anything.
 */
export const EVENT_CATALOGUE = {
  'project.created': { summary: 'A project was created', data: ref('Project') },
  'project.updated': { summary: 'A project changed (name, description or data)', data: ref('Project') },
  'project.deleted': { summary: 'A project was deleted; data is the project as it was', data: ref('Project') },
  'conversation.message.completed': {
    summary: 'An assistant message finished streaming (complete, stopped, incomplete or error)',
    // The chat module defines the message; until it lands the shape is only outlined here.
    data: Type.Object(
      { conversationId: Type.String(), messageId: Type.String(), status: Type.String() },
      { additionalProperties: true },
    ),
  },
  'billing.subscription.updated': {
    summary: "An org's subscription changed plan or status",
    // The billing module defines the subscription; until it lands the shape is only outlined here.
    data: Type.Object(
      { orgId: Type.String(), plan: Type.String(), status: Type.String() },
      { additionalProperties: true },
    ),
  },
  'webhook.endpoint.disabled': {
    summary: 'Backplane disabled an endpoint: it answered 410 Gone, or failed continuously for 5 days',
    data: Type.Object({
      endpointId: Type.String(),
      url: Type.String(),
      reason: Type.String({ description: 'gone, or failing' }),
      disabledAt: Timestamp,
    }),
  },
  'webhook.test': {
    summary: 'Sent on request (POST /webhook-endpoints/{id}/test) to check a receiver',
    data: Type.Object({ endpointId: Type.String(), message: Type.String() }),
  },
} satisfies Record<string, { summary: string; data: TSchema }>

export type EventType = keyof typeof EVENT_CATALOGUE
export const EVENT_TYPES = Object.keys(EVENT_CATALOGUE) as EventType[]
export const ALL_EVENTS = '*'

/** What every delivery carries, whatever its type. */
export function eventPayloadSchema(type: EventType) {
  return Type.Object({
    id: Type.String({ description: 'The event id; also the webhook-id header, stable across retries' }),
    type: Type.Literal(type),
    timestamp: { ...Timestamp, description: 'When the change committed' },
    orgId: Type.String(),
    data: EVENT_CATALOGUE[type].data,
  })
}

const signatureHeaders = [
  ['webhook-id', 'The event id: the same on every retry, for deduplication'],
  ['webhook-timestamp', 'Unix seconds of this attempt; refuse old ones to stop replays'],
  [
    'webhook-signature',
    'Space-separated v1,<base64 HMAC-SHA256 of id.timestamp.body> with the whsec_ secret (two during a rotation)',
  ],
].map(([name, description]) => ({ name, in: 'header', required: true, description, schema: { type: 'string' } }))

/** The OpenAPI 3.1 `webhooks` section: one signed POST per event type. */
export function eventWebhooksDocument() {
  return Object.fromEntries(
    EVENT_TYPES.map((type) => [
      type,
      {
        post: {
          operationId: `event.${type}`,
          tags: ['webhooks'],
          summary: EVENT_CATALOGUE[type].summary,
          description:
            'Signed per Standard Webhooks. Answer 2xx quickly; other answers and timeouts (15 s) are retried, ' +
            '410 disables the endpoint, redirects are not followed.',
          parameters: signatureHeaders,
          requestBody: { required: true, content: { 'application/json': { schema: eventPayloadSchema(type) } } },
          responses: { '2XX': { description: 'Received' } },
        },
      },
    ]),
  )
}
