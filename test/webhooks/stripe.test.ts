import { randomUUID } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import { sql } from 'drizzle-orm'
import type { FastifyInstance } from 'fastify'
import Stripe from 'stripe'
import t from 'tap'
import type { InboundEvent } from '../../src/modules/webhooks/webhooks-service.js'
import { buildTestApp } from '../helper.js'
import { assertProblem } from '../auth/support.js'
import { eventually, FAST as QUICK, storedEvents } from './support.js'

const SECRET = 'whsec_test_current_secret'
const PREVIOUS = 'whsec_test_previous_secret'
const FAST = { ...QUICK, STRIPE_WEBHOOK_SECRET: SECRET }

/** A Stripe event body as Stripe sends it. */
function stripeEvent(type = 'customer.created', id = `evt_${randomUUID().replaceAll('-', '')}`) {
  return JSON.stringify({
    id,
    object: 'event',
    api_version: '2025-01-27',
    created: Math.floor(Date.now() / 1000),
    type,
    data: { object: { id: `cus_${randomUUID().slice(0, 8)}`, object: 'customer' } },
    livemode: false,
    pending_webhooks: 1,
    request: { id: null, idempotency_key: null },
  })
}

/** The Stripe-Signature header the SDK's own test helper computes. */
function sign(payload: string, options: { secret?: string; timestamp?: number } = {}) {
  return Stripe.webhooks.generateTestHeaderString({
    payload,
    secret: options.secret ?? SECRET,
    ...(options.timestamp ? { timestamp: options.timestamp } : {}),
  })
}

function deliver(app: FastifyInstance, payload: string, signature?: string) {
  return app.inject({
    method: 'POST',
    url: '/api/v1/webhooks/stripe',
    headers: { 'content-type': 'application/json', ...(signature ? { 'stripe-signature': signature } : {}) },
    payload,
  })
}

/** Registers a handler for `type` that records each call and fails while `fails` says so. */
function handlerFor(type: string, fails: (call: number) => boolean = () => false) {
  const calls: InboundEvent[] = []
  const extend = (app: FastifyInstance) => {
    app.webhookHandlers.register('stripe', type, async (event) => {
      calls.push(event)
      if (fails(calls.length)) throw new Error(`handler failure ${calls.length}`)
    })
  }
  return { calls, extend }
}

t.test('without STRIPE_WEBHOOK_SECRET the endpoint answers 503 NOT_CONFIGURED and stores nothing', async (t) => {
  const app = await buildTestApp(t)
  const payload = stripeEvent()
  const response = await deliver(app, payload, sign(payload))
  assertProblem(t, response, 503, 'NOT_CONFIGURED')
  t.same(await storedEvents(app), [])
})

t.test('a signed event is stored, acknowledged, then processed once by its handler', async (t) => {
  const { calls, extend } = handlerFor('customer.created')
  const app = await buildTestApp(t, { env: FAST, extend })
  const payload = stripeEvent()
  const response = await deliver(app, payload, sign(payload))
  t.equal(response.statusCode, 200)
  t.same(response.json(), { received: true, duplicate: false })

  // Acknowledged means stored: the row exists as soon as the 200 is out.
  const [row] = await storedEvents(app)
  t.equal(row?.provider, 'stripe')
  t.equal(row?.providerEventId, JSON.parse(payload).id)
  t.equal(row?.type, 'customer.created')
  t.same(row?.payload, JSON.parse(payload), 'the payload as sent')

  t.ok(await eventually(async () => (await storedEvents(app))[0]?.status === 'processed'), 'processed')
  t.equal(calls.length, 1, 'the handler ran once')
  t.equal(calls[0]?.id, row?.id, 'with the stored event')
  t.equal(calls[0]?.attempt, 1)
  const [done] = await storedEvents(app)
  t.ok(done?.processedAt, 'processedAt is set')
  t.equal(done?.attempts, 1)
})

t.test('a redelivered event answers 200 duplicate and is neither stored nor processed again', async (t) => {
  const { calls, extend } = handlerFor('customer.created')
  const app = await buildTestApp(t, { env: FAST, extend })
  const payload = stripeEvent()
  t.same((await deliver(app, payload, sign(payload))).json(), { received: true, duplicate: false })
  // Stripe re-signs each delivery attempt with a new timestamp.
  await sleep(1100)
  const again = await deliver(app, payload, sign(payload))
  t.equal(again.statusCode, 200)
  t.same(again.json(), { received: true, duplicate: true })
  t.equal((await storedEvents(app)).length, 1, 'one row')
  t.ok(await eventually(async () => (await storedEvents(app))[0]?.status === 'processed'))
  await sleep(1500)
  t.equal(calls.length, 1, 'processed once')
})

