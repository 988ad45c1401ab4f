/**
 * Every event type Backplane publishes to outbound webhooks. An endpoint subscribes to some of
 * them, or to '*'; a type not listed here cannot be subscribed to, so a typo is a 400 at
 * registration rather than an endpoint that silently never receives anything.
 */
export const EVENT_TYPES = [
  'project.created',
  'project.updated',
  'project.deleted',
  'conversation.message.completed',
  'billing.subscription.updated',
  'webhook.endpoint.disabled',
  'webhook.test',
] as const

export type EventType = (typeof EVENT_TYPES)[number]

export const ALL_EVENTS = '*'
