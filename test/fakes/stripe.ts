import { randomBytes } from 'node:crypto'
import {
  createServer,
  type IncomingHttpHeaders,
  type IncomingMessage,
  type Server,
  type ServerResponse,
} from 'node:http'
import type { AddressInfo } from 'node:net'
import Stripe from 'stripe'
import type { Teardown } from './control.js'

/**
 * A local stand-in for the Stripe API (v1), speaking its wire format to the official `stripe` SDK
 * (`new Stripe(key, { ...fake.clientOptions, maxNetworkRetries: 0 })`): form-encoded bodies in
 * bracket notation, Bearer (or Basic) keys, `Idempotency-Key` replays, Stripe-shaped JSON objects
 * and `{error: {type, message, code, param}}` errors with a `Request-Id` header on every response.
 *
 * Served: customers (create, retrieve, update, delete), checkout sessions (create, retrieve,
 * expire), billing portal sessions (create), subscriptions (retrieve, list, update, cancel),
 * prices, invoices and events (retrieve) and the balance. Anything else is Stripe's 404.
 *
 * What a customer does outside the API (paying in Checkout, a card failing at renewal) is
 * simulated by methods (`completeCheckout`, `paymentFailed`…) that change the state and return
 * the Stripe events that would follow, without delivering them: the test picks the order and
 * signs each delivery with `signedDelivery`. Every event (API-caused ones too) is also in `events`.
 */
export class FakeStripe {
  readonly requests: RecordedStripeRequest[] = []
  /** Every event the fake produced, in order (including `customer.created` etc. caused by API calls). */
  readonly events: StripeEventObject[] = []
  readonly apiVersion: string
  private readonly server: Server
  private readonly apiKeys: ReadonlySet<string> | undefined
  private readonly failures: QueuedFailure[] = []
  private readonly hangs: QueuedHang[] = []
  private readonly pauses = new Set<() => void>()
  private readonly idempotent = new Map<string, StoredResponse>()
  private readonly priceStore = new Map<string, FakePrice>()
  private readonly customerStore = new Map<string, FakeCustomer>()
  private readonly deletedCustomers = new Set<string>()
  private readonly checkoutStore = new Map<string, FakeCheckoutSession>()
  private readonly checkoutInternals = new Map<string, CheckoutInternals>()
  private readonly portalStore = new Map<string, FakePortalSession>()
  private readonly subscriptionStore = new Map<string, FakeSubscription>()
  private readonly invoiceStore = new Map<string, FakeInvoice>()
  private readonly portalConfiguration = stripeId('bpc_', 24)
  private clock = 0
  private listeningPort = 0
  private shuttingDown = false

  constructor(options: FakeStripeOptions = {}) {
    this.apiVersion = options.apiVersion ?? Stripe.API_VERSION
    this.apiKeys = options.apiKeys ? new Set(options.apiKeys) : undefined
    this.server = createServer((req, res) => {
      this.dispatch(req, res).catch((error: unknown) => {
        console.error('fake Stripe: handler failed', error)
        res.destroy()
      })
    })
  }

  /** 0 until started. */
  get port(): number {
    return this.listeningPort
  }

  /** `http://127.0.0.1:PORT` */
  get origin(): string {
    return `http://127.0.0.1:${this.listeningPort}`
  }

  /** Spread into the SDK config: `new Stripe(key, { ...fake.clientOptions, maxNetworkRetries: 0 })`. */
  get clientOptions(): { host: string; port: number; protocol: 'http' } {
    return { host: '127.0.0.1', port: this.listeningPort, protocol: 'http' as const }
  }

  /** An SDK client pointed at the fake, without retries unless `config` says otherwise. */
  client(apiKey = 'sk_test_fake', config: Stripe.StripeConfig = {}): Stripe {
    return new Stripe(apiKey, { maxNetworkRetries: 0, ...config, ...this.clientOptions })
  }

  /** Live state, keyed by id (read it; change it through the API or the simulation methods). */
  get prices(): ReadonlyMap<string, FakePrice> {
    return this.priceStore
  }

  get customers(): ReadonlyMap<string, FakeCustomer> {
    return this.customerStore
  }

  get checkoutSessions(): ReadonlyMap<string, FakeCheckoutSession> {
    return this.checkoutStore
  }

  get portalSessions(): ReadonlyMap<string, FakePortalSession> {
    return this.portalStore
  }

  get subscriptions(): ReadonlyMap<string, FakeSubscription> {
    return this.subscriptionStore
  }

  get invoices(): ReadonlyMap<string, FakeInvoice> {
    return this.invoiceStore
  }

