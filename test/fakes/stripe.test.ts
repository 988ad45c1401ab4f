import { setTimeout as sleep } from 'node:timers/promises'
import Stripe from 'stripe'
import t from 'tap'
import { decodeStripeForm, type FakeStripe, type StripeEventObject, startFakeStripe } from './stripe.js'

/**
 * Drives the fake Stripe through the official SDK, so the fake stays true to what the SDK sends
 * and parses, and pins down how the SDK reacts to failures.
 */

const KEY = 'sk_test_backplane'
const SECRET = 'whsec_test_fake_stripe'

function sdk(fake: FakeStripe, config: Stripe.StripeConfig = {}) {
  return new Stripe(KEY, { ...fake.clientOptions, maxNetworkRetries: 0, ...config })
}

/** The rejection of a promise (fails the test if it resolves). */
async function rejection(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise
  } catch (error) {
    return error
  }
  throw new Error('expected the call to fail')
}

async function checkoutFor(fake: FakeStripe, stripe: Stripe, customer: string) {
  return stripe.checkout.sessions.create({
    mode: 'subscription',
    customer,
    line_items: [{ price: 'price_pro', quantity: 1 }],
    success_url: 'https://app.example.test/billing/success?session={CHECKOUT_SESSION_ID}',
    cancel_url: 'https://app.example.test/billing/cancel',
    client_reference_id: 'org_1',
    metadata: { orgId: 'org_1' },
    subscription_data: { metadata: { orgId: 'org_1' } },
  })
}

t.test('decodeStripeForm: bracket notation into nested objects and arrays', async (t) => {
  t.same(
    decodeStripeForm(
      'line_items[0][price]=price_x&line_items[0][quantity]=1&line_items[1][price]=price_y' +
        '&metadata[orgId]=org_1&metadata[0]=zero&subscription_data[metadata][orgId]=org_1' +
        '&expand[0]=subscription&name=Ada+Lovelace&email=a%2Bb%40example.test&empty=',
    ),
    {
      line_items: [{ price: 'price_x', quantity: '1' }, { price: 'price_y' }],
      metadata: { orgId: 'org_1', 0: 'zero' },
      subscription_data: { metadata: { orgId: 'org_1' } },
      expand: ['subscription'],
      name: 'Ada Lovelace',
      email: 'a+b@example.test',
      empty: '',
    },
  )
  t.same(decodeStripeForm('a[]=x&a[]=y&b%5Bc%5D=1'), { a: ['x', 'y'], b: { c: '1' } }, 'qs-style and encoded brackets')
  t.same(decodeStripeForm('__proto__[x]=1&a[constructor][y]=2'), {}, 'prototype keys are dropped')
})

t.test('customers: create, retrieve, update metadata, unknown id', async (t) => {
  const fake = await startFakeStripe(t)
  const stripe = sdk(fake)

  const customer = await stripe.customers.create({
    email: 'ada@example.test',
    name: 'Ada',
    metadata: { orgId: 'org_1', plan: 'free' },
  })
  t.match(customer, {
    id: /^cus_[A-Za-z0-9]{14}$/,
    object: 'customer',
    email: 'ada@example.test',
    name: 'Ada',
    metadata: { orgId: 'org_1', plan: 'free' },
    livemode: false,
  })
  t.ok(Math.abs(customer.created - Date.now() / 1000) < 5, 'created in unix seconds')
  t.match(customer.lastResponse.requestId, /^req_/, 'Request-Id header')

  const [request] = fake.requests
  t.match(request, { method: 'POST', path: '/v1/customers', apiKey: KEY, status: 200, replayed: false })
  t.match(request?.idempotencyKey, /^stripe-node-retry-/, 'the SDK keys every POST')
  t.equal(request?.rawBody, 'email=ada%40example.test&name=Ada&metadata[orgId]=org_1&metadata[plan]=free')
  t.same(request?.params, { email: 'ada@example.test', name: 'Ada', metadata: { orgId: 'org_1', plan: 'free' } })

  t.same(await stripe.customers.retrieve(customer.id), { ...customer })

  // Stripe merges metadata; an empty value deletes its key.
  const updated = await stripe.customers.update(customer.id, { metadata: { plan: '', stripeSynced: 'yes' } })
  t.same(updated.metadata, { orgId: 'org_1', stripeSynced: 'yes' })
  t.same(fake.customers.get(customer.id)?.metadata, { orgId: 'org_1', stripeSynced: 'yes' })
  t.same(
    fake.events.map((e) => e.type),
    ['customer.created', 'customer.updated'],
    'API calls log their events too',
  )
  t.same(fake.events[1]?.data.previous_attributes, { metadata: { plan: 'free', stripeSynced: null } })
  t.equal(fake.events[1]?.request.idempotency_key, fake.requests[2]?.idempotencyKey)

  const missing = await rejection(stripe.customers.retrieve('cus_missing'))
  t.type(missing, Stripe.errors.StripeInvalidRequestError)
  t.match(missing, {
    statusCode: 404,
    code: 'resource_missing',
    param: 'id',
    message: "No such customer: 'cus_missing'",
    requestId: /^req_/,
  })

  const unknown = await rejection(
    stripe.customers.create({ email: 'x@example.test', nmae: 'typo' } as Stripe.CustomerCreateParams),
  )
  t.match(unknown, { statusCode: 400, code: 'parameter_unknown', param: 'nmae' }, 'unknown parameters are refused')
})

