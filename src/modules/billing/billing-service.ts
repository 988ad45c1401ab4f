import { randomUUID } from 'node:crypto'
import type { FastifyBaseLogger } from 'fastify'
import { LRUCache } from 'lru-cache'
import { sql } from 'drizzle-orm'
import type Stripe from 'stripe'
import type { Plan, PlanLimits } from '../../config.js'
import type { Executor } from '../../db/client.js'
import { isForeignKeyViolation } from '../../db/results.js'
import { HttpProblem, problems } from '../../lib/problem.js'
import { type ServicePolicy, upstreamProblem } from '../../lib/resilience.js'
import { type AuthContext, orgOrDefault, requireOrgRole, requireScope } from '../auth/authorization.js'
import type { InboundEvent } from '../webhooks/webhooks-service.js'
import type { BillingAccountRow, BillingRepository } from './billing-repository.js'

/** What a plan limits, besides tokens per day (which chat meters itself). */
export type CountedResource = 'projects' | 'members'
export type UsageKind = CountedResource | 'dailyTokens'
type UsageCounter = (orgId: string, tx?: Executor) => Promise<number>

/** Subscription statuses that keep the paid plan: past_due while Stripe retries the payment. */
const ENTITLED = new Set(['active', 'trialing', 'past_due'])

/** What other modules ask of billing (decorated as `app.billing`). */
export interface Billing {
  /** The plan an org is on now (the free plan without an entitled subscription); inside a transaction, pass it. */
  planOf(orgId: string, tx?: Executor): Promise<Plan>
  /** Whether any plan limits tokens per day (else chat need not count them). */
  readonly limitsTokens: boolean
  /** How a module counts what it owns, for limits and for the subscription view. */
  registerUsage(kind: UsageKind, count: UsageCounter): void
  /**
   * Refuses (403 PLAN_LIMIT) adding one more `resource` beyond the org's plan. Call inside the
   * transaction that adds it: concurrent additions to one org wait for each other here.
   */
  assertRoomFor(orgId: string, resource: CountedResource, tx: Executor): Promise<void>
}

export function planLimitProblem(status: 403 | 429, detail: string, headers?: Record<string, string>) {
  return new HttpProblem(status, 'PLAN_LIMIT', detail, headers ? { headers } : undefined)
}