  async start(): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject)
      this.server.listen(0, '127.0.0.1', () => resolve())
    })
    this.listeningPort = (this.server.address() as AddressInfo).port
  }

  /** Stops serving, delayed answers and keep-alive connections included; idempotent. */
  async close(): Promise<void> {
    if (this.shuttingDown) return
    this.shuttingDown = true
    for (const cancel of [...this.pauses]) cancel()
    this.server.closeAllConnections()
    await new Promise<void>((resolve) => this.server.close(() => resolve()))
  }

  /** Requests to a path (exact string or pattern), optionally of one method. */
  requestsTo(path: string | RegExp, method?: string): RecordedStripeRequest[] {
    return this.requests.filter((r) => matches({ path, method }, r.method, r.path))
  }

  /** Registers a price (as if created in the dashboard); `interval: null` makes a one-time price. */
  addPrice(id: string, options: AddPriceOptions = {}): FakePrice {
    const interval = options.interval === undefined ? 'month' : options.interval
    const unitAmount = options.unitAmount ?? 1000
    const price: FakePrice = {
      id,
      object: 'price',
      active: true,
      billing_scheme: 'per_unit',
      created: nowSeconds(),
      currency: options.currency ?? 'usd',
      livemode: false,
      lookup_key: options.lookupKey ?? null,
      metadata: { ...options.metadata },
      nickname: null,
      product: options.product ?? stripeId('prod_', 14),
      recurring:
        interval === null
          ? null
          : {
              interval,
              interval_count: options.intervalCount ?? 1,
              meter: null,
              trial_period_days: null,
              usage_type: 'licensed',
            },
      tax_behavior: 'unspecified',
      tiers_mode: null,
      transform_quantity: null,
      type: interval === null ? 'one_time' : 'recurring',
      unit_amount: unitAmount,
      unit_amount_decimal: String(unitAmount),
    }
    this.priceStore.set(id, price)
    return clone(price)
  }

  /**
   * The next `times` (default 1) requests matching `path`/`method` (default: any) are answered
   * with this error instead of being processed, so nothing is stored for their idempotency key
   * and a retry with the same key runs normally. Queued: later calls apply after earlier ones.
   */
  failNext(options: FailOptions): this {
    this.failures.push({ ...options, remaining: options.times ?? 1 })
    return this
  }

  /**
   * Delays the answer (a `failNext` error included) to the next `times` (default 1) matching
   * requests by `ms`. The request is
   * processed (and its idempotent result stored) first, as when Stripe did the work but the
   * answer was slow: a client that times out and retries with the same key gets the replay.
   */
  hangNext(options: HangOptions): this {
    this.hangs.push({ ...options, remaining: options.times ?? 1 })
    return this
  }

  /**
   * The customer pays in Checkout. In `subscription` mode this creates the subscription (status
   * `options.status`, default `trialing` if `subscription_data[trial_period_days]` was given,
   * else `active`) from the session's line items, with `subscription_data[metadata]` as its
   * metadata, and its first (paid) invoice. A session without `customer` gets a new customer.
   *
   * Events, in Stripe's order: [`customer.created` (only for a new customer),
   * `customer.subscription.created` (subscription mode), `checkout.session.completed`].
   */
  completeCheckout(sessionId: string, options: CompleteCheckoutOptions = {}): CheckoutCompletion {
    const session = this.checkoutStore.get(sessionId)
    const internals = this.checkoutInternals.get(sessionId)
    if (!session || !internals) throw new Error(`fake Stripe: no checkout session ${sessionId}`)
    if (session.status !== 'open') throw new Error(`fake Stripe: checkout session ${sessionId} is ${session.status}`)
    const events: StripeEventObject[] = []

    let customer = session.customer ? this.customerStore.get(session.customer) : undefined
    if (!customer) {
      const email = options.email ?? session.customer_email ?? 'customer@example.test'
      customer = this.newCustomer({ email, name: options.name ?? null })
      events.push(this.emit('customer.created', customer, this.tick()))
    }

    let subscription: FakeSubscription | undefined
    let invoice: FakeInvoice | undefined
    if (session.mode === 'subscription') {
      const at = this.tick()
      const trialDays = internals.trialPeriodDays
      const status = options.status ?? (trialDays === undefined ? 'active' : 'trialing')
      const first = internals.lineItems[0]
      if (!first) throw new Error(`fake Stripe: checkout session ${sessionId} has no line items`)
      const periodEnd =
        status === 'trialing'
          ? at + (trialDays ?? 14) * DAY
          : addInterval(at, first.price.recurring?.interval ?? 'month', first.price.recurring?.interval_count ?? 1)
      const id = stripeId('sub_', 24)
      subscription = {
        id,
        object: 'subscription',
        application: null,
        billing_cycle_anchor: periodEnd,
        cancel_at: null,
        cancel_at_period_end: false,
        canceled_at: null,
        cancellation_details: { comment: null, feedback: null, reason: null },
        collection_method: 'charge_automatically',
        created: at,
        currency: first.price.currency,
        current_period_end: periodEnd,
        current_period_start: at,
        customer: customer.id,
        default_payment_method: stripeId('pm_', 24),
        description: null,
        discounts: [],
        ended_at: null,
        items: {
          object: 'list',
          data: internals.lineItems.map((line) => ({
            id: stripeId('si_', 14),
            object: 'subscription_item',
            created: at,
            current_period_end: periodEnd,
            current_period_start: at,
            discounts: [],
            metadata: {},
            price: clone(line.price),
            quantity: line.quantity,
            subscription: id,
            tax_rates: [],
          })),
          has_more: false,
          total_count: internals.lineItems.length,
          url: `/v1/subscription_items?subscription=${id}`,
        },
        latest_invoice: null,
        livemode: false,
        metadata: { ...internals.subscriptionMetadata },
        pause_collection: null,
        schedule: null,
        start_date: at,
        status,
        test_clock: null,
        trial_end: status === 'trialing' ? periodEnd : null,
        trial_start: status === 'trialing' ? at : null,
      }
      invoice = this.newInvoice(subscription, 'subscription_create', at, status === 'trialing' ? 0 : undefined)
      this.markPaid(invoice, at)
      subscription.latest_invoice = invoice.id
      this.subscriptionStore.set(id, subscription)
      events.push(this.emit('customer.subscription.created', subscription, at))
    }

    const at = this.tick()
    session.status = 'complete'
    session.customer = customer.id
    session.customer_details = { email: customer.email, name: customer.name, phone: null, tax_exempt: 'none' }
    session.payment_status =
      session.mode === 'setup' || subscription?.status === 'trialing' ? 'no_payment_required' : 'paid'
    session.subscription = subscription?.id ?? null
    session.invoice = invoice?.id ?? null
    session.url = null
    events.push(this.emit('checkout.session.completed', session, at))
    return {
      session: clone(session),
      customer: clone(customer),
      subscription: subscription && clone(subscription),
      invoice: invoice && clone(invoice),
      events,
    }
  }

  /** The session times out unpaid: status `expired`; the `checkout.session.expired` event. */
  expireCheckout(sessionId: string): StripeEventObject {
    const session = this.checkoutStore.get(sessionId)
    if (!session) throw new Error(`fake Stripe: no checkout session ${sessionId}`)
    if (session.status !== 'open') throw new Error(`fake Stripe: checkout session ${sessionId} is ${session.status}`)
    session.status = 'expired'
    session.url = null
    return this.emit('checkout.session.expired', session, this.tick())
  }

  /**
   * Changes a subscription as the dashboard, the portal or Stripe itself would; the
   * `customer.subscription.updated` event, whose `previous_attributes` hold the old values of what
   * changed (nested objects: only their changed keys; `items` as `{data: [old items]}`).
   */
  updateSubscription(id: string, patch: SubscriptionPatch): StripeEventObject {
    const subscription = this.requireSubscription(id)
    const at = this.tick()
    const previous = this.changeSubscription(subscription, patch, at)
    return this.emit('customer.subscription.updated', subscription, at, previous)
  }

  /**
   * The period ends and the renewal invoice is paid: the period moves one price interval on,
   * `past_due` becomes `active`. Events: [`customer.subscription.updated`, `invoice.paid`].
   */
  renewSubscription(id: string): StripeEventObject[] {
    const subscription = this.requireSubscription(id, { live: true })
    const price = subscription.items.data[0]?.price
    const start = subscription.current_period_end
    const end = addInterval(start, price?.recurring?.interval ?? 'month', price?.recurring?.interval_count ?? 1)
    const at = this.tick()
    const invoice = this.newInvoice(subscription, 'subscription_cycle', at)
    this.markPaid(invoice, at)
    const previous = this.changeSubscription(
      subscription,
      {
        periodStart: start,
        periodEnd: end,
        latestInvoice: invoice.id,
        ...(subscription.status === 'past_due' || subscription.status === 'trialing' ? { status: 'active' } : {}),
      },
      at,
    )
    const updated = this.emit('customer.subscription.updated', subscription, at, previous)
    return [updated, this.emit('invoice.paid', invoice, this.tick())]
  }

  /**
   * A charge for the subscription fails: the open invoice's attempt is counted (a new open
   * invoice if the latest one is paid) and the subscription becomes `past_due`. Events:
   * [`invoice.payment_failed`, `customer.subscription.updated`] (the latter only if the
   * subscription changed, so not for a retry that fails again).
   */
  paymentFailed(subscriptionId: string): StripeEventObject[] {
    const subscription = this.requireSubscription(subscriptionId, { live: true })
    const at = this.tick()
    const latest = subscription.latest_invoice ? this.invoiceStore.get(subscription.latest_invoice) : undefined
    const invoice = latest?.status === 'open' ? latest : this.newInvoice(subscription, 'subscription_cycle', at)
    invoice.attempted = true
    invoice.attempt_count++
    invoice.next_payment_attempt = at + 3 * DAY
    const failed = this.emit('invoice.payment_failed', invoice, at)
    const updateAt = this.tick()
    const previous = this.changeSubscription(subscription, { status: 'past_due', latestInvoice: invoice.id }, updateAt)
    if (Object.keys(previous).length === 0) return [failed]
    return [failed, this.emit('customer.subscription.updated', subscription, updateAt, previous)]
  }

  /**
   * The open invoice is paid after all (card updated, retry succeeded): `past_due` becomes
   * `active`. Events: [`invoice.paid`, `customer.subscription.updated` (if it changed)].
   */
  paymentSucceeded(subscriptionId: string): StripeEventObject[] {
    const subscription = this.requireSubscription(subscriptionId, { live: true })
    const latest = subscription.latest_invoice ? this.invoiceStore.get(subscription.latest_invoice) : undefined
    if (latest?.status !== 'open') throw new Error(`fake Stripe: subscription ${subscriptionId} has no open invoice`)
    const at = this.tick()
    latest.attempt_count++
    this.markPaid(latest, at)
    const paid = this.emit('invoice.paid', latest, at)
    if (subscription.status !== 'past_due' && subscription.status !== 'unpaid') return [paid]
    const updateAt = this.tick()
    const previous = this.changeSubscription(subscription, { status: 'active' }, updateAt)
    return [paid, this.emit('customer.subscription.updated', subscription, updateAt, previous)]
  }

  /** The subscription ends now (canceled, or the period ended after cancel_at_period_end): the `customer.subscription.deleted` event. */
  deleteSubscription(id: string, options: { reason?: CancellationReason } = {}): StripeEventObject {
    const subscription = this.requireSubscription(id)
    const at = this.tick()
    this.endSubscription(subscription, at, options.reason ?? 'cancellation_requested')
    return this.emit('customer.subscription.deleted', subscription, at)
  }

  /**
   * A delivery as Stripe sends it: the event pretty-printed as Stripe does (so tests exercise the
   * raw-body verification) and its `Stripe-Signature` for `secret`, signed now unless `timestamp`
   * (unix seconds) is given.
   */
  signedDelivery(event: StripeEventObject, secret: string, options: { timestamp?: number } = {}): SignedDelivery {
    const payload = JSON.stringify(event, null, 2)
    const signature = Stripe.webhooks.generateTestHeaderString({
      payload,
      secret,
      ...(options.timestamp === undefined ? {} : { timestamp: options.timestamp }),
    })
    return {
      payload,
      signature,
      headers: { 'content-type': 'application/json; charset=utf-8', 'stripe-signature': signature },
    }
  }

  // --- HTTP ---

  private async dispatch(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const receivedAt = Date.now()
    const url = new URL(req.url ?? '/', 'http://localhost')
    const method = (req.method ?? 'GET').toUpperCase()
    let rawBody = ''
    try {
      req.setEncoding('utf8')
      for await (const chunk of req) rawBody += chunk as string
    } catch {
      return
    }
    const query = url.search.slice(1)
    const record: RecordedStripeRequest = {
      index: this.requests.length,
      method,
      path: url.pathname,
      query,
      headers: req.headers,
      apiKey: apiKeyOf(req.headers),
      idempotencyKey: headerOf(req.headers, 'idempotency-key'),
      stripeVersion: headerOf(req.headers, 'stripe-version'),
      rawBody,
      params: decodeStripeForm(method === 'POST' ? rawBody : query),
      requestId: stripeId('req_', 14),
      receivedAt,
      status: undefined,
      replayed: false,
      failed: undefined,
      delayedMs: 0,
      clientClosed: false,
      response: undefined,
    }
    this.requests.push(record)
    res.on('close', () => {
      if (!res.writableFinished && !this.shuttingDown) record.clientClosed = true
    })

    const hang = takeQueued(this.hangs, method, record.path)
    const failure = takeQueued(this.failures, method, record.path)
    let answer: Answer
    if (failure) {
      const { remaining: _remaining, ...failed } = failure
      record.failed = failed
      answer = injectedFailure(failure)
    } else {
      answer = this.answer(record)
    }
    if (hang) {
      record.delayedMs = hang.ms
      if (!(await this.pause(hang.ms, res))) return
    }
    this.send(res, record, answer)
  }

  /** Waits; false if the client or the fake closed the connection meanwhile. */
  private pause(ms: number, res: ServerResponse): Promise<boolean> {
    return new Promise((resolve) => {
      const finish = (answered: boolean) => {
        clearTimeout(timer)
        res.off('close', cancel)
        this.pauses.delete(cancel)
        resolve(answered)
      }
      const cancel = () => finish(false)
      const timer = setTimeout(() => finish(!res.destroyed), ms)
      res.once('close', cancel)
      this.pauses.add(cancel)
    })
  }

  private send(res: ServerResponse, record: RecordedStripeRequest, answer: Answer): void {
    if (res.destroyed || res.writableEnded) return
    const body = answer.body
    if (isRecord(body) && isRecord(body.error) && body.error.request_log_url === undefined) {
      body.error.request_log_url = `https://dashboard.stripe.com/test/logs/${record.requestId}?t=${nowSeconds()}`
    }
    record.status = answer.status
    record.response = body
    const headers: Record<string, string> = {
      'Content-Type': 'application/json',
      'Request-Id': record.requestId,
      'Stripe-Version': record.stripeVersion ?? this.apiVersion,
      'Cache-Control': 'no-cache, no-store',
      ...answer.headers,
    }
    if (record.method === 'POST' && record.idempotencyKey !== undefined) {
      headers['Idempotency-Key'] = record.idempotencyKey
    }
    res.writeHead(answer.status, headers)
    res.end(JSON.stringify(body, null, 2))
  }

  /** Authentication, idempotency, then the endpoint; errors become Stripe's error answers. */
  private answer(record: RecordedStripeRequest): Answer {
    try {
      const apiKey = this.authenticate(record)
      const key = record.method === 'POST' ? record.idempotencyKey : undefined
      const slot = key === undefined ? undefined : `${apiKey}\u0000${key}`
      const stored = slot === undefined ? undefined : this.idempotent.get(slot)
      if (stored && key !== undefined) {
        if (stored.endpoint !== `${record.method} ${record.path}`) {
          throw idempotencyError(
            `Keys for idempotent requests can only be used for the same endpoint they were first used for ('${stored.endpoint}' vs '${record.method} ${record.path}'). Try using a key other than '${key}' if you meant to execute a different request.`,
          )
        }
        if (stored.rawBody !== record.rawBody) {
          throw idempotencyError(
            `Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '${key}' if you meant to execute a different request.`,
          )
        }
        record.replayed = true
        return {
          status: stored.status,
          body: JSON.parse(stored.body) as unknown,
          headers: { 'Idempotent-Replayed': 'true', 'Original-Request': stored.requestId },
        }
      }
      const answer = this.route(record)
      // Stripe keeps the result only once the endpoint ran: validation errors are not replayed.
      if (slot !== undefined && answer.status < 400) {
        this.idempotent.set(slot, {
          endpoint: `${record.method} ${record.path}`,
          rawBody: record.rawBody,
          status: answer.status,
          body: JSON.stringify(answer.body),
          requestId: record.requestId,
        })
      }
      return answer
    } catch (error) {
      if (error instanceof ApiError)
        return { status: error.status, body: { error: error.body }, headers: error.headers }
      throw error
    }
  }

  private authenticate(record: RecordedStripeRequest): string {
    const key = record.apiKey
    if (key === undefined || key === '') {
      throw new ApiError(
        401,
        {
          type: 'invalid_request_error',
          message:
            "You did not provide an API key. You need to provide your API key in the Authorization header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY'). See https://stripe.com/docs/api#authentication for details, or we can help at https://support.stripe.com/.",
        },
        { 'WWW-Authenticate': 'Basic realm="Stripe"' },
      )
    }
    const accepted = this.apiKeys ? this.apiKeys.has(key) : /^(sk|rk)_/.test(key)
    if (!accepted) {
      throw new ApiError(
        401,
        { type: 'invalid_request_error', code: 'api_key_invalid', message: `Invalid API Key provided: ${redact(key)}` },
        { 'WWW-Authenticate': 'Basic realm="Stripe"' },
      )
    }
    return key
  }

  private route(record: RecordedStripeRequest): Answer {
    const { method, path, params } = record
    const cause = { id: record.requestId, idempotency_key: record.idempotencyKey ?? null }
    const segments = path.split('/').slice(1).map(safeDecode)
    const [version, resource, second, third, fourth] = segments
    const depth = segments.length
    if (version === 'v1') {
      if (resource === 'customers') {
        if (depth === 2 && method === 'POST') return ok(this.createCustomer(params, cause))
        if (depth === 3 && second !== undefined) {
          if (method === 'GET') return ok(this.retrieve(this.retrieveCustomer(second), params))
          if (method === 'POST') return ok(this.updateCustomer(second, params, cause))
          if (method === 'DELETE') return ok(this.deleteCustomer(second, cause))
        }
      }
      if (resource === 'checkout' && second === 'sessions') {
        if (depth === 3 && method === 'POST') return ok(this.createCheckoutSession(params))
        if (depth === 4 && third !== undefined && method === 'GET') {
          return ok(this.retrieve(this.found(this.checkoutStore, 'checkout.session', third), params))
        }
        if (depth === 5 && third !== undefined && fourth === 'expire' && method === 'POST') {
          return ok(this.expireCheckoutByApi(third, params, cause))
        }
      }
      if (resource === 'billing_portal' && second === 'sessions' && depth === 3 && method === 'POST') {
        return ok(this.createPortalSession(params))
      }
      if (resource === 'subscriptions') {
        if (depth === 2 && method === 'GET') return ok(this.listSubscriptions(params))
        if (depth === 3 && second !== undefined) {
          if (method === 'GET')
            return ok(this.retrieve(this.found(this.subscriptionStore, 'subscription', second), params))
          if (method === 'POST') return ok(this.updateSubscriptionByApi(second, params, cause))
          if (method === 'DELETE') return ok(this.cancelSubscriptionByApi(second, params, cause))
        }
      }
      if (depth === 3 && second !== undefined && method === 'GET') {
        if (resource === 'prices') return ok(this.retrieve(this.found(this.priceStore, 'price', second), params))
        if (resource === 'invoices') return ok(this.retrieve(this.found(this.invoiceStore, 'invoice', second), params))
        if (resource === 'events') {
          const event = this.events.find((e) => e.id === second)
          if (!event) throw noSuch('event', second, 'id', 404)
          allowOnly(params, ['expand'])
          return ok(clone(event))
        }
      }
      if (resource === 'balance' && depth === 2 && method === 'GET') {
        allowOnly(params, ['expand'])
        return ok({ object: 'balance', available: [], connect_reserved: [], livemode: false, pending: [] })
      }
    }
    throw new ApiError(404, {
      type: 'invalid_request_error',
      message: `Unrecognized request URL (${method}: ${path}). Please see https://stripe.com/docs or we can help at https://support.stripe.com/.`,
    })
  }

  // --- endpoints ---

  private createCustomer(params: StripeParams, cause: EventRequest): FakeCustomer {
    allowOnly(params, CUSTOMER_PARAMS)
    const customer = this.newCustomer({
      email: nullableString(params, 'email'),
      name: nullableString(params, 'name'),
      description: nullableString(params, 'description'),
      phone: nullableString(params, 'phone'),
      metadata: metadataParam(params.metadata, {}),
    })
    this.emit('customer.created', customer, this.tick(), undefined, cause)
    return this.expanded(customer, params)
  }

  private retrieveCustomer(id: string): FakeCustomer | DeletedObject {
    if (this.deletedCustomers.has(id)) return { id, object: 'customer', deleted: true }
    return this.found(this.customerStore, 'customer', id)
  }

  private updateCustomer(id: string, params: StripeParams, cause: EventRequest): FakeCustomer {
    const customer = this.found(this.customerStore, 'customer', id)
    allowOnly(params, CUSTOMER_PARAMS)
    const before = clone(customer)
    for (const field of ['email', 'name', 'description', 'phone'] as const) {
      const value = nullableString(params, field)
      if (value !== undefined) customer[field] = value
    }
    customer.metadata = metadataParam(params.metadata, customer.metadata)
    const previous = previousAttributes(before, customer)
    if (Object.keys(previous).length > 0) this.emit('customer.updated', customer, this.tick(), previous, cause)
    return this.expanded(customer, params)
  }

  private deleteCustomer(id: string, cause: EventRequest): DeletedObject {
    const customer = this.found(this.customerStore, 'customer', id)
    this.customerStore.delete(id)
    this.deletedCustomers.add(id)
    this.emit('customer.deleted', customer, this.tick(), undefined, cause)
    return { id, object: 'customer', deleted: true }
  }

  private createCheckoutSession(params: StripeParams): FakeCheckoutSession {
    allowOnly(params, CHECKOUT_PARAMS)
    const mode = stringParam(params, 'mode')
    if (mode === undefined) throw missingParam('mode')
    if (mode !== 'subscription' && mode !== 'payment' && mode !== 'setup') {
      throw invalidRequest(`Invalid mode: must be one of payment, setup, or subscription`, 'mode')
    }
    const customerId = stringParam(params, 'customer')
    if (customerId !== undefined && !this.customerStore.has(customerId))
      throw noSuch('customer', customerId, 'customer')
    for (const name of ['success_url', 'cancel_url']) {
      const value = stringParam(params, name)
      if (value !== undefined && !URL.canParse(value)) throw invalidRequest('Not a valid URL', name, 'url_invalid')
    }
    if (params.subscription_data !== undefined && mode !== 'subscription') {
      throw invalidRequest(`You can not pass \`subscription_data\` in \`${mode}\` mode.`, 'subscription_data')
    }

    const lineItems = this.checkoutLineItems(params.line_items, mode)
    const subscriptionData = recordParam(params, 'subscription_data')
    const trialDays = subscriptionData ? integerParam(subscriptionData, 'trial_period_days') : undefined
    const created = nowSeconds()
    const amount = lineItems.reduce((sum, line) => sum + (line.price.unit_amount ?? 0) * line.quantity, 0)
    const id = stripeId('cs_test_', 58)
    const session: FakeCheckoutSession = {
      id,
      object: 'checkout.session',
      after_expiration: null,
      allow_promotion_codes: null,
      amount_subtotal: mode === 'setup' ? null : amount,
      amount_total: mode === 'setup' ? null : amount,
      automatic_tax: { enabled: false, liability: null, status: null },
      billing_address_collection: null,
      cancel_url: stringParam(params, 'cancel_url') ?? null,
      client_reference_id: nullableString(params, 'client_reference_id') ?? null,
      created,
      currency: lineItems[0]?.price.currency ?? null,
      customer: customerId ?? null,
      customer_creation: customerId !== undefined ? null : mode === 'subscription' ? 'always' : 'if_required',
      customer_details: null,
      customer_email: nullableString(params, 'customer_email') ?? null,
      expires_at: created + DAY,
      invoice: null,
      livemode: false,
      locale: nullableString(params, 'locale') ?? null,
      metadata: metadataParam(params.metadata, {}),
      mode,
      payment_intent: null,
      payment_method_collection: mode === 'subscription' ? 'always' : null,
      payment_method_types: ['card'],
      payment_status: mode === 'setup' ? 'no_payment_required' : 'unpaid',
      return_url: null,
      setup_intent: null,
      status: 'open',
      submit_type: null,
      subscription: null,
      success_url: stringParam(params, 'success_url') ?? null,
      total_details: { amount_discount: 0, amount_shipping: 0, amount_tax: 0 },
      ui_mode: 'hosted',
      url: `https://checkout.stripe.test/c/pay/${id}`,
    }
    this.checkoutStore.set(id, session)
    this.checkoutInternals.set(id, {
      lineItems,
      subscriptionMetadata: metadataParam(subscriptionData?.metadata, {}),
      trialPeriodDays: trialDays,
    })
    return this.expanded(session, params)
  }

  private checkoutLineItems(value: StripeParamValue | undefined, mode: string): CheckoutLineItem[] {
    if (value === undefined || value === '') {
      if (mode === 'setup') return []
      throw missingParam('line_items')
    }
    if (!Array.isArray(value)) throw invalidRequest('Invalid array', 'line_items')
    const lines = value.map((item, index) => {
      const param = `line_items[${index}]`
      if (!isRecord(item)) throw invalidRequest('Invalid hash', param)
      allowOnly(item, LINE_ITEM_PARAMS, param)
      if (item.price_data !== undefined) throw invalidRequest('price_data is not supported by the fake', param)
      const priceId = stringParam(item, 'price', `${param}[price]`)
      if (priceId === undefined) throw missingParam(`${param}[price]`)
      const price = this.priceStore.get(priceId)
      if (!price) throw noSuch('price', priceId, `${param}[price]`)
      const quantity = integerParam(item, 'quantity', `${param}[quantity]`)
      if (quantity === undefined) {
        throw invalidRequest(`Quantity is required. Add \`quantity\` to \`${param}\``, `${param}[quantity]`)
      }
      if (quantity < 1) throw invalidRequest('This value must be greater than or equal to 1.', `${param}[quantity]`)
      if (mode === 'payment' && price.recurring !== null) {
        throw invalidRequest(
          'You specified `payment` mode but passed a recurring price. Either switch to `subscription` mode or use only one-time prices.',
          `${param}[price]`,
        )
      }
      return { id: stripeId('li_', 24), price: clone(price), quantity }
    })
    if (mode === 'subscription' && !lines.some((line) => line.price.recurring !== null)) {
      throw invalidRequest(
        'You must provide at least one recurring price in `subscription` mode when using prices.',
        'line_items',
      )
    }
    return lines
  }

  private expireCheckoutByApi(id: string, params: StripeParams, cause: EventRequest): FakeCheckoutSession {
    const session = this.found(this.checkoutStore, 'checkout.session', id)
    allowOnly(params, ['expand'])
    if (session.status !== 'open') {
      throw invalidRequest(
        `Only Checkout Sessions with a status in ["open"] can be expired. This Checkout Session has a status of "${session.status}".`,
      )
    }
    session.status = 'expired'
    session.url = null
    this.emit('checkout.session.expired', session, this.tick(), undefined, cause)
    return this.expanded(session, params)
  }

  private createPortalSession(params: StripeParams): FakePortalSession {
    allowOnly(params, PORTAL_PARAMS)
    const customerId = stringParam(params, 'customer')
    if (customerId === undefined) throw missingParam('customer')
    if (!this.customerStore.has(customerId)) throw noSuch('customer', customerId, 'customer')
    const returnUrl = stringParam(params, 'return_url')
    if (returnUrl !== undefined && !URL.canParse(returnUrl))
      throw invalidRequest('Not a valid URL', 'return_url', 'url_invalid')
    const id = stripeId('bps_', 24)
    const session: FakePortalSession = {
      id,
      object: 'billing_portal.session',
      configuration: stringParam(params, 'configuration') ?? this.portalConfiguration,
      created: nowSeconds(),
      customer: customerId,
      flow: null,
      livemode: false,
      locale: nullableString(params, 'locale') ?? null,
      on_behalf_of: null,
      return_url: returnUrl ?? null,
      url: `https://billing.stripe.test/p/session/test_${stripeId('', 40)}`,
    }
    this.portalStore.set(id, session)
    return clone(session)
  }

  private listSubscriptions(params: StripeParams): unknown {
    allowOnly(params, ['customer', 'price', 'status', 'limit', 'expand', 'starting_after', 'ending_before', 'created'])
    const customer = stringParam(params, 'customer')
    const price = stringParam(params, 'price')
    const status = stringParam(params, 'status')
    const limit = integerParam(params, 'limit') ?? 10
    if (limit < 1 || limit > 100) throw invalidRequest('This value must be between 1 and 100.', 'limit')
    const all = [...this.subscriptionStore.values()]
      .filter((s) => customer === undefined || s.customer === customer)
      .filter((s) => price === undefined || s.items.data.some((item) => item.price.id === price))
      .filter((s) => (status === undefined ? s.status !== 'canceled' : status === 'all' || s.status === status))
      .sort((a, b) => b.created - a.created)
    const data = all.slice(0, limit).map((s) => clone(s) as unknown as Record<string, unknown>)
    const list = { object: 'list', data, has_more: all.length > limit, url: '/v1/subscriptions' }
    this.expand(list, expandParam(params))
    return list
  }

  private updateSubscriptionByApi(id: string, params: StripeParams, cause: EventRequest): FakeSubscription {
    const subscription = this.found(this.subscriptionStore, 'subscription', id)
    allowOnly(params, SUBSCRIPTION_UPDATE_PARAMS)
    if (subscription.status === 'canceled') {
      throw invalidRequest('A canceled subscription can only update its cancellation_details and metadata.')
    }
    const patch: SubscriptionPatch = {}
    const cancelAtPeriodEnd = booleanParam(params, 'cancel_at_period_end')
    if (cancelAtPeriodEnd !== undefined) patch.cancelAtPeriodEnd = cancelAtPeriodEnd
    if (params.metadata !== undefined) patch.metadata = metadataParam(params.metadata, subscription.metadata)
    if (params.items !== undefined) {
      const items = params.items
      if (!Array.isArray(items) || !isRecord(items[0]) || items.length !== 1) {
        throw invalidRequest('The fake supports changing exactly one item: items[0][price]', 'items')
      }
      const item = items[0]
      allowOnly(item, ['id', 'price', 'quantity', 'metadata'], 'items[0]')
      const itemId = stringParam(item, 'id', 'items[0][id]')
      if (itemId !== undefined && !subscription.items.data.some((existing) => existing.id === itemId)) {
        throw noSuch('subscription_item', itemId, 'items[0][id]')
      }
      const priceId = stringParam(item, 'price', 'items[0][price]')
      if (priceId !== undefined) {
        if (!this.priceStore.has(priceId)) throw noSuch('price', priceId, 'items[0][price]')
        patch.priceId = priceId
      }
      const quantity = integerParam(item, 'quantity', 'items[0][quantity]')
      if (quantity !== undefined) patch.quantity = quantity
    }
    const at = this.tick()
    const previous = this.changeSubscription(subscription, patch, at)
    if (Object.keys(previous).length > 0) {
      this.emit('customer.subscription.updated', subscription, at, previous, cause)
    }
    return this.expanded(subscription, params)
  }

  private cancelSubscriptionByApi(id: string, params: StripeParams, cause: EventRequest): FakeSubscription {
    const subscription = this.found(this.subscriptionStore, 'subscription', id)
    allowOnly(params, ['expand', 'invoice_now', 'prorate', 'cancellation_details'])
    if (subscription.status !== 'canceled') {
      const at = this.tick()
      this.endSubscription(subscription, at, 'cancellation_requested')
      this.emit('customer.subscription.deleted', subscription, at, undefined, cause)
    }
    return this.expanded(subscription, params)
  }

  // --- state changes shared by the API and the simulation ---

  private newCustomer(fields: Partial<Pick<FakeCustomer, 'email' | 'name' | 'description' | 'phone' | 'metadata'>>) {
    const customer: FakeCustomer = {
      id: stripeId('cus_', 14),
      object: 'customer',
      address: null,
      balance: 0,
      created: nowSeconds(),
      currency: null,
      default_source: null,
      delinquent: false,
      description: fields.description ?? null,
      discount: null,
      email: fields.email ?? null,
      invoice_prefix: randomBytes(4).toString('hex').toUpperCase(),
      invoice_settings: { custom_fields: null, default_payment_method: null, footer: null, rendering_options: null },
      livemode: false,
      metadata: fields.metadata ?? {},
      name: fields.name ?? null,
      next_invoice_sequence: 1,
      phone: fields.phone ?? null,
      preferred_locales: [],
      shipping: null,
      tax_exempt: 'none',
      test_clock: null,
    }
    this.customerStore.set(customer.id, customer)
    return customer
  }

  private newInvoice(subscription: FakeSubscription, reason: string, at: number, amount?: number): FakeInvoice {
    const customer = this.customerStore.get(subscription.customer)
    const total = amount ?? subscription.items.data.reduce((sum, i) => sum + (i.price.unit_amount ?? 0) * i.quantity, 0)
    const id = stripeId('in_', 24)
    const sequence = customer ? customer.next_invoice_sequence++ : 1
    const invoice: FakeInvoice = {
      id,
      object: 'invoice',
      account_country: 'US',
      amount_due: total,
      amount_paid: 0,
      amount_remaining: total,
      attempt_count: 0,
      attempted: false,
      billing_reason: reason,
      collection_method: 'charge_automatically',
      created: at,
      currency: subscription.currency,
      customer: subscription.customer,
      customer_email: customer?.email ?? null,
      hosted_invoice_url: `https://invoice.stripe.test/i/${id}`,
      lines: {
        object: 'list',
        data: subscription.items.data.map((item) => ({
          id: stripeId('il_', 24),
          object: 'line_item',
          amount: amount === undefined ? (item.price.unit_amount ?? 0) * item.quantity : 0,
          currency: item.price.currency,
          description: `${item.quantity} × ${item.price.product}`,
          metadata: {},
          parent: {
            type: 'subscription_item_details',
            subscription_item_details: { subscription: subscription.id, subscription_item: item.id },
          },
          period: { start: subscription.current_period_start, end: subscription.current_period_end },
          pricing: {
            type: 'price_details',
            price_details: { price: item.price.id, product: item.price.product },
            unit_amount_decimal: item.price.unit_amount_decimal,
          },
          quantity: item.quantity,
        })),
        has_more: false,
        total_count: subscription.items.data.length,
        url: `/v1/invoices/${id}/lines`,
      },
      livemode: false,
      metadata: {},
      next_payment_attempt: null,
      number: `${customer?.invoice_prefix ?? 'FAKE'}-${String(sequence).padStart(4, '0')}`,
      parent: {
        type: 'subscription_details',
        quote_details: null,
        subscription_details: { metadata: { ...subscription.metadata }, subscription: subscription.id },
      },
      period_end: subscription.current_period_end,
      period_start: subscription.current_period_start,
      status: 'open',
      status_transitions: { finalized_at: at, marked_uncollectible_at: null, paid_at: null, voided_at: null },
      subscription: subscription.id,
      subtotal: total,
      total,
    }
    this.invoiceStore.set(id, invoice)
    return invoice
  }

  private markPaid(invoice: FakeInvoice, at: number): void {
    invoice.status = 'paid'
    invoice.attempted = true
    invoice.attempt_count = Math.max(1, invoice.attempt_count)
    invoice.amount_paid = invoice.amount_due
    invoice.amount_remaining = 0
    invoice.next_payment_attempt = null
    invoice.status_transitions.paid_at = at
  }

  /** Applies the patch; returns Stripe's `previous_attributes` for it. */
  private changeSubscription(subscription: FakeSubscription, patch: SubscriptionPatch, at: number) {
    const before = clone(subscription)
    const items = subscription.items.data
    if (patch.status !== undefined) subscription.status = patch.status
    if (patch.priceId !== undefined) {
      const price = this.priceStore.get(patch.priceId)
      if (!price) throw new Error(`fake Stripe: no price ${patch.priceId} (addPrice it first)`)
      const first = items[0]
      if (first) first.price = clone(price)
    }
    if (patch.quantity !== undefined && items[0]) items[0].quantity = patch.quantity
    if (patch.periodStart !== undefined) {
      subscription.current_period_start = patch.periodStart
      for (const item of items) item.current_period_start = patch.periodStart
    }
    if (patch.periodEnd !== undefined) {
      subscription.current_period_end = patch.periodEnd
      for (const item of items) item.current_period_end = patch.periodEnd
      subscription.billing_cycle_anchor = patch.periodEnd
      if (subscription.cancel_at_period_end) subscription.cancel_at = patch.periodEnd
    }
    if (patch.cancelAtPeriodEnd !== undefined && patch.cancelAtPeriodEnd !== subscription.cancel_at_period_end) {
      subscription.cancel_at_period_end = patch.cancelAtPeriodEnd
      subscription.cancel_at = patch.cancelAtPeriodEnd ? subscription.current_period_end : null
      subscription.canceled_at = patch.cancelAtPeriodEnd ? at : null
      subscription.cancellation_details = {
        comment: null,
        feedback: null,
        reason: patch.cancelAtPeriodEnd ? 'cancellation_requested' : null,
      }
    }
    if (patch.metadata !== undefined) subscription.metadata = { ...patch.metadata }
    if (patch.latestInvoice !== undefined) subscription.latest_invoice = patch.latestInvoice
    return previousAttributes(before, subscription)
  }

  private endSubscription(subscription: FakeSubscription, at: number, reason: CancellationReason): void {
    subscription.status = 'canceled'
    subscription.canceled_at = subscription.canceled_at ?? at
    subscription.ended_at = at
    subscription.cancellation_details = { comment: null, feedback: null, reason }
  }

  private requireSubscription(id: string, options: { live?: boolean } = {}): FakeSubscription {
    const subscription = this.subscriptionStore.get(id)
    if (!subscription) throw new Error(`fake Stripe: no subscription ${id}`)
    if (options.live && subscription.status === 'canceled')
      throw new Error(`fake Stripe: subscription ${id} is canceled`)
    return subscription
  }

  /**
   * Event times come from a logical clock a second apart at least, because Stripe's events
   * carry whole seconds and consumers order them by `created`.
   */
  private tick(): number {
    this.clock = Math.max(this.clock + 1, nowSeconds())
    return this.clock
  }

  private emit(
    type: string,
    object: object,
    created: number,
    previous?: Record<string, unknown>,
    request: EventRequest = { id: null, idempotency_key: null },
  ): StripeEventObject {
    const event: StripeEventObject = {
      id: stripeId('evt_', 24),
      object: 'event',
      api_version: this.apiVersion,
      created,
      data: {
        object: clone(object) as Record<string, unknown>,
        ...(previous ? { previous_attributes: clone(previous) } : {}),
      },
      livemode: false,
      pending_webhooks: 1,
      request,
      type,
    }
    this.events.push(event)
    return clone(event)
  }

  // --- retrieval and expansion ---

  private found<T>(store: ReadonlyMap<string, T>, kind: string, id: string): T {
    const value = store.get(id)
    if (value === undefined) throw noSuch(kind, id, 'id', 404)
    return value
  }

  private retrieve(object: object, params: StripeParams): unknown {
    allowOnly(params, ['expand'])
    return this.expanded(object, params)
  }

  /** A copy of the object with `expand[]` applied, as the response body. */
  private expanded<T extends object>(object: T, params: StripeParams): T {
    const copy = clone(object)
    this.expand(copy as Record<string, unknown>, expandParam(params))
    return copy
  }

  private expand(root: Record<string, unknown>, paths: string[]): void {
    for (const path of paths) this.expandPath(root, path.split('.'), path)
  }

  private expandPath(node: unknown, segments: string[], path: string): void {
    const [head, ...rest] = segments
    if (head === undefined || !isRecord(node)) return
    if (head === 'line_items' && node.object === 'checkout.session' && typeof node.id === 'string') {
      node.line_items = this.checkoutLineItemList(node.id)
    }
    if (!(head in node)) throw invalidRequest(`This property cannot be expanded (${path}).`, 'expand')
    const value = node[head]
    if (Array.isArray(value)) {
      value.forEach((element, index) => {
        if (typeof element === 'string') value[index] = this.expandId(element, path)
        this.expandPath(value[index], rest, path)
      })
      return
    }
    if (typeof value === 'string') node[head] = this.expandId(value, path)
    this.expandPath(node[head], rest, path)
  }

  private expandId(id: string, path: string): unknown {
    const stores: ReadonlyMap<string, object>[] = [
      this.customerStore,
      this.subscriptionStore,
      this.invoiceStore,
      this.checkoutStore,
      this.priceStore,
    ]
    for (const store of stores) {
      const object = store.get(id)
      if (object) return clone(object)
    }
    if (this.deletedCustomers.has(id)) return { id, object: 'customer', deleted: true }
    throw invalidRequest(`This property cannot be expanded (${path}).`, 'expand')
  }

  private checkoutLineItemList(sessionId: string) {
    const lines = this.checkoutInternals.get(sessionId)?.lineItems ?? []
    return {
      object: 'list',
      data: lines.map((line) => {
        const amount = (line.price.unit_amount ?? 0) * line.quantity
        return {
          id: line.id,
          object: 'item',
          amount_discount: 0,
          amount_subtotal: amount,
          amount_tax: 0,
          amount_total: amount,
          currency: line.price.currency,
          description: line.price.product,
          price: clone(line.price),
          quantity: line.quantity,
        }
      }),
      has_more: false,
      url: `/v1/checkout/sessions/${sessionId}/line_items`,
    }
  }
}

