import { eq } from 'drizzle-orm'
import t from 'tap'
import { webhookEndpoints } from '../../src/db/schema/index.js'
import { buildTestApp } from '../helper.js'
import {
  type Account,
  account,
  assertProblem,
  callAs,
  createOrg,
  type Method,
  type Test,
  walkPages,
} from '../auth/support.js'
import { Receiver, verifyDelivery } from './receiver.js'
import { eventually, FAST } from './support.js'

// Outbound deliveries end to end: events committed by the projects module reach a local receiver,
// signed per Standard Webhooks and verified with the independent `standardwebhooks` package.

const app = await buildTestApp(t, { env: { ...FAST, WEBHOOK_ALLOW_PRIVATE_TARGETS: 'true' } })

interface Attempt {
  id: string
  deliveryId: string
  eventId: string
  eventType: string
  attempt: number
  attemptedAt: string
  succeeded: boolean
  statusCode: number | null
  latencyMs: number
  responseBody: string | null
  error: string | null
  nextRetryAt: string | null
  deliveryStatus: 'pending' | 'succeeded' | 'failed'
}

const call = (who: Pick<Account, 'headers'>, method: Method, url: string, payload?: Record<string, unknown>) =>
  callAs(app, who, method, url, payload)

async function createEndpoint(who: Account, body: Record<string, unknown>) {
  const response = await call(who, 'POST', '/webhook-endpoints', body)
  if (response.statusCode !== 201) throw new Error(`create endpoint answered ${response.statusCode}: ${response.body}`)
  return response.json() as { id: string; secret: string; orgId: string }
}

async function createProject(who: Account, orgId: string, name: string) {
  const response = await call(who, 'POST', '/projects', { orgId, name })
  if (response.statusCode !== 201) throw new Error(`create project answered ${response.statusCode}: ${response.body}`)
  return response.json() as { id: string; version: number }
}

async function deliveryLog(t: Test, who: Account, endpointId: string): Promise<Attempt[]> {
  const { items } = await walkPages<Attempt>(t, (cursor) =>
    call(who, 'GET', `/webhook-endpoints/${endpointId}/deliveries?limit=3${cursor ? `&cursor=${cursor}` : ''}`),
  )
  return items
}

t.test('committed events reach subscribed endpoints of their org only, signed, in commit order', async (t) => {
  const owner = await account(app)
  const orgId = await createOrg(app, owner, 'Deliveries')
  const everything = await Receiver.start(t)
  const onlyDeleted = await Receiver.start(t)
  const otherOrgs = await Receiver.start(t)
  const all = await createEndpoint(owner, { orgId, url: everything.url, events: ['*'] })
  const deleted = await createEndpoint(owner, { orgId, url: onlyDeleted.url, events: ['project.deleted'] })
  const stranger = await account(app)
  await createEndpoint(stranger, { url: otherOrgs.url, events: ['*'] })

  const project = await createProject(owner, orgId, 'First')
  for (let i = 1; i <= 5; i++) {
    const response = await call(owner, 'PATCH', `/projects/${project.id}`, { description: `edit ${i}` })
    t.equal(response.statusCode, 200)
  }
  t.equal((await call(owner, 'DELETE', `/projects/${project.id}`)).statusCode, 204)

  t.ok(await eventually(() => everything.received.length >= 7), 'all seven events arrived')
  t.ok(await eventually(() => onlyDeleted.received.length >= 1), 'the deletion arrived')
  t.same(
    everything.events().map((event) => event.type),
    ['project.created', ...Array(5).fill('project.updated'), 'project.deleted'],
    'in the order they were committed',
  )
  t.same(
    everything.events().map((event) => event.data.description),
    ['', 'edit 1', 'edit 2', 'edit 3', 'edit 4', 'edit 5', 'edit 5'],
    'each carries the project as it was after its change',
  )
  for (const delivery of everything.received) {
    const verified = verifyDelivery(delivery, all.secret) as { id: string }
    t.equal(delivery.headers['webhook-id'], verified.id, 'webhook-id is the event id')
    t.equal(delivery.headers['content-type'], 'application/json')
  }
  const [first] = everything.events()
  t.same(Object.keys(first ?? {}), ['id', 'type', 'timestamp', 'orgId', 'data'], 'the Standard Webhooks envelope')
  t.equal(first?.orgId, orgId)
  t.match(first?.id, /^evt_/)
  t.ok(Date.parse(first?.timestamp ?? '') > 0)

  t.same(
    onlyDeleted.events().map((event) => event.type),
    ['project.deleted'],
  )
  t.throws(() => verifyDelivery(onlyDeleted.nth(0), all.secret), 'each endpoint signs with its own secret')
  verifyDelivery(onlyDeleted.nth(0), deleted.secret)
  t.equal(otherOrgs.received.length, 0, "another org's endpoint receives nothing")

  const log = await deliveryLog(t, owner, all.id)
  t.equal(log.length, 7, 'every attempt is logged')
  const [newest] = log
  if (!newest) throw new Error('the log is empty')
  t.equal(newest.eventType, 'project.deleted', 'newest first')
  t.equal(newest.attempt, 1)
  t.equal(newest.statusCode, 200)
  t.equal(newest.succeeded, true)
  t.equal(newest.deliveryStatus, 'succeeded')
  t.equal(newest.nextRetryAt, null)
  t.equal(newest.error, null)
  t.ok(newest.latencyMs >= 0)
  t.match(newest.deliveryId, /^whd_/)
})