t.test('checkout: a session for a registered price; an unknown price is refused', async (t) => {
  const fake = await startFakeStripe(t)
  const stripe = sdk(fake)
  const price = fake.addPrice('price_pro', { unitAmount: 2900, currency: 'eur', interval: 'month' })
  t.match(price, { id: 'price_pro', object: 'price', unit_amount: 2900, recurring: { interval: 'month' } })
  const customer = await stripe.customers.create({ email: 'ada@example.test' })

  const session = await checkoutFor(fake, stripe, customer.id)
  t.match(session, {
    id: /^cs_test_[A-Za-z0-9]{58}$/,
    object: 'checkout.session',
    status: 'open',
    mode: 'subscription',
    customer: customer.id,
    client_reference_id: 'org_1',
    metadata: { orgId: 'org_1' },
    amount_total: 2900,
    currency: 'eur',
    subscription: null,
    success_url: 'https://app.example.test/billing/success?session={CHECKOUT_SESSION_ID}',
  })
  t.equal(session.url, `https://checkout.stripe.test/c/pay/${session.id}`)

  const request = fake.requestsTo('/v1/checkout/sessions', 'POST')[0]
  t.match(
    request?.rawBody,
    /line_items\[0\]\[price\]=price_pro&line_items\[0\]\[quantity\]=1.*metadata\[orgId\]=org_1&subscription_data\[metadata\]\[orgId\]=org_1/,
  )
  t.match(request?.params, {
    line_items: [{ price: 'price_pro', quantity: '1' }],
    subscription_data: { metadata: { orgId: 'org_1' } },
  })

  const retrieved = await stripe.checkout.sessions.retrieve(session.id, { expand: ['line_items'] })
  t.equal(retrieved.id, session.id)
  t.match(retrieved.line_items?.data[0], { object: 'item', quantity: 1, price: { id: 'price_pro' } })

  const error = await rejection(
    stripe.checkout.sessions.create({
      mode: 'subscription',
      customer: customer.id,
      line_items: [{ price: 'price_nope', quantity: 1 }],
      success_url: 'https://app.example.test/ok',
    }),
  )
  t.type(error, Stripe.errors.StripeInvalidRequestError)
  t.match(error, {
    statusCode: 400,
    code: 'resource_missing',
    param: 'line_items[0][price]',
    message: "No such price: 'price_nope'",
  })
  t.equal(fake.checkoutSessions.size, 1, 'nothing created for the refused request')

  const noCustomer = await rejection(
    stripe.checkout.sessions.create({
      mode: 'subscription',
      customer: 'cus_gone',
      line_items: [{ price: 'price_pro', quantity: 1 }],
    }),
  )
  t.match(noCustomer, { statusCode: 400, code: 'resource_missing', param: 'customer' })
})

t.test('billing portal: a session for a customer; unknown customer', async (t) => {
  const fake = await startFakeStripe(t)
  const stripe = sdk(fake)
  const customer = await stripe.customers.create({ email: 'ada@example.test' })

  const portal = await stripe.billingPortal.sessions.create({
    customer: customer.id,
    return_url: 'https://app.example.test/settings/billing',
  })
  t.match(portal, {
    id: /^bps_/,
    object: 'billing_portal.session',
    customer: customer.id,
    return_url: 'https://app.example.test/settings/billing',
    url: /^https:\/\/billing\.stripe\.test\/p\/session\//,
    livemode: false,
  })

  const error = await rejection(stripe.billingPortal.sessions.create({ customer: 'cus_unknown' }))
  t.type(error, Stripe.errors.StripeInvalidRequestError)
  t.match(error, { code: 'resource_missing', param: 'customer', message: "No such customer: 'cus_unknown'" })
})