/** Starts a fake Stripe on 127.0.0.1 (random port), closed when the test ends. */
export async function startFakeStripe(t: Teardown, options: FakeStripeOptions = {}): Promise<FakeStripe> {
  const fake = new FakeStripe(options)
  await fake.start()
  t.teardown(() => fake.close())
  return fake
}

// --- public types ---

export interface FakeStripeOptions {
  /** `api_version` of the events; default the SDK's pinned version (what an endpoint made by this SDK gets). */
  apiVersion?: string
  /** Accept only these keys (401 `api_key_invalid` otherwise); default any `sk_…` or `rk_…` key. */
  apiKeys?: string[]
}

export interface RequestFilter {
  /** Exact pathname (`/v1/customers`) or a pattern; default any. */
  path?: string | RegExp
  /** `GET`, `POST`, `DELETE`; default any. */
  method?: string
}

export interface FailOptions extends RequestFilter {
  /** 400, 402 (card_error), 409 (lock_timeout), 429 (rate_limit), 500, 503… */
  status: number
  /** How many matching requests fail (default 1). */
  times?: number
  /** Default by status: `invalid_request_error`, `card_error` (402), `api_error` (5xx). */
  type?: string
  message?: string
  code?: string
  param?: string
  /** Sent as `Retry-After`. */
  retryAfterSeconds?: number
  /** Sent as `Stripe-Should-Retry: true|false`, which the SDK obeys over its status rules. */
  shouldRetry?: boolean
}

