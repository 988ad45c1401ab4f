import { setTimeout as sleep } from 'node:timers/promises'
import type { FastifyInstance } from 'fastify'
import t from 'tap'
import {
  account,
  addMember,
  assertProblem,
  bearer,
  callAs,
  createApiKey,
  createOrg,
  type Test,
} from '../auth/support.js'
import { type RecordedStripeRequest, startFakeStripe } from '../fakes/stripe.js'
import { buildTestApp, LogCapture } from '../helper.js'
import { storedEvent } from '../webhooks/support.js'
import {
  addPlanPrices,
  billingAccountOf,
  billingEnv,
  checkout,
  deliver,
  deliverAll,
  FREE_LIMITS,
  paidCheckout,
  PRO_LIMITS,
  PRO_PRICE,
  RETURN_URL,
  settled,
  subscribe,
  subscriptionOf,
  TEAM_LIMITS,
  TEAM_PRICE,
} from './support.js'

/**
 * Billing end to end against the fake Stripe: checkout and portal sessions, and the subscription
 * state that only Stripe's signed webhooks change (in any order, any number of times).
 */

const fake = await startFakeStripe(t)
addPlanPrices(fake)

/** What the app sent the fake from request number `from` on, to one path and method. */
const sentSince = (from: number, path: string | RegExp, method = 'POST'): RecordedStripeRequest[] =>
  fake.requestsTo(path, method).filter((request) => request.index >= from)

const portal = (app: FastifyInstance, who: { headers: { authorization: string } }, orgId?: string) =>
  callAs(app, who, 'POST', '/billing/portal', orgId ? { orgId } : {})

