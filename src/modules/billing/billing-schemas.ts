import { Type } from 'typebox'

const Limit = Type.Union([Type.Integer({ minimum: 0 }), Type.Null()], { description: 'null: unlimited' })

export const SubscriptionSchema = Type.Object(
  {
    orgId: Type.String(),
    plan: Type.String({ description: 'The plan in force (the free plan without an entitled subscription)' }),
    status: Type.String({
      description:
        "Stripe's subscription status (active, trialing, past_due, canceled, unpaid, incomplete, ...), or none",
    }),
    currentPeriodEnd: Type.Union([Type.String({ format: 'date-time' }), Type.Null()]),
    cancelAtPeriodEnd: Type.Boolean(),
    limits: Type.Object({ dailyTokens: Limit, projects: Limit, members: Limit }),
    usage: Type.Object({
      dailyTokens: Type.Integer({ minimum: 0, description: 'Tokens used today (UTC)' }),
      projects: Type.Integer({ minimum: 0 }),
      members: Type.Integer({ minimum: 0 }),
    }),
  },
  { $id: 'Subscription', title: 'Subscription' },
)

export const CheckoutSessionSchema = Type.Object(
  {
    sessionId: Type.String(),
    url: Type.String({ format: 'uri', description: 'Send the customer here to pay' }),
  },
  { $id: 'CheckoutSession', title: 'CheckoutSession' },
)

export const PortalSessionSchema = Type.Object(
  { url: Type.String({ format: 'uri', description: "Stripe's customer portal for this org" }) },
  { $id: 'PortalSession', title: 'PortalSession' },
)

const OrgId = Type.String({ description: "The org (default: the caller's personal org)" })

export const CheckoutBody = Type.Object(
  { plan: Type.String({ minLength: 1, maxLength: 40 }), orgId: Type.Optional(OrgId) },
  { additionalProperties: false },
)
export const PortalBody = Type.Object({ orgId: Type.Optional(OrgId) }, { additionalProperties: false })
export const SubscriptionQuery = Type.Object({ orgId: Type.Optional(OrgId) }, { additionalProperties: false })

export const billingSchemas = [SubscriptionSchema, CheckoutSessionSchema, PortalSessionSchema]