export interface HangOptions extends RequestFilter {
  ms: number
  times?: number
}

export interface RecordedStripeRequest {
  /** Position in `fake.requests`. */
  index: number
  method: string
  /** Pathname without the query, e.g. `/v1/checkout/sessions`. */
  path: string
  /** The raw query string, without `?`. */
  query: string
  headers: IncomingHttpHeaders
  /** From `Authorization: Bearer …` (or Basic, as Stripe also accepts). */
  apiKey: string | undefined
  /** `Idempotency-Key` (the SDK sends one on every POST: `stripe-node-retry-<uuid>` unless given). */
  idempotencyKey: string | undefined
  stripeVersion: string | undefined
  /** The form-encoded body as sent. */
  rawBody: string
  /** The body (POST) or query (GET, DELETE) decoded from bracket notation; values stay strings, as on the wire. */
  params: StripeParams
  /** Sent as `Request-Id`. */
  requestId: string
  receivedAt: number
  /** HTTP status sent; undefined if the client left first (timeout) or the fake closed. */
  status: number | undefined
  /** Answered with the stored response of an earlier request with the same idempotency key. */
  replayed: boolean
  /** The `failNext` entry that answered it instead of the endpoint. */
  failed: FailOptions | undefined
  /** Delay from `hangNext`. */
  delayedMs: number
  /** The client closed the connection before the answer was sent. */
  clientClosed: boolean
  /** The JSON body sent. */
  response: unknown
}

