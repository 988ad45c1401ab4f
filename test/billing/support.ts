import { eq } from 'drizzle-orm'
import type { FastifyInstance } from 'fastify'
import { billingAccounts } from '../../src/db/schema/index.js'
import { SUBSCRIPTION_EVENTS } from '../../src/modules/billing/billing-service.js'
import { type Account, callAs, type Test } from '../auth/support.js'
import type { CheckoutCompletion, FakeStripe, StripeEventObject } from '../fakes/stripe.js'
import { eventually, FAST, storedEvent } from '../webhooks/support.js'

export const WEBHOOK_SECRET = 'whsec_billing_test_secret'
export const PRO_PRICE = 'price_pro_monthly'
export const TEAM_PRICE = 'price_team_monthly'
export const RETURN_URL = 'https://app.example.com/billing'

/** Small free limits, so that tests reach them in a few requests; team leaves projects and tokens unlimited. */
export const PLANS = {
  free: { dailyTokens: 50, projects: 2, members: 2 },
  pro: { priceId: PRO_PRICE, dailyTokens: 100_000, projects: 4, members: 5 },
  team: { priceId: TEAM_PRICE, members: 50 },
}

export const FREE_LIMITS = { dailyTokens: 50, projects: 2, members: 2 }
export const PRO_LIMITS = { dailyTokens: 100_000, projects: 4, members: 5 }
export const TEAM_LIMITS = { dailyTokens: null, projects: null, members: 50 }

/** Registers the paid plans' prices on the fake, as they would exist in the Stripe dashboard. */
export function addPlanPrices(fake: FakeStripe): void {
  fake.addPrice(PRO_PRICE, { unitAmount: 2000 })
  fake.addPrice(TEAM_PRICE, { unitAmount: 9000 })
}

/**
 * The app's environment for billing against the fake: quick job polling (webhook processing within
 * a second or so) and quick integration retries (a failing Stripe call gives up within milliseconds).
 */
export function billingEnv(fake: FakeStripe, extra: Record<string, string> = {}): Record<string, string> {
  return {
    ...FAST,
    STRIPE_SECRET_KEY: 'sk_test_x',
    STRIPE_API_URL: fake.origin,
    STRIPE_WEBHOOK_SECRET: WEBHOOK_SECRET,
    BILLING_PLANS: JSON.stringify(PLANS),
    BILLING_RETURN_URL: RETURN_URL,
    INTEGRATION_RETRY_BASE_DELAY: '10ms',
    INTEGRATION_RETRY_MAX_DELAY: '50ms',
    ...extra,
  }
}

export interface SubscriptionView {
  orgId: string
  plan: string
  status: string
  currentPeriodEnd: string | null
  cancelAtPeriodEnd: boolean
  limits: { dailyTokens: number | null; projects: number | null; members: number | null }
  usage: { dailyTokens: number; projects: number; members: number }
}

export async function subscriptionOf(
  app: FastifyInstance,
  who: Pick<Account, 'headers'>,
  orgId?: string,
): Promise<SubscriptionView> {
  const response = await callAs(app, who, 'GET', `/billing/subscription${orgId ? `?orgId=${orgId}` : ''}`)
  if (response.statusCode !== 200) throw new Error(`subscription answered ${response.statusCode}: ${response.body}`)
  return response.json()
}

export function checkout(app: FastifyInstance, who: Pick<Account, 'headers'>, plan: string, orgId?: string) {
  return callAs(app, who, 'POST', '/billing/checkout', { plan, ...(orgId ? { orgId } : {}) })
}

/** Posts one event to the Stripe webhook endpoint, signed as Stripe signs it. */
export function deliver(app: FastifyInstance, fake: FakeStripe, event: StripeEventObject) {
  const delivery = fake.signedDelivery(event, WEBHOOK_SECRET)
  return app.inject({
    method: 'POST',
    url: '/api/v1/webhooks/stripe',
    headers: delivery.headers,
    payload: delivery.payload,
  })
}

/** The stored inbound event of a Stripe event, once its processing has finished (any final status). */
export async function settled(app: FastifyInstance, event: StripeEventObject, status = 'processed') {
  return eventually(async () => (await storedEvent(app, 'stripe', event.id))?.status === status)
}

const handled: ReadonlySet<string> = new Set(SUBSCRIPTION_EVENTS)

/**
 * Delivers each event in the order given, waiting for each to be done with before the next, so
 * the order the app applies them in is the order chosen by the test. Billing handles the
 * subscription events; any other (invoice.paid, say) is stored and ignored.
 */
export async function deliverAll(t: Test, app: FastifyInstance, fake: FakeStripe, events: StripeEventObject[]) {
  for (const event of events) {
    const response = await deliver(app, fake, event)
    t.equal(response.statusCode, 200, `${event.type} accepted`)
    const status = handled.has(event.type) ? 'processed' : 'ignored'
    t.ok(await settled(app, event, status), `${event.type} ${status}`)
  }
}

/** Starts a checkout for `plan` as `who` and completes it on the fake; the completion events are not delivered. */
export async function paidCheckout(
  t: Test,
  app: FastifyInstance,
  fake: FakeStripe,
  who: Pick<Account, 'headers'>,
  plan: string,
  orgId?: string,
): Promise<CheckoutCompletion> {
  const response = await checkout(app, who, plan, orgId)
  t.equal(response.statusCode, 201, `checkout for ${plan} (${response.body.slice(0, 200)})`)
  return fake.completeCheckout(response.json().sessionId)
}

/** Subscribes an org to `plan` the way production does: checkout, payment, then Stripe's webhooks. */
export async function subscribe(
  t: Test,
  app: FastifyInstance,
  fake: FakeStripe,
  who: Pick<Account, 'headers'>,
  plan: string,
  orgId?: string,
): Promise<CheckoutCompletion> {
  const completion = await paidCheckout(t, app, fake, who, plan, orgId)
  await deliverAll(t, app, fake, completion.events)
  return completion
}

export async function billingAccountOf(app: FastifyInstance, orgId: string) {
  const [row] = await app.db.select().from(billingAccounts).where(eq(billingAccounts.orgId, orgId))
  return row
}