t.test('events without a handler are marked ignored', async (t) => {
  const app = await buildTestApp(t, { env: FAST })
  const payload = stripeEvent('balance.available')
  t.equal((await deliver(app, payload, sign(payload))).statusCode, 200)
  t.ok(await eventually(async () => (await storedEvents(app))[0]?.status === 'ignored'), 'ignored')
})

t.test('bad, missing, tampered and stale signatures are 400 and store nothing', async (t) => {
  const app = await buildTestApp(t, { env: FAST })
  const payload = stripeEvent()
  const cases: [string, string | undefined, string][] = [
    ['no header', undefined, payload],
    ['another secret', sign(payload, { secret: 'whsec_someone_else' }), payload],
    ['a tampered body', sign(payload), payload.replace('customer.created', 'customer.deleted')],
    ['a stale timestamp (301 s)', sign(payload, { timestamp: Math.floor(Date.now() / 1000) - 301 }), payload],
    ['garbage', 't=1,v1=00', payload],
  ]
  for (const [label, signature, body] of cases) {
    const response = await deliver(app, body, signature)
    assertProblem(t, response, 400, 'INVALID_SIGNATURE', label)
    t.notMatch(response.body, /whsec_/, `${label}: no secret in the answer`)
  }
  t.same(await storedEvents(app), [], 'nothing stored')
  const fresh = await deliver(app, payload, sign(payload, { timestamp: Math.floor(Date.now() / 1000) - 290 }))
  t.equal(fresh.statusCode, 200, 'within the 300 s tolerance it verifies')
})

t.test('any of several v1 signatures verifies, and so does the previous secret during rotation', async (t) => {
  const app = await buildTestApp(t, { env: { ...FAST, STRIPE_WEBHOOK_SECRET: `${SECRET},${PREVIOUS}` } })
  const payload = stripeEvent()
  // While a Stripe endpoint secret is rolled, Stripe signs with both: one v1 per secret.
  const timestamp = Math.floor(Date.now() / 1000)
  const wrong = sign(payload, { secret: 'whsec_unknown', timestamp }).split(',')[1]
  const right = sign(payload, { timestamp }).split(',')[1]
  const both = `t=${timestamp},${wrong},${right}`
  t.equal((await deliver(app, payload, both)).statusCode, 200, 'several v1 signatures, one valid')

  const old = stripeEvent()
  t.equal((await deliver(app, old, sign(old, { secret: PREVIOUS }))).statusCode, 200, 'signed with the previous secret')
  t.equal((await storedEvents(app)).length, 2)
})

t.test('a signed body that is not an event is a 400 INVALID_EVENT', async (t) => {
  const app = await buildTestApp(t, { env: FAST })
  const payload = JSON.stringify({ object: 'event' })
  assertProblem(t, await deliver(app, payload, sign(payload)), 400, 'INVALID_EVENT')
  t.same(await storedEvents(app), [])
})

t.test('a failing handler is retried with backoff, then the event is dead', async (t) => {
  const { calls, extend } = handlerFor('invoice.paid', () => true)
  const app = await buildTestApp(t, { env: FAST, extend })
  const payload = stripeEvent('invoice.paid')
  t.equal((await deliver(app, payload, sign(payload))).statusCode, 200)
  t.ok(await eventually(async () => (await storedEvents(app))[0]?.status === 'dead', 40_000), 'dead in the end')
  const [row] = await storedEvents(app)
  t.equal(calls.length, 3, 'first attempt and two retries')
  t.same(
    calls.map((call) => call.attempt),
    [1, 2, 3],
  )
  t.equal(row?.attempts, 3)
  t.match(row?.lastError, /handler failure 3/)
  t.equal(row?.processedAt, null)
  t.ok(await eventually(async () => (await app.jobs.counts()).dead === 1), 'and its job is dead-lettered')
})

t.test('a handler that fails once is processed on its retry', async (t) => {
  const { calls, extend } = handlerFor('invoice.paid', (call) => call === 1)
  const app = await buildTestApp(t, { env: FAST, extend })
  const payload = stripeEvent('invoice.paid')
  t.equal((await deliver(app, payload, sign(payload))).statusCode, 200)
  t.ok(await eventually(async () => (await storedEvents(app))[0]?.status === 'processed'), 'processed')
  t.equal(calls.length, 2)
  t.equal((await storedEvents(app))[0]?.lastError, null, 'the earlier failure is cleared')
})

