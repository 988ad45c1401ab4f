import { validateRequest, validateRequestWithBody } from 'twilio/lib/webhooks/webhooks.js'
import { contentId, EventShapeError, SignatureError } from './verification.js'
import type { VerifiedEvent } from './webhooks-service.js'

type FormParams = Record<string, string | string[]>

export interface TwilioDelivery {
  rawBody: Buffer
  contentType: string | undefined
  /** The URL Twilio requested: PUBLIC_URL plus the path and query as received (proxies rewrite the host). */
  url: string
  signature: string | undefined
  /** The primary auth token and, while it is being rotated, the secondary one. */
  authTokens: string[]
}

/**
 * Verifies `X-Twilio-Signature` with the Twilio SDK's own validator: HMAC-SHA1 with the auth
 * token over the URL followed by the sorted form parameters, or, for JSON bodies, over the URL
 * whose `bodySHA256` parameter must match the body's hash. The SDK compares in constant time and
 * also tries the URL with and without its default port, as Twilio signs either.
 */
export function verifyTwilio(delivery: TwilioDelivery): VerifiedEvent {
  const { rawBody, url, signature, authTokens } = delivery
  if (!signature) throw new SignatureError('the X-Twilio-Signature header is missing')
  if (new URL(url).searchParams.has('bodySHA256')) {
    const body = rawBody.toString('utf8')
    if (!authTokens.some((token) => validateRequestWithBody(token, signature, url, body))) {
      throw new SignatureError('the Twilio signature or body hash does not verify')
    }
    return jsonEvent(body, url)
  }
  const params = isForm(delivery.contentType) ? parseForm(rawBody) : {}
  if (!authTokens.some((token) => validateRequest(token, signature, url, params))) {
    throw new SignatureError('the Twilio signature does not verify')
  }
  return formEvent(params, url, rawBody)
}

const isForm = (contentType: string | undefined) =>
  (contentType ?? '').split(';')[0]?.trim().toLowerCase() === 'application/x-www-form-urlencoded'

/** Repeated keys become arrays, as Twilio signs them; no key can reach an object's prototype. */
function parseForm(rawBody: Buffer): FormParams {
  const params: FormParams = Object.create(null) as FormParams
  for (const [key, value] of new URLSearchParams(rawBody.toString('utf8'))) {
    const previous = params[key]
    if (previous === undefined) params[key] = value
    else params[key] = Array.isArray(previous) ? [...previous, value] : [previous, value]
  }
  return params
}

const first = (value: unknown): string | undefined =>
  typeof value === 'string' && value !== '' ? value : Array.isArray(value) ? first(value[0]) : undefined

/**
 * A message or call is identified by its SID; its status callbacks (queued, sent, delivered...)
 * share that SID, so the status is part of the event id: a retried callback is a duplicate, the
 * next status is a new event. Deliveries without a SID are identified by what was signed.
 */
function formEvent(params: FormParams, url: string, rawBody: Buffer): VerifiedEvent {
  const messageSid = first(params.MessageSid) ?? first(params.SmsSid)
  const callSid = first(params.CallSid)
  const status = first(params.MessageStatus) ?? first(params.SmsStatus) ?? first(params.CallStatus)
  const eventType = first(params.EventType)
  const sid = messageSid ?? callSid ?? first(params.Sid)
  const discriminator = eventType ?? status
  const type =
    eventType ?? (messageSid ? `message.${status ?? 'received'}` : callSid ? `call.${status ?? 'received'}` : 'unknown')
  return {
    provider: 'twilio',
    providerEventId: sid ? (discriminator ? `${sid}:${discriminator}` : sid) : contentId(url, rawBody),
    type,
    payload: { ...params },
  }
}

function jsonEvent(body: string, url: string): VerifiedEvent {
  let payload: unknown
  try {
    payload = JSON.parse(body)
  } catch {
    throw new EventShapeError('a Twilio JSON delivery must be valid JSON')
  }
  const fields = payload !== null && typeof payload === 'object' && !Array.isArray(payload) ? payload : {}
  const { id, sid, type, EventType } = fields as Record<string, unknown>
  return {
    provider: 'twilio',
    providerEventId: first(id) ?? first(sid) ?? contentId(url, body),
    type: first(type) ?? first(EventType) ?? 'unknown',
    payload,
  }
}