t.test('subscriptions, checkout and portal', async (t) => {
  const app = await buildTestApp(t, { env: billingEnv(fake) })

  t.test('an owner starts a checkout: one customer for the org, a session for the plan price', async (t) => {
    const owner = await account(app)
    const orgId = await createOrg(app, owner, 'Checkout Co')
    const from = fake.requests.length

    const response = await checkout(app, owner, 'pro', orgId)
    t.equal(response.statusCode, 201, response.body)
    const body = response.json()
    t.same(Object.keys(body).sort(), ['sessionId', 'url'])
    t.match(body.sessionId, /^cs_test_/)
    t.ok(URL.canParse(body.url), 'url is a URL')

    const customers = sentSince(from, '/v1/customers')
    t.equal(customers.length, 1, 'one customer created')
    t.same(customers[0]?.params.metadata, { orgId }, "with the org's id as metadata")
    const customerId = (customers[0]?.response as { id: string }).id
    t.match(customerId, /^cus_/)
    t.equal(fake.customers.get(customerId)?.metadata.orgId, orgId, 'the fake holds it')

    const sessions = sentSince(from, '/v1/checkout/sessions')
    t.equal(sessions.length, 1, 'one checkout session')
    const params = sessions[0]?.params ?? {}
    t.equal(params.mode, 'subscription')
    t.equal(params.customer, customerId, 'for the org customer')
    t.equal(params.client_reference_id, orgId)
    t.same(params.line_items, [{ price: PRO_PRICE, quantity: '1' }], "the pro plan's price")
    t.same(params.subscription_data, { metadata: { orgId, plan: 'pro' } }, 'the subscription will name the org')
    t.same(params.metadata, { orgId, plan: 'pro' })
    t.ok(String(params.success_url).startsWith(`${RETURN_URL}?`), 'back to BILLING_RETURN_URL on success')
    t.ok(String(params.cancel_url).startsWith(`${RETURN_URL}?`), 'and on cancel')
    t.equal(fake.checkoutSessions.get(body.sessionId)?.url, body.url, "the fake session's URL")

    t.equal((await billingAccountOf(app, orgId))?.stripeCustomerId, customerId, 'the customer is recorded')
    const view = await subscriptionOf(app, owner, orgId)
    t.equal(view.plan, 'free', 'a checkout alone changes no plan')
    t.equal(view.status, 'none')

    const again = await checkout(app, owner, 'team', orgId)
    t.equal(again.statusCode, 201, 'a second checkout')
    t.not(again.json().sessionId, body.sessionId, 'is a new session')
    t.equal(sentSince(from, '/v1/customers').length, 1, 'no second customer')
    const second = sentSince(from, '/v1/checkout/sessions')[1]?.params
    t.equal(second?.customer, customerId, 'the same customer')
    t.same(second?.line_items, [{ price: TEAM_PRICE, quantity: '1' }])

    const personal = await checkout(app, owner, 'pro')
    t.equal(personal.statusCode, 201, 'without orgId: the personal org')
    const personalCustomer = sentSince(from, '/v1/customers')[1]
    t.same(personalCustomer?.params.metadata, { orgId: owner.personalOrgId }, 'its own customer')
  })

  t.test('refusals, with nothing sent to Stripe', async (t) => {
    const owner = await account(app)
    const orgId = await createOrg(app, owner, 'Refusals')
    const stranger = await account(app)
    const key = await createApiKey(app, owner, orgId, ['projects:read', 'projects:write'])
    const from = fake.requests.length

    assertProblem(t, await checkout(app, owner, 'enterprise', orgId), 422, 'UNKNOWN_PLAN', 'an unknown plan')
    assertProblem(t, await checkout(app, owner, 'free', orgId), 422, 'PLAN_NOT_PURCHASABLE', 'the free plan')
    assertProblem(t, await checkout(app, stranger, 'pro', orgId), 404, 'ORG_NOT_FOUND', "another tenant's org")
    assertProblem(t, await portal(app, stranger, orgId), 404, 'ORG_NOT_FOUND', "another tenant's org, portal")
    assertProblem(t, await checkout(app, owner, 'pro', 'org_nonexistent'), 404, 'ORG_NOT_FOUND', 'no such org')
    const withKey = { headers: bearer(key.key) }
    assertProblem(t, await checkout(app, withKey, 'pro', orgId), 403, 'USER_SESSION_REQUIRED', 'an API key')
    assertProblem(t, await checkout(app, withKey, 'pro'), 403, 'USER_SESSION_REQUIRED', 'an API key, its org')
    assertProblem(t, await portal(app, withKey, orgId), 403, 'USER_SESSION_REQUIRED', 'an API key, portal')
    const keyRead = await callAs(app, withKey, 'GET', `/billing/subscription?orgId=${orgId}`)
    assertProblem(t, keyRead, 403, 'INSUFFICIENT_SCOPE', 'an API key without usage:read cannot read the subscription')
    const reader = await createApiKey(app, owner, orgId, ['usage:read'])
    const readByKey = await callAs(app, { headers: bearer(reader.key) }, 'GET', '/billing/subscription')
    t.equal(readByKey.statusCode, 200, 'with usage:read it can, for its own org')
    t.equal(readByKey.json().orgId, orgId)
    const extra = await callAs(app, owner, 'POST', '/billing/checkout', { plan: 'pro', orgId, price: PRO_PRICE })
    assertProblem(t, extra, 400, 'VALIDATION_FAILED', 'a price chosen by the caller')
    assertProblem(t, await callAs(app, owner, 'POST', '/billing/checkout', {}), 400, 'VALIDATION_FAILED', 'no plan')
    t.same(fake.requests.slice(from), [], 'Stripe was not called')
    t.equal(await billingAccountOf(app, orgId), undefined, 'nothing stored')
  })

  t.test('the portal: 409 before any customer, then a session for the org customer', async (t) => {
    const owner = await account(app)
    const orgId = await createOrg(app, owner, 'Portal Co')
    const from = fake.requests.length
    assertProblem(t, await portal(app, owner, orgId), 409, 'NO_BILLING_ACCOUNT')
    t.same(fake.requests.slice(from), [], 'Stripe was not called')

    t.equal((await checkout(app, owner, 'pro', orgId)).statusCode, 201)
    const customerId = (await billingAccountOf(app, orgId))?.stripeCustomerId
    const response = await portal(app, owner, orgId)
    t.equal(response.statusCode, 201, response.body)
    t.same(Object.keys(response.json()), ['url'])
    t.ok(URL.canParse(response.json().url), 'url is a URL')
    const sessions = sentSince(from, '/v1/billing_portal/sessions')
    t.equal(sessions.length, 1)
    t.equal(sessions[0]?.params.customer, customerId, "the org's customer")
    t.equal(sessions[0]?.params.return_url, RETURN_URL)

    const other = await account(app)
    t.equal((await checkout(app, other, 'pro')).statusCode, 201)
    t.equal((await portal(app, other)).statusCode, 201)
    t.not(sentSince(from, '/v1/billing_portal/sessions')[1]?.params.customer, customerId, 'each org its own')
  })

  t.test('webhooks drive the plan: paid, upgraded, past due, recovered, canceled', async (t) => {
    const owner = await account(app)
    const orgId = await createOrg(app, owner, 'Lifecycle')
    const completion = await paidCheckout(t, app, fake, owner, 'pro', orgId)
    t.same(
      completion.events.map((event) => event.type),
      ['customer.subscription.created', 'checkout.session.completed'],
      'the existing customer is used, so no customer.created',
    )
    const subscription = completion.subscription
    if (!subscription) throw new Error('no subscription')
    t.equal((await subscriptionOf(app, owner, orgId)).plan, 'free', 'not before the webhook')

    await deliverAll(t, app, fake, completion.events)
    let view = await subscriptionOf(app, owner, orgId)
    t.equal(view.plan, 'pro')
    t.equal(view.status, 'active')
    t.equal(view.currentPeriodEnd, new Date(subscription.current_period_end * 1000).toISOString(), 'the period end')
    t.equal(view.cancelAtPeriodEnd, false)
    t.same(view.limits, PRO_LIMITS, "pro's limits")
    const row = await billingAccountOf(app, orgId)
    t.equal(row?.subscriptionId, subscription.id)
    t.equal(row?.priceId, PRO_PRICE)

    const from = fake.requests.length
    assertProblem(t, await checkout(app, owner, 'team', orgId), 409, 'ALREADY_SUBSCRIBED', 'checkout while entitled')
    t.same(sentSince(from, '/v1/checkout/sessions'), [], 'no session created')
    t.equal((await portal(app, owner, orgId)).statusCode, 201, 'the portal is where plans change')

    await deliverAll(t, app, fake, [fake.updateSubscription(subscription.id, { priceId: TEAM_PRICE })])
    view = await subscriptionOf(app, owner, orgId)
    t.equal(view.plan, 'team', 'moved to team')
    t.same(view.limits, TEAM_LIMITS, "team's limits (null: unlimited)")

    await deliverAll(t, app, fake, [fake.updateSubscription(subscription.id, { cancelAtPeriodEnd: true })])
    view = await subscriptionOf(app, owner, orgId)
    t.equal(view.cancelAtPeriodEnd, true, 'cancellation at period end is shown')
    t.equal(view.plan, 'team', 'the plan holds until the period ends')
    await deliverAll(t, app, fake, [fake.updateSubscription(subscription.id, { cancelAtPeriodEnd: false })])

    const failed = fake.paymentFailed(subscription.id)
    t.same(
      failed.map((event) => event.type),
      ['invoice.payment_failed', 'customer.subscription.updated'],
    )
    // The invoice event alone already reads the subscription as past_due.
    await deliverAll(t, app, fake, failed.slice(0, 1))
    view = await subscriptionOf(app, owner, orgId)
    t.equal(view.status, 'past_due', 'past due')
    t.equal(view.plan, 'team', 'the plan is kept while Stripe retries')
    t.ok((await billingAccountOf(app, orgId))?.lastPaymentFailedAt, 'the failure is recorded')
    await deliverAll(t, app, fake, failed.slice(1))
    assertProblem(t, await checkout(app, owner, 'pro', orgId), 409, 'ALREADY_SUBSCRIBED', 'past_due is entitled')

    await deliverAll(t, app, fake, fake.paymentSucceeded(subscription.id))
    t.equal((await subscriptionOf(app, owner, orgId)).status, 'active', 'paid after all')

    await deliverAll(t, app, fake, [fake.deleteSubscription(subscription.id)])
    view = await subscriptionOf(app, owner, orgId)
    t.equal(view.plan, 'free', 'back to free')
    t.equal(view.status, 'canceled')
    t.same(view.limits, FREE_LIMITS)

    const customers = fake.requestsTo('/v1/customers', 'POST').length
    const renewed = await paidCheckout(t, app, fake, owner, 'pro', orgId)
    t.equal(fake.requestsTo('/v1/customers', 'POST').length, customers, 'a new checkout reuses the customer')
    await deliverAll(t, app, fake, renewed.events)
    view = await subscriptionOf(app, owner, orgId)
    t.equal(view.plan, 'pro', 'subscribed again')
    t.equal(view.status, 'active')
    t.equal((await billingAccountOf(app, orgId))?.subscriptionId, renewed.subscription?.id, 'the new subscription')

    // A late event about the old, canceled subscription does not end the current one.
    await deliverAll(t, app, fake, [fake.updateSubscription(subscription.id, { metadata: { note: 'late' } })])
    view = await subscriptionOf(app, owner, orgId)
    t.equal(view.plan, 'pro', 'still pro')
    t.equal(view.status, 'active', 'still active')
  })

  t.test('out of order: deleted before created and updated stays canceled', async (t) => {
    const owner = await account(app)
    const orgId = await createOrg(app, owner, 'Out of order')
    const completion = await paidCheckout(t, app, fake, owner, 'pro', orgId)
    const id = completion.subscription?.id ?? ''
    const updated = fake.updateSubscription(id, { priceId: TEAM_PRICE })
    const deleted = fake.deleteSubscription(id)

    await deliverAll(t, app, fake, [deleted])
    let view = await subscriptionOf(app, owner, orgId)
    t.equal(view.status, 'canceled', 'the deletion applies first')
    t.equal(view.plan, 'free')

    await deliverAll(t, app, fake, [...completion.events, updated])
    view = await subscriptionOf(app, owner, orgId)
    t.equal(view.status, 'canceled', 'the earlier events do not resurrect it')
    t.equal(view.plan, 'free')
    t.same(view.limits, FREE_LIMITS)
  })

  t.test('out of order: a stale update after a newer one keeps the newer state', async (t) => {
    const owner = await account(app)
    const orgId = await createOrg(app, owner, 'Stale update')
    const completion = await paidCheckout(t, app, fake, owner, 'pro', orgId)
    const id = completion.subscription?.id ?? ''
    const toTeam = fake.updateSubscription(id, { priceId: TEAM_PRICE })
    const backToPro = fake.updateSubscription(id, { priceId: PRO_PRICE })

    // The updates first, the newest first; then the subscription's creation.
    await deliverAll(t, app, fake, [backToPro, toTeam, ...completion.events])
    const view = await subscriptionOf(app, owner, orgId)
    t.equal(view.plan, 'pro', 'what the subscription is now, not what the last event said')
    t.equal(view.status, 'active')
  })

  t.test('a redelivered event is processed once and changes nothing', async (t) => {
    const owner = await account(app)
    const orgId = await createOrg(app, owner, 'Duplicates')
    const completion = await subscribe(t, app, fake, owner, 'pro', orgId)
    const id = completion.subscription?.id ?? ''
    const before = await billingAccountOf(app, orgId)
    const view = await subscriptionOf(app, owner, orgId)
    const reads = fake.requestsTo(`/v1/subscriptions/${id}`, 'GET').length

    // Stripe signs each delivery attempt anew.
    await sleep(1100)
    for (const event of completion.events) {
      const again = await deliver(app, fake, event)
      t.equal(again.statusCode, 200)
      t.same(again.json(), { received: true, duplicate: true }, `${event.type}: a duplicate`)
    }
    // Long enough for the job poller (500 ms) to have picked up anything queued.
    await sleep(1500)
    t.equal(fake.requestsTo(`/v1/subscriptions/${id}`, 'GET').length, reads, 'Stripe was not asked again')
    const after = await billingAccountOf(app, orgId)
    t.same(after?.syncedAt, before?.syncedAt, 'not synced again')
    t.same(await subscriptionOf(app, owner, orgId), view, 'the same state')
    for (const event of completion.events) {
      t.equal((await storedEvent(app, 'stripe', event.id))?.attempts, 1, `${event.type}: one attempt`)
    }
  })

  t.test('events about customers or orgs the app does not know are processed and change nothing', async (t) => {
    const owner = await account(app)
    const orgId = await createOrg(app, owner, 'Known')
    t.equal((await checkout(app, owner, 'pro', orgId)).statusCode, 201)
    const client = fake.client('sk_test_x')

    // Another customer whose subscription names this org (made in the dashboard, say): the org
    // keeps its own customer, and these events are not about its subscription.
    const stray = await client.customers.create({ metadata: { orgId } })
    const straySession = await client.checkout.sessions.create({
      mode: 'subscription',
      customer: stray.id,
      client_reference_id: orgId,
      line_items: [{ price: TEAM_PRICE, quantity: 1 }],
      success_url: 'https://example.com/ok',
      subscription_data: { metadata: { orgId } },
    })
    await deliverAll(t, app, fake, fake.completeCheckout(straySession.id).events)
    t.equal((await subscriptionOf(app, owner, orgId)).plan, 'free', 'another customer does not subscribe the org')

    // No metadata at all: nobody to apply it to.
    const anonymous = await client.customers.create({})
    const anonymousSession = await client.checkout.sessions.create({
      mode: 'subscription',
      customer: anonymous.id,
      line_items: [{ price: PRO_PRICE, quantity: 1 }],
      success_url: 'https://example.com/ok',
    })
    await deliverAll(t, app, fake, fake.completeCheckout(anonymousSession.id).events)
  })

  t.test('an event naming an org that does not exist (any more) is processed, not retried to death', async (t) => {
    const client = fake.client('sk_test_x')
    const customer = await client.customers.create({ metadata: { orgId: 'org_gone' } })
    const session = await client.checkout.sessions.create({
      mode: 'subscription',
      customer: customer.id,
      client_reference_id: 'org_gone',
      line_items: [{ price: PRO_PRICE, quantity: 1 }],
      success_url: 'https://example.com/ok',
      subscription_data: { metadata: { orgId: 'org_gone' } },
    })
    const [created] = fake.completeCheckout(session.id).events
    if (!created) throw new Error('no event')
    t.equal((await deliver(app, fake, created)).statusCode, 200)
    const ended = await settledAny(app, created.id)
    t.equal(ended?.status, 'processed', `the handler's "nothing left to bill" path (${ended?.lastError ?? ''})`)
  })
})