t.test('completeCheckout creates the subscription the SDK then retrieves', async (t) => {
  const fake = await startFakeStripe(t)
  const stripe = sdk(fake)
  fake.addPrice('price_pro', { unitAmount: 2900 })
  const customer = await stripe.customers.create({ email: 'ada@example.test' })
  const session = await checkoutFor(fake, stripe, customer.id)

  const { subscription, events } = fake.completeCheckout(session.id)
  if (!subscription) throw new Error('subscription mode makes a subscription')
  t.same(
    events.map((e) => e.type),
    ['customer.subscription.created', 'checkout.session.completed'],
  )
  t.match(events[1]?.data.object, {
    id: session.id,
    status: 'complete',
    subscription: subscription.id,
    customer: customer.id,
    client_reference_id: 'org_1',
    metadata: { orgId: 'org_1' },
    url: null,
  })
  t.match(events[0], {
    id: /^evt_/,
    object: 'event',
    api_version: Stripe.API_VERSION,
    livemode: false,
    pending_webhooks: 1,
    request: { id: null, idempotency_key: null },
  })

  const retrieved = await stripe.subscriptions.retrieve(subscription.id)
  t.match(retrieved, {
    id: /^sub_/,
    object: 'subscription',
    customer: customer.id,
    status: 'active',
    cancel_at_period_end: false,
    metadata: { orgId: 'org_1' },
    latest_invoice: /^in_/,
  })
  const item = retrieved.items.data[0]
  t.match(item, { id: /^si_/, object: 'subscription_item', quantity: 1, price: { id: 'price_pro', object: 'price' } })
  const legacy = retrieved as unknown as { current_period_start: number; current_period_end: number }
  t.equal(item?.current_period_end, legacy.current_period_end, 'the period on the item and on the subscription')
  t.equal(item?.current_period_start, legacy.current_period_start)
  t.ok(legacy.current_period_end - legacy.current_period_start >= 28 * 86_400, 'a monthly period')

  const completed = await stripe.checkout.sessions.retrieve(session.id, { expand: ['subscription'] })
  t.equal(completed.status, 'complete')
  t.match(completed.subscription, { id: subscription.id, object: 'subscription' }, 'expanded')

  t.throws(() => fake.completeCheckout(session.id), /is complete/, 'a session completes once')

  const trial = await stripe.checkout.sessions.create({
    mode: 'subscription',
    customer: customer.id,
    line_items: [{ price: 'price_pro', quantity: 2 }],
    subscription_data: { trial_period_days: 14 },
  })
  const trialing = fake.completeCheckout(trial.id).subscription
  t.match(trialing, { status: 'trialing', trial_end: Number, items: { data: [{ quantity: 2 }] } })
  t.equal((trialing?.trial_end ?? 0) - (trialing?.trial_start ?? 0), 14 * 86_400)
})

t.test('a repeated idempotency key returns the stored response', async (t) => {
  const fake = await startFakeStripe(t)
  const stripe = sdk(fake)

  const first = await stripe.customers.create({ email: 'ada@example.test' }, { idempotencyKey: 'signup-org_1' })
  const second = await stripe.customers.create({ email: 'ada@example.test' }, { idempotencyKey: 'signup-org_1' })
  t.equal(second.id, first.id)
  t.equal(fake.customers.size, 1, 'no second customer')
  t.same(
    fake.requests.map((r) => r.replayed),
    [false, true],
  )
  t.equal(second.lastResponse.headers['idempotent-replayed'], 'true')
  t.equal(second.lastResponse.headers['original-request'], first.lastResponse.requestId)
  t.not(second.lastResponse.requestId, first.lastResponse.requestId, 'each response has its own Request-Id')

  const conflict = await rejection(
    stripe.customers.create({ email: 'bob@example.test' }, { idempotencyKey: 'signup-org_1' }),
  )
  t.type(conflict, Stripe.errors.StripeIdempotencyError, 'same key, other parameters')
  const otherEndpoint = await rejection(
    stripe.billingPortal.sessions.create({ customer: first.id }, { idempotencyKey: 'signup-org_1' }),
  )
  t.type(otherEndpoint, Stripe.errors.StripeIdempotencyError, 'same key, other endpoint')
  t.equal(fake.customers.size, 1)
})