export type StripeParamValue = string | StripeParamValue[] | StripeParams
export interface StripeParams {
  [key: string]: StripeParamValue
}

export type Metadata = Record<string, string>
export type PriceInterval = 'day' | 'week' | 'month' | 'year'
export type SubscriptionStatus =
  'incomplete' | 'incomplete_expired' | 'trialing' | 'active' | 'past_due' | 'canceled' | 'unpaid' | 'paused'
export type CancellationReason = 'cancellation_requested' | 'payment_disputed' | 'payment_failed'

export interface AddPriceOptions {
  /** Minor units (default 1000). */
  unitAmount?: number
  /** Default `usd`. */
  currency?: string
  /** Default `month`; `null` for a one-time price. */
  interval?: PriceInterval | null
  intervalCount?: number
  /** Default a new `prod_…` id. */
  product?: string
  lookupKey?: string
  metadata?: Metadata
}

export interface CompleteCheckoutOptions {
  /** Status of the new subscription (default `trialing` with a trial, else `active`). */
  status?: 'active' | 'trialing'
  /** For the customer created when the session had none (default its customer_email). */
  email?: string
  name?: string
}

export interface SubscriptionPatch {
  status?: SubscriptionStatus
  /** A registered price for the first item. */
  priceId?: string
  quantity?: number
  cancelAtPeriodEnd?: boolean
  /** Unix seconds; set on the subscription and its items. */
  periodStart?: number
  periodEnd?: number
  /** Replaces the metadata. */
  metadata?: Metadata
  latestInvoice?: string
}