export function createBillingService(deps: {
  repository: BillingRepository
  plans: Plan[]
  freePlanId: string
  stripe: Stripe | null
  policy: ServicePolicy
  returnUrl: string
  log: FastifyBaseLogger
}) {
  const { repository, plans, stripe, policy, log } = deps
  const free = plans.find((plan) => plan.id === deps.freePlanId) as Plan
  const byPrice = new Map(plans.flatMap((plan) => (plan.priceId ? [[plan.priceId, plan] as const] : [])))
  const usage = new Map<UsageKind, UsageCounter>()
  // Plans change rarely and only through webhooks (which evict here); other instances see a
  // change within the cache's lifetime.
  const cache = new LRUCache<string, Plan>({ max: 10_000, ttl: 5_000 })

  function planFor(account: BillingAccountRow | undefined): Plan {
    if (!account?.status || !ENTITLED.has(account.status) || !account.priceId) return free
    const plan = byPrice.get(account.priceId)
    if (!plan) {
      log.warn({ orgId: account.orgId, priceId: account.priceId }, 'subscription to a price no plan names')
      return free
    }
    return plan
  }

  async function planOf(orgId: string, tx?: Executor): Promise<Plan> {
    // With no plan for sale, every org is on the free plan: nothing to read.
    if (byPrice.size === 0) return free
    const cached = cache.get(orgId)
    if (cached) return cached
    // Read in the caller's transaction: the embedded database has one connection, which it holds.
    const plan = planFor(await repository.find(orgId, tx))
    cache.set(orgId, plan)
    return plan
  }

  function configuredStripe(): Stripe {
    if (!stripe) throw problems.notConfigured('Billing (STRIPE_SECRET_KEY is not set)')
    return stripe
  }

  /** A Stripe call under the service's policy; its failures become problems a client can act on. */
  async function callStripe<T>(operation: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await policy.call({ operation, idempotent: true }, fn)
    } catch (error) {
      // Each attempt is logged by the policy; this says which billing request it was for.
      log.warn({ operation, type: (error as { type?: unknown }).type }, 'a billing request to stripe failed')
      throw upstreamProblem(error, {
        unavailable: 'Stripe is unavailable at the moment; try again shortly.',
        refused: 'Stripe refused the billing request.',
      })
    }
  }

  /** Creates the org's Stripe customer (it has none yet) and records it. */
  async function createCustomer(orgId: string): Promise<string> {
    const client = configuredStripe()
    // The key makes a retry (or a second click within Stripe's 24 h) return the same customer.
    const customer = await callStripe('customers.create', () =>
      client.customers.create({ metadata: { orgId } }, { idempotencyKey: `backplane-customer-${orgId}` }),
    )
    try {
      return (await repository.insertCustomer(orgId, customer.id)).stripeCustomerId
    } catch (error) {
      if (isForeignKeyViolation(error)) throw problems.notFound('Organization not found.', 'ORG_NOT_FOUND')
      throw error
    }
  }

  const billing: Billing = {
    planOf,
    limitsTokens: plans.some((plan) => plan.dailyTokens !== null),
    registerUsage(kind, count) {
      if (usage.has(kind)) throw new Error(`usage of ${kind} is already counted`)
      usage.set(kind, count)
    },
    async assertRoomFor(orgId, resource, tx) {
      const plan = await planOf(orgId, tx)
      const limit = plan[resource]
      if (limit === null) return
      const count = usage.get(resource)
      if (!count) throw new Error(`nothing counts ${resource}`)
      // One addition per org and resource at a time, until this transaction ends.
      await tx.execute(sql`select pg_advisory_xact_lock(hashtext(${`plan-limit:${resource}:${orgId}`}))`)
      const used = await count(orgId, tx)
      if (used >= limit) {
        throw planLimitProblem(
          403,
          `The ${plan.id} plan allows ${limit} ${resource}; upgrade the plan or remove some first.`,
        )
      }
    },
  }

  return {
    billing,

    async checkout(auth: AuthContext, input: { plan: string; orgId?: string | undefined }) {
      const orgId = orgOrDefault(auth, input.orgId)
      requireOrgRole(auth, orgId, 'admin')
      const plan = plans.find((candidate) => candidate.id === input.plan)
      if (!plan) throw problems.unprocessable(`There is no plan "${input.plan}".`, 'UNKNOWN_PLAN')
      if (!plan.priceId) throw problems.unprocessable(`The ${plan.id} plan is not for sale.`, 'PLAN_NOT_PURCHASABLE')
      const priceId = plan.priceId
      const client = configuredStripe()
      const account = await repository.find(orgId)
      if (account?.status && ENTITLED.has(account.status)) {
        throw problems.conflict(
          'The organization already has a subscription; change its plan in the billing portal.',
          'ALREADY_SUBSCRIBED',
        )
      }
      const customer = account?.stripeCustomerId ?? (await createCustomer(orgId))
      const idempotencyKey = randomUUID()
      const session = await callStripe('checkout.sessions.create', () =>
        client.checkout.sessions.create(
          {
            mode: 'subscription',
            customer,
            client_reference_id: orgId,
            line_items: [{ price: priceId, quantity: 1 }],
            success_url: `${deps.returnUrl}?checkout=success&session_id={CHECKOUT_SESSION_ID}`,
            cancel_url: `${deps.returnUrl}?checkout=cancelled`,
            metadata: { orgId, plan: plan.id },
            subscription_data: { metadata: { orgId, plan: plan.id } },
          },
          { idempotencyKey },
        ),
      )
      if (!session.url) throw new HttpProblem(502, 'UPSTREAM_ERROR', 'Stripe returned no checkout URL.')
      return { sessionId: session.id, url: session.url }
    },

    async portal(auth: AuthContext, input: { orgId?: string | undefined }) {
      const orgId = orgOrDefault(auth, input.orgId)
      requireOrgRole(auth, orgId, 'admin')
      const client = configuredStripe()
      const account = await repository.find(orgId)
      if (!account) {
        throw problems.conflict(
          'The organization has no billing account yet; start a checkout first.',
          'NO_BILLING_ACCOUNT',
        )
      }
      const idempotencyKey = randomUUID()
      const session = await callStripe('billing_portal.sessions.create', () =>
        client.billingPortal.sessions.create(
          { customer: account.stripeCustomerId, return_url: deps.returnUrl },
          { idempotencyKey },
        ),
      )
      return { url: session.url }
    },

    async subscription(auth: AuthContext, orgIdInput: string | undefined) {
      requireScope(auth, 'usage:read')
      const orgId = orgOrDefault(auth, orgIdInput)
      requireOrgRole(auth, orgId, 'member')
      const account = await repository.find(orgId)
      const plan = planFor(account)
      const counted = async (kind: UsageKind) => (await usage.get(kind)?.(orgId)) ?? 0
      const [dailyTokens, projects, members] = await Promise.all([
        counted('dailyTokens'),
        counted('projects'),
        counted('members'),
      ])
      const limits: PlanLimits = { dailyTokens: plan.dailyTokens, projects: plan.projects, members: plan.members }
      return {
        orgId,
        plan: plan.id,
        status: account?.status ?? 'none',
        currentPeriodEnd: account?.currentPeriodEnd?.toISOString() ?? null,
        cancelAtPeriodEnd: account?.cancelAtPeriodEnd ?? false,
        limits,
        usage: { dailyTokens, projects, members },
      }
    },

    /**
     * Applies what a Stripe event says about a subscription by reading the subscription from
     * Stripe, under a lock on the org's account: whatever order events arrive in (Stripe does not
     * promise one), each application stores the subscription as it is now, and a duplicate
     * changes nothing. Runs in the inbound event's transaction.
     */
    async syncFromEvent(event: InboundEvent, tx: Executor): Promise<void> {
      const client = stripe
      if (!client) {
        log.warn({ eventId: event.id, type: event.type }, 'stripe event ignored: STRIPE_SECRET_KEY is not set')
        return
      }
      const ref = subscriptionRef(event)
      if (!ref) return
      let account = await repository.lockByCustomer(ref.customerId, tx)
      if (!account) {
        if (!ref.orgId) {
          log.warn({ eventId: event.id, type: event.type }, 'stripe event for a customer no org has')
          return
        }
        try {
          // In a savepoint: a failure must not abort the event's transaction, which records the outcome.
          const orgId = ref.orgId
          await tx.transaction((savepoint) => repository.insertCustomer(orgId, ref.customerId, savepoint))
        } catch (error) {
          // The org was deleted since it subscribed: nothing left to bill.
          if (isForeignKeyViolation(error)) return
          throw error
        }
        account = await repository.lockByCustomer(ref.customerId, tx)
        // The org already had another customer: events about this one are not its subscription.
        if (!account) return
      }
      if (!ref.subscriptionId) return
      const subscriptionId = ref.subscriptionId
      const subscription = await policy.call({ operation: 'subscriptions.retrieve', idempotent: true }, () =>
        client.subscriptions.retrieve(subscriptionId),
      )
      // An older subscription ending does not end the one the org has now.
      if (
        account.subscriptionId &&
        account.subscriptionId !== subscription.id &&
        account.status &&
        ENTITLED.has(account.status) &&
        !ENTITLED.has(subscription.status)
      ) {
        return
      }
      const item = subscription.items.data[0]
      const periodEnd =
        (item as { current_period_end?: number } | undefined)?.current_period_end ??
        (subscription as unknown as { current_period_end?: number }).current_period_end
      await repository.applySubscription(
        account.orgId,
        {
          subscriptionId: subscription.id,
          priceId: item?.price.id ?? null,
          status: subscription.status,
          currentPeriodEnd: typeof periodEnd === 'number' ? new Date(periodEnd * 1000) : null,
          cancelAtPeriodEnd: subscription.cancel_at_period_end,
          ...(event.type === 'invoice.payment_failed' ? { lastPaymentFailedAt: new Date(eventCreated(event)) } : {}),
        },
        tx,
      )
      cache.delete(account.orgId)
      log.info(
        { orgId: account.orgId, eventId: event.id, type: event.type, status: subscription.status },
        'subscription synced from stripe',
      )
    },
  }
}