t.test('failNext answers the SDK typed errors', async (t) => {
  const fake = await startFakeStripe(t)
  const stripe = sdk(fake)

  fake.failNext({ status: 429, retryAfterSeconds: 3 })
  const limited = await rejection(stripe.customers.create({ email: 'ada@example.test' }))
  t.type(limited, Stripe.errors.StripeRateLimitError)
  const rateLimit = limited as Stripe.errors.StripeRateLimitError
  t.equal(rateLimit.statusCode, 429)
  t.equal(rateLimit.code, 'rate_limit')
  t.equal(rateLimit.headers?.['retry-after'], '3')
  t.match(rateLimit.requestId, /^req_/)
  t.equal(fake.customers.size, 0, 'a failed request does nothing')
  t.ok(await stripe.customers.create({ email: 'ada@example.test' }), 'only the next request failed')

  fake.failNext({ status: 500, times: 2, path: '/v1/balance' })
  await stripe.customers.create({ email: 'x@example.test' })
  t.type(await rejection(stripe.balance.retrieve()), Stripe.errors.StripeAPIError)
  t.type(await rejection(stripe.balance.retrieve()), Stripe.errors.StripeAPIError)
  t.match(await stripe.balance.retrieve(), { object: 'balance', available: [], pending: [], livemode: false })

  fake.failNext({ status: 402 }).failNext({ status: 401 }).failNext({ status: 403 }).failNext({ status: 409 })
  t.type(await rejection(stripe.balance.retrieve()), Stripe.errors.StripeCardError)
  t.type(await rejection(stripe.balance.retrieve()), Stripe.errors.StripeAuthenticationError)
  t.type(await rejection(stripe.balance.retrieve()), Stripe.errors.StripePermissionError)
  t.match(await rejection(stripe.balance.retrieve()), { statusCode: 409, code: 'lock_timeout' })
})

t.test('with retries the SDK retries a 500 with the same idempotency key', async (t) => {
  const fake = await startFakeStripe(t)
  const stripe = sdk(fake, { maxNetworkRetries: 1 })

  fake.failNext({ status: 500 })
  const customer = await stripe.customers.create({ email: 'ada@example.test' })
  t.match(customer.id, /^cus_/)
  t.equal(fake.requests.length, 2)
  t.equal(fake.requests[0]?.status, 500)
  t.equal(fake.requests[1]?.idempotencyKey, fake.requests[0]?.idempotencyKey)
  t.equal(fake.requests[1]?.replayed, false, 'injected failures are not stored for replay')

  // Stripe-Should-Retry: false wins over the SDK's retry-on-5xx rule.
  fake.failNext({ status: 503, shouldRetry: false })
  t.type(await rejection(stripe.balance.retrieve()), Stripe.errors.StripeAPIError)
  t.equal(fake.requests.length, 3, 'no retry')
})

t.test('hangNext: the SDK times out; its retry gets the replay', async (t) => {
  const fake = await startFakeStripe(t)

  fake.hangNext({ ms: 1000 })
  const timedOut = await rejection(sdk(fake, { timeout: 100 }).customers.create({ email: 'ada@example.test' }))
  t.type(timedOut, Stripe.errors.StripeConnectionError)
  t.match((timedOut as Error).message, /timeout/)
  // The server sees the disconnect a moment after the SDK gives up.
  for (let waited = 0; !fake.requests[0]?.clientClosed && waited < 2000; waited += 10) await sleep(10)
  t.match(fake.requests[0], { delayedMs: 1000, clientClosed: true, status: undefined })
  t.equal(fake.customers.size, 1, 'Stripe did the work; only the answer was lost')

  fake.hangNext({ ms: 1000 })
  const retrying = sdk(fake, { timeout: 300, maxNetworkRetries: 1 })
  const customer = await retrying.customers.create({ email: 'bob@example.test' })
  t.equal(fake.customers.size, 2, 'one customer for the two attempts')
  t.match(fake.requests.slice(1), [
    { replayed: false, clientClosed: true },
    { replayed: true, status: 200 },
  ])
  t.equal(fake.requests[2]?.idempotencyKey, fake.requests[1]?.idempotencyKey)
  t.ok(fake.customers.has(customer.id))
})