t.test('a rotated secret and the previous one both sign until the overlap ends', async (t) => {
  const owner = await account(app)
  const receiver = await Receiver.start(t)
  const endpoint = await createEndpoint(owner, { url: receiver.url, events: ['project.created'] })
  await createProject(owner, owner.personalOrgId, 'Before rotation')
  t.ok(await eventually(() => receiver.received.length === 1))
  t.equal(String(receiver.received[0]?.headers['webhook-signature']).split(' ').length, 1, 'one signature before')

  const rotated = await call(owner, 'POST', `/webhook-endpoints/${endpoint.id}/rotate-secret`)
  t.equal(rotated.statusCode, 200)
  const newSecret = rotated.json().secret as string
  await createProject(owner, owner.personalOrgId, 'During the overlap')
  t.ok(await eventually(() => receiver.received.length === 2))
  const during = receiver.nth(1)
  t.equal(String(during.headers['webhook-signature']).split(' ').length, 2, 'two signatures during the overlap')
  verifyDelivery(during, endpoint.secret)
  verifyDelivery(during, newSecret)

  // The overlap ends: only the new secret signs.
  await app.db
    .update(webhookEndpoints)
    .set({ previousSecretExpiresAt: new Date(Date.now() - 1000) })
    .where(eq(webhookEndpoints.id, endpoint.id))
  await createProject(owner, owner.personalOrgId, 'After the overlap')
  t.ok(await eventually(() => receiver.received.length === 3))
  const after = receiver.nth(2)
  verifyDelivery(after, newSecret)
  t.throws(() => verifyDelivery(after, endpoint.secret), 'the previous secret no longer signs')
})

t.test('POST /test sends webhook.test to that endpoint only', async (t) => {
  const owner = await account(app)
  const target = await Receiver.start(t)
  const sibling = await Receiver.start(t)
  const endpoint = await createEndpoint(owner, { url: target.url, events: ['project.created'] })
  await createEndpoint(owner, { url: sibling.url, events: ['*'] })

  const response = await call(owner, 'POST', `/webhook-endpoints/${endpoint.id}/test`)
  t.equal(response.statusCode, 202)
  const queued = response.json()
  t.match(queued, { deliveryId: /^whd_/, eventId: /^evt_/, status: 'pending' })
  t.ok(await eventually(() => target.received.length === 1))
  const [event] = target.events()
  t.equal(event?.type, 'webhook.test', 'sent even though the endpoint subscribes to other events')
  t.equal(event?.id, queued.eventId)
  t.equal(event?.data.endpointId, endpoint.id)
  verifyDelivery(target.nth(0), endpoint.secret)
  const log = await deliveryLog(t, owner, endpoint.id)
  t.equal(log[0]?.deliveryId, queued.deliveryId)
  t.equal(sibling.received.length, 0, 'no other endpoint receives a test event')
})

t.test("another org's endpoint, its log and its deliveries do not exist for a caller (404)", async (t) => {
  const owner = await account(app)
  const receiver = await Receiver.start(t)
  const endpoint = await createEndpoint(owner, { url: receiver.url, events: ['*'] })
  const sent = (await call(owner, 'POST', `/webhook-endpoints/${endpoint.id}/test`)).json()
  t.ok(await eventually(() => receiver.received.length === 1))

  const stranger = await account(app)
  for (const [method, url] of [
    ['GET', `/webhook-endpoints/${endpoint.id}/deliveries`],
    ['POST', `/webhook-endpoints/${endpoint.id}/test`],
    ['POST', `/webhook-endpoints/${endpoint.id}/deliveries/${sent.deliveryId}/retry`],
  ] as const) {
    assertProblem(t, await call(stranger, method, url), 404, 'WEBHOOK_ENDPOINT_NOT_FOUND')
  }
  // Another endpoint of the owner's own cannot retry this one's delivery either.
  const sibling = await createEndpoint(owner, { url: receiver.url, events: ['*'] })
  assertProblem(
    t,
    await call(owner, 'POST', `/webhook-endpoints/${sibling.id}/deliveries/${sent.deliveryId}/retry`),
    404,
    'WEBHOOK_DELIVERY_NOT_FOUND',
  )
  t.equal(receiver.received.length, 1, 'nothing was sent on their behalf')
})

t.test('only failed deliveries are retried by hand; the log is cursor-paginated and checks its cursor', async (t) => {
  const owner = await account(app)
  const receiver = await Receiver.start(t)
  const endpoint = await createEndpoint(owner, { url: receiver.url, events: ['*'] })
  const sent = (await call(owner, 'POST', `/webhook-endpoints/${endpoint.id}/test`)).json()
  t.ok(await eventually(() => receiver.received.length === 1))
  t.ok(await eventually(async () => (await deliveryLog(t, owner, endpoint.id)).length === 1))
  assertProblem(
    t,
    await call(owner, 'POST', `/webhook-endpoints/${endpoint.id}/deliveries/${sent.deliveryId}/retry`),
    409,
    'WEBHOOK_DELIVERY_NOT_FAILED',
  )
  assertProblem(
    t,
    await call(owner, 'GET', `/webhook-endpoints/${endpoint.id}/deliveries?cursor=not-a-cursor`),
    400,
    'INVALID_CURSOR',
  )
})
