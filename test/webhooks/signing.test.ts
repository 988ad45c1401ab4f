import t from 'tap'
import { Webhook, WebhookVerificationError } from 'standardwebhooks'
import { generateSecret } from '../../src/modules/webhooks/endpoints-service.js'
import { signDelivery } from '../../src/modules/webhooks/signing.js'

// Deliveries are verified with the independent reference implementation of Standard Webhooks,
// as a customer's receiver would verify them.

const body = JSON.stringify({
  id: 'evt_1',
  type: 'project.updated',
  timestamp: '2026-11-22T04:00:00.000Z',
  orgId: 'org_1',
  data: { name: 'Ünïcode ✓', nested: { list: [1, 2, 3] } },
})

t.test('a signed delivery verifies with the standardwebhooks package', async (t) => {
  const secret = generateSecret()
  const headers = signDelivery({ id: 'msg_1', timestamp: new Date(), body }, [secret])
  t.match(headers['webhook-signature'], /^v1,[A-Za-z0-9+/]{43}=$/, 'one v1 signature, base64 of 32 bytes')
  t.same(new Webhook(secret).verify(body, headers), JSON.parse(body), 'verified, and the payload is returned')
})

t.test('a changed body, id or timestamp, or another secret, does not verify', async (t) => {
  const secret = generateSecret()
  const now = new Date()
  const headers = signDelivery({ id: 'msg_2', timestamp: now, body }, [secret])
  const refused = (label: string, verify: () => unknown) => t.throws(verify, WebhookVerificationError, label)
  refused('body changed', () => new Webhook(secret).verify(body.replace('org_1', 'org_2'), headers))
  refused('id changed', () => new Webhook(secret).verify(body, { ...headers, 'webhook-id': 'msg_3' }))
  refused('timestamp changed', () =>
    new Webhook(secret).verify(body, {
      ...headers,
      'webhook-timestamp': String(Number(headers['webhook-timestamp']) + 1),
    }),
  )
  refused('another secret', () => new Webhook(generateSecret()).verify(body, headers))
})

t.test('during a rotation both secrets sign, and a receiver with either one verifies', async (t) => {
  const previous = generateSecret()
  const current = generateSecret()
  const headers = signDelivery({ id: 'msg_4', timestamp: new Date(), body }, [current, previous])
  t.equal(headers['webhook-signature'].split(' ').length, 2, 'two signatures, space-separated')
  t.ok(new Webhook(current).verify(body, headers), 'a receiver already on the new secret')
  t.ok(new Webhook(previous).verify(body, headers), 'a receiver still on the previous secret')
  t.throws(() => new Webhook(generateSecret()).verify(body, headers), WebhookVerificationError, 'any other secret')
})

t.test('the timestamp is the attempt time, so the receiver tolerance applies to each retry', async (t) => {
  const secret = generateSecret()
  const old = new Date(Date.now() - 10 * 60 * 1000)
  const stale = signDelivery({ id: 'msg_5', timestamp: old, body }, [secret])
  t.equal(stale['webhook-timestamp'], String(Math.floor(old.getTime() / 1000)), 'whole seconds')
  t.throws(() => new Webhook(secret).verify(body, stale), WebhookVerificationError, 'ten minutes old: refused')
  const retried = signDelivery({ id: 'msg_5', timestamp: new Date(), body }, [secret])
  t.equal(retried['webhook-id'], stale['webhook-id'], 'the same id on the retry')
  t.ok(new Webhook(secret).verify(body, retried), 'the retry verifies')
})

t.test('secrets that are not Standard Webhooks secrets are refused', async (t) => {
  const delivery = { id: 'msg_6', timestamp: new Date(), body }
  t.throws(() => signDelivery(delivery, []), /at least one/)
  t.throws(() => signDelivery(delivery, ['plain-text-secret']), /whsec_/)
  t.throws(() => signDelivery(delivery, [`whsec_${Buffer.alloc(16).toString('base64')}`]), /24 bytes/)
})