t.test('authentication, unknown URLs and Request-Id', async (t) => {
  const fake = await startFakeStripe(t, { apiKeys: [KEY] })

  const anonymous = await fetch(`${fake.origin}/v1/balance`)
  t.equal(anonymous.status, 401)
  t.match(anonymous.headers.get('request-id'), /^req_/)
  t.match(await anonymous.json(), { error: { type: 'invalid_request_error', message: /did not provide an API key/ } })

  const wrongKey = await rejection(new Stripe('sk_test_other', { ...fake.clientOptions }).balance.retrieve())
  t.type(wrongKey, Stripe.errors.StripeAuthenticationError)
  t.match(wrongKey, { statusCode: 401, message: /^Invalid API Key provided: sk_test_\*+ther$/ })

  const basic = await fetch(`${fake.origin}/v1/balance`, {
    headers: { authorization: `Basic ${Buffer.from(`${KEY}:`).toString('base64')}` },
  })
  t.equal(basic.status, 200, 'Basic auth, as curl -u sends it')

  const unknown = await rejection(sdk(fake).rawRequest('GET', '/v1/widgets/wd_1'))
  t.type(unknown, Stripe.errors.StripeInvalidRequestError)
  t.match(unknown, { statusCode: 404, message: /^Unrecognized request URL \(GET: \/v1\/widgets\/wd_1\)/ })
  t.ok(
    fake.requests.every((r) => /^req_/.test(r.requestId)),
    'every answer had a Request-Id',
  )
})

t.test('lifecycle events: previous_attributes, snapshots, increasing created', async (t) => {
  const fake = await startFakeStripe(t)
  const stripe = sdk(fake)
  fake.addPrice('price_pro', { unitAmount: 2900 })
  fake.addPrice('price_team', { unitAmount: 9900 })
  const customer = await stripe.customers.create({ email: 'ada@example.test' })
  const session = await checkoutFor(fake, stripe, customer.id)
  const completion = fake.completeCheckout(session.id)
  const subscription = completion.subscription
  if (!subscription) throw new Error('no subscription')
  const all: StripeEventObject[] = [...completion.events]

  const canceling = fake.updateSubscription(subscription.id, { cancelAtPeriodEnd: true })
  all.push(canceling)
  t.equal(canceling.type, 'customer.subscription.updated')
  t.match(canceling.data.object, { cancel_at_period_end: true, cancel_at: subscription.current_period_end })
  t.match(canceling.data.previous_attributes, { cancel_at_period_end: false, cancel_at: null, canceled_at: null })

  const upgrade = fake.updateSubscription(subscription.id, { priceId: 'price_team', cancelAtPeriodEnd: false })
  all.push(upgrade)
  t.match(upgrade.data.object, { items: { data: [{ price: { id: 'price_team' } }] }, cancel_at_period_end: false })
  t.match(upgrade.data.previous_attributes, {
    cancel_at_period_end: true,
    items: { data: [{ price: { id: 'price_pro' } }] },
  })
  t.match(canceling.data.object, { items: { data: [{ price: { id: 'price_pro' } }] } }, 'earlier snapshot unchanged')

  const failed = fake.paymentFailed(subscription.id)
  all.push(...failed)
  t.same(
    failed.map((e) => e.type),
    ['invoice.payment_failed', 'customer.subscription.updated'],
  )
  const invoice = failed[0]?.data.object
  t.match(invoice, {
    id: /^in_/,
    object: 'invoice',
    customer: customer.id,
    subscription: subscription.id,
    parent: { subscription_details: { subscription: subscription.id, metadata: { orgId: 'org_1' } } },
    status: 'open',
    attempt_count: 1,
    amount_due: 9900,
  })
  t.match(failed[1]?.data, { object: { status: 'past_due' }, previous_attributes: { status: 'active' } })
  t.equal((await stripe.subscriptions.retrieve(subscription.id)).status, 'past_due')
  const invoiceId = typeof invoice?.id === 'string' ? invoice.id : ''
  t.match(await stripe.invoices.retrieve(invoiceId), { id: invoiceId, status: 'open' })

  const again = fake.paymentFailed(subscription.id)
  all.push(...again)
  t.same(
    again.map((e) => e.type),
    ['invoice.payment_failed'],
    'a failed retry changes only the invoice',
  )
  t.match(again[0]?.data.object, { id: invoiceId, attempt_count: 2 })

  const recovered = fake.paymentSucceeded(subscription.id)
  all.push(...recovered)
  t.same(
    recovered.map((e) => e.type),
    ['invoice.paid', 'customer.subscription.updated'],
  )
  t.match(recovered[1]?.data.object, { status: 'active' })

  const renewed = fake.renewSubscription(subscription.id)
  all.push(...renewed)
  t.same(
    renewed.map((e) => e.type),
    ['customer.subscription.updated', 'invoice.paid'],
  )
  t.match(renewed[0]?.data, {
    object: { current_period_start: subscription.current_period_end },
    previous_attributes: { current_period_start: subscription.current_period_start },
  })

  const deleted = fake.deleteSubscription(subscription.id)
  all.push(deleted)
  t.match(deleted, { type: 'customer.subscription.deleted', data: { object: { status: 'canceled' } } })
  t.equal(deleted.data.previous_attributes, undefined)
  t.equal((await stripe.subscriptions.retrieve(subscription.id)).status, 'canceled')

  const created = all.map((e) => e.created)
  t.ok(
    created.every((c, i) => i === 0 || c > (created[i - 1] ?? Infinity)),
    `created strictly increasing: ${created.join(', ')}`,
  )
  t.ok((created[0] ?? 0) >= Math.floor(Date.now() / 1000) - 5, 'starting at the current time')
  t.same(
    fake.events.slice(-all.length).map((e) => e.id),
    all.map((e) => e.id),
    'all in the log',
  )

  // Returned events are copies: changing one in a test does not touch the fake.
  ;(all[0]?.data.object as { status?: string }).status = 'mangled'
  t.not((fake.events.find((e) => e.id === all[0]?.id)?.data.object as { status?: string }).status, 'mangled')
})