export type BillingService = ReturnType<typeof createBillingService>

/** The Stripe events that change an org's subscription. */
export const SUBSCRIPTION_EVENTS = [
  'checkout.session.completed',
  'customer.subscription.created',
  'customer.subscription.updated',
  'customer.subscription.deleted',
  'invoice.payment_failed',
] as const

function eventCreated(event: InboundEvent): number {
  const created = (event.payload as { created?: unknown }).created
  return typeof created === 'number' ? created * 1000 : event.receivedAt.getTime()
}

const idOf = (value: unknown): string | undefined =>
  typeof value === 'string'
    ? value
    : typeof (value as { id?: unknown })?.id === 'string'
      ? (value as { id: string }).id
      : undefined

/** Which customer, subscription and (from our own metadata) org an event is about. */
function subscriptionRef(
  event: InboundEvent,
): { customerId: string; subscriptionId: string | undefined; orgId: string | undefined } | null {
  const object = ((event.payload as { data?: { object?: unknown } }).data?.object ?? {}) as Record<string, unknown>
  const metadata = (object.metadata ?? {}) as Record<string, unknown>
  const metaOrg = typeof metadata.orgId === 'string' ? metadata.orgId : undefined
  const customerId = idOf(object.customer)
  if (!customerId) return null
  switch (event.type) {
    case 'checkout.session.completed': {
      if (object.mode !== 'subscription') return null
      const reference = typeof object.client_reference_id === 'string' ? object.client_reference_id : undefined
      return { customerId, subscriptionId: idOf(object.subscription), orgId: reference ?? metaOrg }
    }
    case 'invoice.payment_failed': {
      const parent = object.parent as { subscription_details?: { subscription?: unknown } } | undefined
      return {
        customerId,
        subscriptionId: idOf(object.subscription) ?? idOf(parent?.subscription_details?.subscription),
        orgId: undefined,
      }
    }
    default:
      return { customerId, subscriptionId: idOf(object.id), orgId: metaOrg }
  }
}