export interface CheckoutCompletion {
  session: FakeCheckoutSession
  customer: FakeCustomer
  /** Undefined unless the session was in `subscription` mode. */
  subscription: FakeSubscription | undefined
  invoice: FakeInvoice | undefined
  events: StripeEventObject[]
}

export interface SignedDelivery {
  /** The raw body to POST. */
  payload: string
  /** The `Stripe-Signature` header value. */
  signature: string
  /** `content-type` and `stripe-signature`, ready for `app.inject({ headers })`. */
  headers: Record<string, string>
}

export interface EventRequest {
  /** The API request that caused the event; null for customer or Stripe actions. */
  id: string | null
  idempotency_key: string | null
}

export interface StripeEventObject {
  id: string
  object: 'event'
  api_version: string
  created: number
  data: { object: Record<string, unknown>; previous_attributes?: Record<string, unknown> }
  livemode: false
  pending_webhooks: number
  request: EventRequest
  type: string
}

export interface DeletedObject {
  id: string
  object: string
  deleted: true
}

export interface FakePrice {
  id: string
  object: 'price'
  active: boolean
  billing_scheme: 'per_unit'
  created: number
  currency: string
  livemode: false
  lookup_key: string | null
  metadata: Metadata
  nickname: string | null
  product: string
  recurring: {
    interval: PriceInterval
    interval_count: number
    meter: null
    trial_period_days: number | null
    usage_type: 'licensed'
  } | null
  tax_behavior: 'unspecified'
  tiers_mode: null
  transform_quantity: null
  type: 'recurring' | 'one_time'
  unit_amount: number | null
  unit_amount_decimal: string
}

export interface FakeCustomer {
  id: string
  object: 'customer'
  address: null
  balance: number
  created: number
  currency: string | null
  default_source: null
  delinquent: boolean
  description: string | null
  discount: null
  email: string | null
  invoice_prefix: string
  invoice_settings: {
    custom_fields: null
    default_payment_method: string | null
    footer: null
    rendering_options: null
  }
  livemode: false
  metadata: Metadata
  name: string | null
  next_invoice_sequence: number
  phone: string | null
  preferred_locales: string[]
  shipping: null
  tax_exempt: 'none'
  test_clock: null
}