t.test('subscription updates and cancellation through the API', async (t) => {
  const fake = await startFakeStripe(t)
  const stripe = sdk(fake)
  fake.addPrice('price_pro')
  const customer = await stripe.customers.create({ email: 'ada@example.test' })
  const { subscription } = fake.completeCheckout((await checkoutFor(fake, stripe, customer.id)).id)
  if (!subscription) throw new Error('no subscription')

  const updated = await stripe.subscriptions.update(subscription.id, { cancel_at_period_end: true })
  t.equal(updated.cancel_at_period_end, true)
  t.match(fake.events.at(-1), {
    type: 'customer.subscription.updated',
    request: { id: updated.lastResponse.requestId, idempotency_key: /^stripe-node-retry-/ },
  })

  const list = await stripe.subscriptions.list({ customer: customer.id, expand: ['data.latest_invoice'] })
  t.equal(list.data.length, 1)
  t.match(list.data[0]?.latest_invoice, { object: 'invoice', status: 'paid' })

  const canceled = await stripe.subscriptions.cancel(subscription.id)
  t.equal(canceled.status, 'canceled')
  t.equal(fake.events.at(-1)?.type, 'customer.subscription.deleted')
  t.equal((await stripe.subscriptions.list({ customer: customer.id })).data.length, 0, 'canceled ones are hidden')
  t.equal((await stripe.subscriptions.list({ customer: customer.id, status: 'all' })).data.length, 1)

  const event = await stripe.events.retrieve(fake.events.at(-1)?.id ?? '')
  t.equal(event.type, 'customer.subscription.deleted')
})

t.test('signedDelivery verifies with Stripe.webhooks.constructEvent', async (t) => {
  const fake = await startFakeStripe(t)
  const stripe = sdk(fake)
  fake.addPrice('price_pro')
  const customer = await stripe.customers.create({ email: 'ada@example.test' })
  const { events } = fake.completeCheckout((await checkoutFor(fake, stripe, customer.id)).id)
  const event = events[1]
  if (!event) throw new Error('no event')

  const delivery = fake.signedDelivery(event, SECRET)
  t.match(delivery.signature, /^t=\d+,v1=[0-9a-f]{64}$/)
  t.equal(delivery.headers['stripe-signature'], delivery.signature)
  const verified = Stripe.webhooks.constructEvent(delivery.payload, delivery.signature, SECRET)
  t.same(verified, event)
  t.equal(verified.type, 'checkout.session.completed')

  const tampered = await rejection(
    (async () =>
      Stripe.webhooks.constructEvent(delivery.payload.replace('org_1', 'org_2'), delivery.signature, SECRET))(),
  )
  t.type(tampered, Stripe.errors.StripeSignatureVerificationError)
  const stale = fake.signedDelivery(event, SECRET, { timestamp: Math.floor(Date.now() / 1000) - 600 })
  t.throws(
    () => Stripe.webhooks.constructEvent(stale.payload, stale.signature, SECRET),
    /Timestamp outside the tolerance zone/,
  )
})
