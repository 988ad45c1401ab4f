import { createHmac } from 'node:crypto'

const SECRET_PREFIX = 'whsec_'

/** The headers of one delivery attempt, per Standard Webhooks. */
export interface SignedHeaders {
  'webhook-id': string
  'webhook-timestamp': string
  'webhook-signature': string
}

/** The key bytes of a `whsec_` secret: Standard Webhooks signs with the decoded base64, not the text. */
function keyOf(secret: string): Buffer {
  if (!secret.startsWith(SECRET_PREFIX)) throw new Error('a webhook signing secret starts with whsec_')
  const key = Buffer.from(secret.slice(SECRET_PREFIX.length), 'base64')
  if (key.length < 24) throw new Error('a webhook signing secret holds at least 24 bytes')
  return key
}

/**
 * Signs a delivery as Standard Webhooks specifies: `v1,` + base64 HMAC-SHA256 of
 * `<webhook-id>.<webhook-timestamp>.<body>`, one signature per secret, separated by spaces. During
 * a rotation `secrets` holds the new and the previous secret, so a receiver verifies with either.
 * `webhook-id` is the event's id for the endpoint and stays the same across retries, which is what
 * lets receivers deduplicate; the timestamp is the attempt's, so a retry is not refused as stale.
 */
export function signDelivery(
  delivery: { id: string; timestamp: Date; body: string },
  secrets: readonly string[],
): SignedHeaders {
  if (secrets.length === 0) throw new Error('a delivery needs at least one signing secret')
  const timestamp = String(Math.floor(delivery.timestamp.getTime() / 1000))
  const signed = `${delivery.id}.${timestamp}.${delivery.body}`
  const signatures = secrets.map(
    (secret) => `v1,${createHmac('sha256', keyOf(secret)).update(signed, 'utf8').digest('base64')}`,
  )
  return { 'webhook-id': delivery.id, 'webhook-timestamp': timestamp, 'webhook-signature': signatures.join(' ') }
}