export interface FakeCheckoutSession {
  id: string
  object: 'checkout.session'
  after_expiration: null
  allow_promotion_codes: null
  amount_subtotal: number | null
  amount_total: number | null
  automatic_tax: { enabled: boolean; liability: null; status: null }
  billing_address_collection: null
  cancel_url: string | null
  client_reference_id: string | null
  created: number
  currency: string | null
  customer: string | null
  customer_creation: 'always' | 'if_required' | null
  customer_details: { email: string | null; name: string | null; phone: null; tax_exempt: 'none' } | null
  customer_email: string | null
  expires_at: number
  invoice: string | null
  livemode: false
  locale: string | null
  metadata: Metadata
  mode: 'payment' | 'setup' | 'subscription'
  payment_intent: null
  payment_method_collection: 'always' | null
  payment_method_types: string[]
  payment_status: 'paid' | 'unpaid' | 'no_payment_required'
  return_url: null
  setup_intent: null
  status: 'open' | 'complete' | 'expired'
  submit_type: null
  subscription: string | null
  success_url: string | null
  total_details: { amount_discount: number; amount_shipping: number; amount_tax: number }
  ui_mode: 'hosted'
  /** Only while `open`, as in Stripe. */
  url: string | null
}

export interface FakePortalSession {
  id: string
  object: 'billing_portal.session'
  configuration: string
  created: number
  customer: string
  flow: null
  livemode: false
  locale: string | null
  on_behalf_of: null
  return_url: string | null
  url: string
}

export interface FakeSubscriptionItem {
  id: string
  object: 'subscription_item'
  created: number
  /** Where API versions since 2025-03-31 keep the period. */
  current_period_end: number
  current_period_start: number
  discounts: string[]
  metadata: Metadata
  price: FakePrice
  quantity: number
  subscription: string
  tax_rates: unknown[]
}

export interface FakeSubscription {
  id: string
  object: 'subscription'
  application: null
  billing_cycle_anchor: number
  cancel_at: number | null
  cancel_at_period_end: boolean
  canceled_at: number | null
  cancellation_details: { comment: null; feedback: null; reason: CancellationReason | null }
  collection_method: 'charge_automatically'
  created: number
  currency: string
  /** Also on the items; kept here for consumers written against older API versions. */
  current_period_end: number
  current_period_start: number
  customer: string
  default_payment_method: string | null
  description: string | null
  discounts: string[]
  ended_at: number | null
  items: { object: 'list'; data: FakeSubscriptionItem[]; has_more: false; total_count: number; url: string }
  latest_invoice: string | null
  livemode: false
  metadata: Metadata
  pause_collection: null
  schedule: null
  start_date: number
  status: SubscriptionStatus
  test_clock: null
  trial_end: number | null
  trial_start: number | null
}

export interface FakeInvoice {
  id: string
  object: 'invoice'
  account_country: string
  amount_due: number
  amount_paid: number
  amount_remaining: number
  attempt_count: number
  attempted: boolean
  billing_reason: string
  collection_method: 'charge_automatically'
  created: number
  currency: string
  customer: string
  customer_email: string | null
  hosted_invoice_url: string
  lines: { object: 'list'; data: Record<string, unknown>[]; has_more: false; total_count: number; url: string }
  livemode: false
  metadata: Metadata
  next_payment_attempt: number | null
  number: string
  /** Where API versions since 2025-03-31 name the subscription. */
  parent: {
    type: 'subscription_details'
    quote_details: null
    subscription_details: { metadata: Metadata; subscription: string }
  }
  period_end: number
  period_start: number
  status: 'draft' | 'open' | 'paid' | 'uncollectible' | 'void'
  status_transitions: {
    finalized_at: number | null
    marked_uncollectible_at: number | null
    paid_at: number | null
    voided_at: number | null
  }
  /** Older API versions' place for it, kept for consumers written against them. */
  subscription: string
  subtotal: number
  total: number
}

// --- form decoding ---

const UNSAFE_KEYS = new Set(['__proto__', 'prototype', 'constructor'])

/**
 * Decodes Stripe's form encoding (`a[b][0][c]=x`, as the SDK writes it) into nested objects and
 * arrays. Stripe has a schema to tell arrays from hashes; without one, a hash whose keys are all
 * indexes becomes an array, except under `metadata`, where keys are the caller's own.
 */
export function decodeStripeForm(encoded: string): StripeParams {
  const root: Record<string, unknown> = {}
  for (const [key, value] of new URLSearchParams(encoded)) {
    const path = keyPath(key)
    if (path.some((segment) => UNSAFE_KEYS.has(segment))) continue
    let node = root
    for (let i = 0; i < path.length - 1; i++) {
      const slot = slotName(node, path[i] ?? '')
      const child = node[slot]
      if (isRecord(child)) node = child
      else {
        const created: Record<string, unknown> = {}
        node[slot] = created
        node = created
      }
    }
    node[slotName(node, path.at(-1) ?? '')] = value
  }
  return indexedToArrays(root, '') as StripeParams
}

function keyPath(key: string): string[] {
  const match = /^([^[\]]+)((?:\[[^[\]]*\])*)$/.exec(key)
  if (!match) return [key]
  return [match[1] ?? key, ...Array.from((match[2] ?? '').matchAll(/\[([^[\]]*)\]/g), (m) => m[1] ?? '')]
}

/** `a[]=x&a[]=y` appends. */
function slotName(node: Record<string, unknown>, segment: string): string {
  return segment === '' ? String(Object.keys(node).length) : segment
}

function indexedToArrays(value: unknown, key: string): unknown {
  if (!isRecord(value)) return value
  const keys = Object.keys(value)
  for (const k of keys) value[k] = indexedToArrays(value[k], k)
  if (key === 'metadata' || keys.length === 0 || !keys.every((k) => /^\d+$/.test(k))) return value
  return keys.sort((a, b) => Number(a) - Number(b)).map((k) => value[k])
}

// --- parameters ---

const CUSTOMER_PARAMS = [
  'address',
  'balance',
  'cash_balance',
  'description',
  'email',
  'expand',
  'invoice_prefix',
  'invoice_settings',
  'metadata',
  'name',
  'next_invoice_sequence',
  'payment_method',
  'phone',
  'preferred_locales',
  'shipping',
  'source',
  'tax',
  'tax_exempt',
  'tax_id_data',
  'test_clock',
]

const CHECKOUT_PARAMS = [
  'adaptive_pricing',
  'after_expiration',
  'allow_promotion_codes',
  'automatic_tax',
  'billing_address_collection',
  'branding_settings',
  'cancel_url',
  'client_reference_id',
  'consent_collection',
  'currency',
  'custom_fields',
  'custom_text',
  'customer',
  'customer_creation',
  'customer_email',
  'customer_update',
  'discounts',
  'expand',
  'expires_at',
  'invoice_creation',
  'line_items',
  'locale',
  'metadata',
  'mode',
  'name_collection',
  'optional_items',
  'origin_context',
  'payment_method_collection',
  'payment_method_configuration',
  'payment_method_data',
  'payment_method_options',
  'payment_method_types',
  'permissions',
  'phone_number_collection',
  'redirect_on_completion',
  'return_url',
  'saved_payment_method_options',
  'setup_intent_data',
  'shipping_address_collection',
  'shipping_options',
  'submit_type',
  'subscription_data',
  'success_url',
  'tax_id_collection',
  'ui_mode',
  'wallet_options',
]

const LINE_ITEM_PARAMS = ['adjustable_quantity', 'dynamic_tax_rates', 'price', 'price_data', 'quantity', 'tax_rates']

const PORTAL_PARAMS = ['configuration', 'customer', 'expand', 'flow_data', 'locale', 'on_behalf_of', 'return_url']

const SUBSCRIPTION_UPDATE_PARAMS = [
  'add_invoice_items',
  'application_fee_percent',
  'automatic_tax',
  'billing_cycle_anchor',
  'cancel_at',
  'cancel_at_period_end',
  'cancellation_details',
  'collection_method',
  'default_payment_method',
  'description',
  'discounts',
  'expand',
  'items',
  'metadata',
  'off_session',
  'payment_behavior',
  'proration_behavior',
  'proration_date',
  'trial_end',
]

/** Stripe refuses parameters it does not know, which catches typos in the caller's code. */
function allowOnly(params: StripeParams, allowed: readonly string[], prefix?: string): void {
  for (const key of Object.keys(params)) {
    if (!allowed.includes(key)) {
      const name = prefix === undefined ? key : `${prefix}[${key}]`
      throw invalidRequest(`Received unknown parameter: ${name}`, name, 'parameter_unknown')
    }
  }
}

function stringParam(params: StripeParams, name: string, label = name): string | undefined {
  const value = params[name]
  if (value === undefined) return undefined
  if (typeof value !== 'string') throw invalidRequest(`Invalid string: ${JSON.stringify(value)}`, label)
  return value
}

/** An empty string unsets a nullable field in Stripe's form encoding. */
function nullableString(params: StripeParams, name: string): string | null | undefined {
  const value = stringParam(params, name)
  return value === '' ? null : value
}

function integerParam(params: StripeParams, name: string, label = name): number | undefined {
  const value = stringParam(params, name, label)
  if (value === undefined) return undefined
  if (!/^-?\d+$/.test(value)) throw invalidRequest(`Invalid integer: ${value}`, label)
  return Number(value)
}

function booleanParam(params: StripeParams, name: string): boolean | undefined {
  const value = stringParam(params, name)
  if (value === undefined) return undefined
  if (value !== 'true' && value !== 'false') throw invalidRequest(`Invalid boolean: ${value}`, name)
  return value === 'true'
}