/** Waits until the event is processed, ignored or dead, then returns its row. */
async function settledAny(app: FastifyInstance, eventId: string) {
  const deadline = Date.now() + 20_000
  while (Date.now() < deadline) {
    const row = await storedEvent(app, 'stripe', eventId)
    if (row && ['processed', 'ignored', 'dead'].includes(row.status)) return row
    await sleep(50)
  }
  return storedEvent(app, 'stripe', eventId)
}

t.test('Stripe failing during checkout', async (t) => {
  const app = await buildTestApp(t, {
    env: billingEnv(fake, { INTEGRATION_MAX_RETRIES: '2', INTEGRATION_BREAKER_MIN_CALLS: '1000' }),
  })

  /** A 503 UPSTREAM_UNAVAILABLE a client can retry after. */
  function assertUnavailable(t: Test, response: Awaited<ReturnType<typeof checkout>>, label: string) {
    assertProblem(t, response, 503, 'UPSTREAM_UNAVAILABLE', label)
    const retryAfter = String(response.headers['retry-after'])
    t.match(retryAfter, /^\d+$/, `${label}: Retry-After in seconds`)
    t.ok(Number(retryAfter) >= 1, `${label}: Retry-After ${retryAfter}`)
    t.notMatch(response.body, /sk_test_x/, `${label}: no key in the answer`)
  }

  t.test('500s beyond the retries: 503 with Retry-After, nothing stored', async (t) => {
    const owner = await account(app)
    const from = fake.requests.length
    // One attempt and two retries, all failing.
    fake.failNext({ status: 500, times: 3 })
    assertUnavailable(t, await checkout(app, owner, 'pro'), 'customer creation failing')
    t.equal(sentSince(from, '/v1/customers').length, 3, 'tried three times')
    t.same(sentSince(from, '/v1/checkout/sessions'), [], 'no session attempted')
    t.equal(await billingAccountOf(app, owner.personalOrgId), undefined, 'no billing account')
    const view = await subscriptionOf(app, owner)
    t.equal(view.status, 'none')
    t.equal(view.plan, 'free')

    const ok = await checkout(app, owner, 'pro')
    t.equal(ok.statusCode, 201, 'works once Stripe is back')
    const attempts = sentSince(from, '/v1/customers')
    t.equal(new Set(attempts.map((request) => request.idempotencyKey)).size, 1, 'every customer attempt, one key')
  })

  t.test('a transient 500 is retried with the same idempotency key', async (t) => {
    const owner = await account(app)
    await checkout(app, owner, 'pro')
    const from = fake.requests.length
    fake.failNext({ path: '/v1/checkout/sessions', status: 500 })
    const response = await checkout(app, owner, 'team')
    t.equal(response.statusCode, 201, response.body)
    const attempts = sentSince(from, '/v1/checkout/sessions')
    t.equal(attempts.length, 2, 'two attempts')
    t.equal(attempts[0]?.idempotencyKey, attempts[1]?.idempotencyKey, 'one key')
    t.equal(attempts[1]?.status, 200)
  })

  t.test('the session failing after the customer exists: 503, the customer kept for the next try', async (t) => {
    const owner = await account(app)
    const from = fake.requests.length
    fake.failNext({ path: '/v1/checkout/sessions', status: 503, times: 3 })
    assertUnavailable(t, await checkout(app, owner, 'pro'), 'session creation failing')
    const row = await billingAccountOf(app, owner.personalOrgId)
    t.ok(row, 'the customer is recorded')
    t.equal(row?.status, null, 'no subscription state')
    t.equal((await subscriptionOf(app, owner)).plan, 'free')
    t.equal((await checkout(app, owner, 'pro')).statusCode, 201)
    t.equal(sentSince(from, '/v1/customers').length, 1, 'the customer is not created twice')
  })

  t.test('Stripe refusing the request is 502 UPSTREAM_ERROR, not retried', async (t) => {
    const owner = await account(app)
    await checkout(app, owner, 'pro')
    const from = fake.requests.length
    fake.failNext({ path: '/v1/checkout/sessions', status: 400, message: 'No such price' })
    assertProblem(t, await checkout(app, owner, 'pro'), 502, 'UPSTREAM_ERROR')
    t.equal(sentSince(from, '/v1/checkout/sessions').length, 1, 'one attempt')
  })

  t.test('the portal failing: 503 UPSTREAM_UNAVAILABLE', async (t) => {
    const owner = await account(app)
    await checkout(app, owner, 'pro')
    fake.failNext({ path: '/v1/billing_portal/sessions', status: 500, times: 3 })
    assertUnavailable(t, await portal(app, owner), 'portal')
  })
})