t.test('an event is acknowledged only once it and its job are committed together', async (t) => {
  const app = await buildTestApp(t, { env: FAST })
  // The queue refuses new jobs: the event must not be stored (nor acknowledged) without its job.
  await app.db.execute(
    sql.raw(
      `create function refuse_jobs() returns trigger language plpgsql as $$ begin raise exception 'queue down'; end $$`,
    ),
  )
  await app.db.execute(
    sql.raw('create trigger refuse_jobs before insert on pgboss.job for each row execute function refuse_jobs()'),
  )
  const payload = stripeEvent()
  const refused = await deliver(app, payload, sign(payload))
  t.equal(refused.statusCode, 500, 'not acknowledged')
  t.notMatch(refused.body, /queue down/, 'masked')
  t.same(await storedEvents(app), [], 'and not stored: the provider will retry')

  await app.db.execute(sql.raw('drop trigger refuse_jobs on pgboss.job'))
  const retried = await deliver(app, payload, sign(payload))
  t.same(retried.json(), { received: true, duplicate: false }, "the provider's retry is stored")
  t.ok(await eventually(async () => (await storedEvents(app))[0]?.status === 'ignored'), 'and processed')
})

t.test('bodies over 1 MiB are refused with 413', async (t) => {
  const app = await buildTestApp(t, { env: FAST })
  const payload = JSON.stringify({ id: 'evt_big', type: 'x', padding: 'x'.repeat(1024 * 1024) })
  const response = await deliver(app, payload, sign(payload))
  assertProblem(t, response, 413, 'PAYLOAD_TOO_LARGE')
  t.same(await storedEvents(app), [])
})

t.test('a burst of deliveries, duplicates included, is stored once per event with one job each', async (t) => {
  const { calls, extend } = handlerFor('customer.created')
  const app = await buildTestApp(t, { env: FAST, extend })
  const payloads = Array.from({ length: 40 }, () => stripeEvent())
  // Every event twice, all at once: the deliveries share transactions, and each is still answered
  // as itself.
  const deliveries = [...payloads, ...payloads].map((payload) => deliver(app, payload, sign(payload)))
  const responses = await Promise.all(deliveries)
  t.ok(
    responses.every((response) => response.statusCode === 200),
    'every delivery acknowledged',
  )
  const answers = responses.map((response) => response.json() as { duplicate: boolean })
  for (let i = 0; i < payloads.length; i++) {
    const pair = [answers[i]?.duplicate, answers[i + payloads.length]?.duplicate]
    t.same(pair.filter((duplicate) => duplicate === false).length, 1, `event ${i}: one of its two deliveries is new`)
  }
  t.equal((await storedEvents(app)).length, 40, 'one row per event')
  t.ok(
    await eventually(async () => (await storedEvents(app)).every((row) => row.status === 'processed'), 30_000),
    'all processed',
  )
  await sleep(1000)
  t.equal(calls.length, 40, 'each handled once')
  t.equal(new Set(calls.map((call) => call.providerEventId)).size, 40)
})

t.test('an event the database refuses fails alone, not the deliveries it was batched with', async (t) => {
  const app = await buildTestApp(t, { env: FAST })
  // Signed, so it verifies, but jsonb cannot store a NUL: this one insert fails.
  const poison = stripeEvent().replace('"livemode":false', '"livemode":false,"note":"a\\u0000b"')
  const good = Array.from({ length: 20 }, () => stripeEvent())
  // In the middle of the burst, so that it shares a batch with others.
  const burst = [...good.slice(0, 10), poison, ...good.slice(10)]
  const responses = await Promise.all(burst.map((payload) => deliver(app, payload, sign(payload))))
  const refused = responses[10]
  if (refused) assertProblem(t, refused, 400, 'INVALID_CHARACTER', 'the poison event is not acknowledged')
  t.ok(
    responses.every((response, index) => index === 10 || response.statusCode === 200),
    'every other delivery is',
  )
  const stored = await storedEvents(app)
  t.equal(stored.length, 20, 'and stored')
  t.notOk(
    stored.some((row) => row.providerEventId === JSON.parse(poison).id),
    'the poison event is not',
  )
})