function recordParam(params: StripeParams, name: string): StripeParams | undefined {
  const value = params[name]
  if (value === undefined || value === '') return undefined
  if (!isRecord(value)) throw invalidRequest('Invalid hash', name)
  return value as StripeParams
}

function expandParam(params: StripeParams): string[] {
  const value = params.expand
  if (value === undefined) return []
  if (!Array.isArray(value) || !value.every((v): v is string => typeof v === 'string')) {
    throw invalidRequest('Invalid array', 'expand')
  }
  return value
}

/** Stripe's metadata update rules: keys merge, an empty value deletes its key, `metadata=` clears all. */
function metadataParam(value: StripeParamValue | undefined, current: Metadata): Metadata {
  if (value === undefined) return { ...current }
  if (value === '') return {}
  if (!isRecord(value)) throw invalidRequest('Invalid hash', 'metadata')
  const next = { ...current }
  for (const [key, entry] of Object.entries(value)) {
    const param = `metadata[${key}]`
    if (typeof entry !== 'string') throw invalidRequest(`Invalid string: ${JSON.stringify(entry)}`, param)
    if (key.length > 40) {
      throw invalidRequest(
        `Metadata keys can have up to 40 characters, but you passed in a key that is ${key.length} characters.`,
        param,
      )
    }
    if (entry.length > 500) {
      throw invalidRequest(
        `Metadata values can have up to 500 characters, but you passed in a value that is ${entry.length} characters.`,
        param,
      )
    }
    if (entry === '') delete next[key]
    else next[key] = entry
  }
  return next
}

// --- errors ---

interface StripeErrorBody {
  type: string
  message: string
  code?: string
  param?: string
  doc_url?: string
  decline_code?: string
  request_log_url?: string
}

class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly body: StripeErrorBody,
    readonly headers: Record<string, string> = {},
  ) {
    super(body.message)
  }
}

function withDocUrl(body: StripeErrorBody): StripeErrorBody {
  return body.code === undefined
    ? body
    : { ...body, doc_url: `https://stripe.com/docs/error-codes/${body.code.replaceAll('_', '-')}` }
}

function invalidRequest(message: string, param?: string, code?: string): ApiError {
  return new ApiError(
    400,
    withDocUrl({
      type: 'invalid_request_error',
      message,
      ...(code === undefined ? {} : { code }),
      ...(param === undefined ? {} : { param }),
    }),
  )
}

function missingParam(param: string): ApiError {
  return invalidRequest(`Missing required param: ${param}.`, param, 'parameter_missing')
}

/** 404 for the object a path names; 400 (Stripe's answer) for one a parameter names. */
function noSuch(kind: string, id: string, param: string, status = 400): ApiError {
  return new ApiError(
    status,
    withDocUrl({ type: 'invalid_request_error', code: 'resource_missing', message: `No such ${kind}: '${id}'`, param }),
  )
}

function idempotencyError(message: string): ApiError {
  return new ApiError(400, { type: 'idempotency_error', message })
}

const DEFAULT_FAILURES: Record<number, { type: string; code?: string; message: string }> = {
  400: { type: 'invalid_request_error', message: 'Invalid request.' },
  401: { type: 'invalid_request_error', message: 'Invalid API Key provided: sk_test_****' },
  402: { type: 'card_error', code: 'card_declined', message: 'Your card was declined.' },
  403: {
    type: 'invalid_request_error',
    code: 'secret_key_required',
    message: 'The provided key does not have the required permissions for this endpoint.',
  },
  404: { type: 'invalid_request_error', code: 'resource_missing', message: 'No such object.' },
  409: {
    type: 'invalid_request_error',
    code: 'lock_timeout',
    message:
      'This object cannot be accessed right now because another API request or Stripe process is currently accessing it. If you see this error intermittently, retry the request. If you see this error frequently and are making multiple concurrent requests to a single object, make your requests serially or at a lower rate.',
  },
  429: {
    type: 'invalid_request_error',
    code: 'rate_limit',
    message: 'Request rate limit exceeded. Learn more about rate limits here https://stripe.com/docs/rate-limits.',
  },
}

function injectedFailure(failure: FailOptions): Answer {
  const known = DEFAULT_FAILURES[failure.status]
  const code = failure.code ?? known?.code
  const body = withDocUrl({
    type: failure.type ?? known?.type ?? (failure.status >= 500 ? 'api_error' : 'invalid_request_error'),
    message:
      failure.message ??
      known?.message ??
      "Sorry, something went wrong. We've already been notified of the problem, but if you need any help, you can reach us at support.stripe.com/contact.",
    ...(code === undefined ? {} : { code }),
    ...(failure.param === undefined ? {} : { param: failure.param }),
    ...(failure.status === 402 ? { decline_code: 'generic_decline' } : {}),
  })
  const headers: Record<string, string> = {}
  if (failure.retryAfterSeconds !== undefined) headers['Retry-After'] = String(failure.retryAfterSeconds)
  if (failure.shouldRetry !== undefined) headers['Stripe-Should-Retry'] = String(failure.shouldRetry)
  return { status: failure.status, body: { error: body }, headers }
}

// --- helpers ---

interface Answer {
  status: number
  body: unknown
  headers?: Record<string, string>
}

interface StoredResponse {
  endpoint: string
  rawBody: string
  status: number
  body: string
  requestId: string
}

interface CheckoutLineItem {
  id: string
  price: FakePrice
  quantity: number
}

interface CheckoutInternals {
  lineItems: CheckoutLineItem[]
  subscriptionMetadata: Metadata
  trialPeriodDays: number | undefined
}

type QueuedFailure = FailOptions & { remaining: number }
type QueuedHang = HangOptions & { remaining: number }

const DAY = 86_400

function ok(body: unknown): Answer {
  return { status: 200, body }
}

function matches(filter: RequestFilter, method: string, path: string): boolean {
  if (filter.method !== undefined && filter.method.toUpperCase() !== method) return false
  if (filter.path === undefined) return true
  return typeof filter.path === 'string' ? filter.path === path : filter.path.test(path)
}

/** The first queued entry matching the request, used up after its `times`. */
function takeQueued<T extends RequestFilter & { remaining: number }>(
  queue: T[],
  method: string,
  path: string,
): T | undefined {
  const index = queue.findIndex((entry) => matches(entry, method, path))
  const entry = queue[index]
  if (!entry) return undefined
  entry.remaining--
  if (entry.remaining <= 0) queue.splice(index, 1)
  return entry
}

function apiKeyOf(headers: IncomingHttpHeaders): string | undefined {
  const authorization = headers.authorization ?? ''
  const bearer = /^Bearer\s+(.+)$/i.exec(authorization)?.[1]
  if (bearer !== undefined) return bearer.trim()
  const basic = /^Basic\s+(.+)$/i.exec(authorization)?.[1]
  if (basic === undefined) return undefined
  return Buffer.from(basic, 'base64').toString('utf8').split(':')[0]
}

function headerOf(headers: IncomingHttpHeaders, name: string): string | undefined {
  const value = headers[name]
  return Array.isArray(value) ? value[0] : value
}

/** Stripe shows a key's first characters and last four. */
function redact(key: string): string {
  if (key.length <= 12) return `${key.slice(0, 3)}****`
  return `${key.slice(0, 8)}${'*'.repeat(key.length - 12)}${key.slice(-4)}`
}

/**
 * Stripe's `previous_attributes`: the old value of each changed field; for nested hashes only
 * their changed keys, arrays (and so list `data`) whole.
 */
function previousAttributes(before: object, after: object): Record<string, unknown> {
  const previous: Record<string, unknown> = {}
  const old = before as Record<string, unknown>
  const now = after as Record<string, unknown>
  for (const key of new Set([...Object.keys(old), ...Object.keys(now)])) {
    const was = old[key]
    const is = now[key]
    if (JSON.stringify(was) === JSON.stringify(is)) continue
    previous[key] = isRecord(was) && isRecord(is) ? previousAttributes(was, is) : (was ?? null)
  }
  return previous
}

const ID_ALPHABET = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz'

function stripeId(prefix: string, length: number): string {
  return prefix + Array.from(randomBytes(length), (byte) => ID_ALPHABET[byte % ID_ALPHABET.length]).join('')
}

function addInterval(seconds: number, interval: PriceInterval, count: number): number {
  const date = new Date(seconds * 1000)
  if (interval === 'day') date.setUTCDate(date.getUTCDate() + count)
  else if (interval === 'week') date.setUTCDate(date.getUTCDate() + 7 * count)
  else if (interval === 'month') date.setUTCMonth(date.getUTCMonth() + count)
  else date.setUTCFullYear(date.getUTCFullYear() + count)
  return Math.floor(date.getTime() / 1000)
}

function safeDecode(segment: string): string {
  try {
    return decodeURIComponent(segment)
  } catch {
    return segment
  }
}

function nowSeconds(): number {
  return Math.floor(Date.now() / 1000)
}

function clone<T>(value: T): T {
  return structuredClone(value)
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return value != null && typeof value === 'object' && !Array.isArray(value)
}
