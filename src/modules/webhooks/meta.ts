import { createHmac, timingSafeEqual } from 'node:crypto'
import { canonicalJson } from '../../lib/json.js'
import { contentId, EventShapeError, safeEqual, SignatureError } from './verification.js'
import type { VerifiedEvent } from './webhooks-service.js'

const SIGNATURE = /^sha256=([0-9a-f]{64})$/i

/**
 * Verifies `X-Hub-Signature-256` (`sha256=` + hex HMAC-SHA256 of the raw body with the app
 * secret), compared in constant time, and splits the delivery into events. Meta batches several
 * updates into one POST and sends no event ids: each update (an entry's change or messaging
 * item) becomes one event whose id is the hash of its content, so a redelivered batch stores
 * nothing twice.
 */
export function verifyMeta(rawBody: Buffer, header: string | undefined, secrets: string[]): VerifiedEvent[] {
  if (!header) throw new SignatureError('the X-Hub-Signature-256 header is missing')
  const match = SIGNATURE.exec(header.trim())
  if (!match?.[1]) throw new SignatureError('the X-Hub-Signature-256 header is not sha256=<hex>')
  const received = Buffer.from(match[1], 'hex')
  const signed = secrets.some((secret) =>
    timingSafeEqual(received, createHmac('sha256', secret).update(rawBody).digest()),
  )
  if (!signed) throw new SignatureError('the Meta signature does not verify')
  return metaEvents(rawBody)
}

/** The subscription handshake: Meta proves it knows the verify token, we echo its challenge. */
export function verifyMetaChallenge(mode: string | undefined, token: string | undefined, verifyToken: string) {
  return mode === 'subscribe' && token !== undefined && safeEqual(token, verifyToken)
}

interface MetaEntry {
  id?: unknown
  time?: unknown
  changes?: unknown
  messaging?: unknown
}

function metaEvents(rawBody: Buffer): VerifiedEvent[] {
  let body: unknown
  try {
    body = JSON.parse(rawBody.toString('utf8'))
  } catch {
    throw new EventShapeError('a Meta delivery must be JSON')
  }
  const { object, entry } = (body ?? {}) as { object?: unknown; entry?: unknown }
  if (typeof object !== 'string' || object === '' || !Array.isArray(entry)) {
    throw new EventShapeError('a Meta delivery needs an object name and an entry array')
  }
  const events: VerifiedEvent[] = []
  const add = (type: string, payload: Record<string, unknown>) =>
    events.push({ provider: 'meta', providerEventId: contentId(canonicalJson(payload)), type, payload })
  for (const item of entry as MetaEntry[]) {
    const source = { id: item?.id ?? null, time: item?.time ?? null }
    const changes = Array.isArray(item?.changes) ? (item.changes as { field?: unknown }[]) : []
    const messaging = Array.isArray(item?.messaging) ? (item.messaging as unknown[]) : []
    for (const change of changes) {
      const field = typeof change?.field === 'string' && change.field !== '' ? change.field : 'unknown'
      add(`${object}.${field}`, { object, entry: source, change })
    }
    for (const message of messaging) add(`${object}.messaging`, { object, entry: source, messaging: message })
    if (changes.length === 0 && messaging.length === 0) add(object, { object, entry: item })
  }
  if (events.length === 0) throw new EventShapeError('a Meta delivery needs at least one entry')
  return events
}