t.test('Stripe failing while a webhook is processed: the event is retried and then applied', async (t) => {
  const app = await buildTestApp(t, { env: billingEnv(fake, { INTEGRATION_MAX_RETRIES: '0' }) })
  const owner = await account(app)
  const completion = await paidCheckout(t, app, fake, owner, 'pro')
  const [created] = completion.events
  if (!created) throw new Error('no event')
  fake.failNext({ path: /^\/v1\/subscriptions\//, method: 'GET', status: 500 })
  t.equal((await deliver(app, fake, created)).statusCode, 200)
  t.ok(await settled(app, created), 'processed on a retry')
  t.equal((await storedEvent(app, 'stripe', created.id))?.attempts, 2, 'the second attempt')
  t.equal((await subscriptionOf(app, owner)).plan, 'pro')
})

t.test('without STRIPE_SECRET_KEY', async (t) => {
  const logs = new LogCapture()
  const { STRIPE_SECRET_KEY: _key, ...env } = billingEnv(fake)
  const app = await buildTestApp(t, { env, logs })
  const owner = await account(app)
  const from = fake.requests.length

  assertProblem(t, await checkout(app, owner, 'pro'), 503, 'NOT_CONFIGURED', 'checkout')
  assertProblem(t, await portal(app, owner), 503, 'NOT_CONFIGURED', 'portal')
  assertProblem(t, await checkout(app, owner, 'nope'), 422, 'UNKNOWN_PLAN', 'the plan is checked first')
  const view = await subscriptionOf(app, owner)
  t.equal(view.plan, 'free', 'the subscription view still works')
  t.equal(view.status, 'none')
  t.same(view.limits, FREE_LIMITS, 'with the configured limits')
  t.same(fake.requests.slice(from), [], 'Stripe was not called')

  // A verified event cannot be applied without reading Stripe: it is logged and let go.
  const stripe = fake.client('sk_test_x')
  const customer = await stripe.customers.create({})
  const session = await stripe.checkout.sessions.create({
    mode: 'subscription',
    customer: customer.id,
    client_reference_id: owner.personalOrgId,
    line_items: [{ price: PRO_PRICE, quantity: 1 }],
    success_url: 'https://example.com/ok',
  })
  const events = fake.completeCheckout(session.id).events
  const afterSetup = fake.requests.length
  await deliverAll(t, app, fake, events)
  t.equal((await subscriptionOf(app, owner)).plan, 'free', 'not applied')
  t.ok(
    logs.lines.some((line) => line.msg === 'stripe event ignored: STRIPE_SECRET_KEY is not set'),
    'and the reason is logged',
  )
  t.same(fake.requests.slice(afterSetup), [], 'nor did processing call Stripe')
})

/**
 * Last, on an app of their own: these add members and projects, which read the plan inside the
 * adding transaction, so a stall there cannot keep the tests above from reporting.
 */
t.test('usage and roles', async (t) => {
  const app = await buildTestApp(t, { env: billingEnv(fake) })

  t.test('a new org is on the free plan, status none, with the limits of config and its usage', async (t) => {
    const owner = await account(app)
    t.same(await subscriptionOf(app, owner), {
      orgId: owner.personalOrgId,
      plan: 'free',
      status: 'none',
      currentPeriodEnd: null,
      cancelAtPeriodEnd: false,
      limits: FREE_LIMITS,
      usage: { dailyTokens: 0, projects: 0, members: 1 },
    })

    const orgId = await createOrg(app, owner, 'Counted')
    const colleague = await account(app)
    await addMember(app, owner, orgId, colleague, 'member')
    const created = await callAs(app, owner, 'POST', '/projects', { orgId, name: 'first' })
    t.equal(created.statusCode, 201, 'a project in the org')
    const view = await subscriptionOf(app, owner, orgId)
    t.same(view.usage, { dailyTokens: 0, projects: 1, members: 2 }, 'usage counts the org, not the personal org')
    t.same(await subscriptionOf(app, colleague, orgId), view, 'a member reads the same view')
    t.same((await subscriptionOf(app, owner)).usage.projects, 0, 'the personal org has none')

    const outsider = await account(app)
    assertProblem(
      t,
      await callAs(app, outsider, 'GET', `/billing/subscription?orgId=${orgId}`),
      404,
      'ORG_NOT_FOUND',
      "another tenant's org",
    )
  })

  t.test('members may read the subscription, only owners and admins may pay', async (t) => {
    const owner = await account(app)
    const orgId = await createOrg(app, owner, 'Roles')
    const member = await account(app)
    await addMember(app, owner, orgId, member, 'member')
    const from = fake.requests.length
    t.equal((await subscriptionOf(app, member, orgId)).plan, 'free', 'a member reads the plan')
    assertProblem(t, await checkout(app, member, 'pro', orgId), 403, 'INSUFFICIENT_ROLE', 'a member')
    assertProblem(t, await portal(app, member, orgId), 403, 'INSUFFICIENT_ROLE', 'a member, portal')
    t.same(fake.requests.slice(from), [], 'Stripe was not called')

    // The free plan's two seats are taken: the admin gets an org of their own to pay for.
    const adminOrgId = await createOrg(app, owner, 'Administered')
    const admin = await account(app)
    await addMember(app, owner, adminOrgId, admin, 'admin')
    t.equal((await checkout(app, admin, 'pro', adminOrgId)).statusCode, 201, 'an admin may')
    t.equal((await portal(app, admin, adminOrgId)).statusCode, 201, 'the portal too')
  })
})
