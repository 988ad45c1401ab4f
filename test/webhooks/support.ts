import { createHmac, randomBytes } from 'node:crypto'
import { asc, eq, sql } from 'drizzle-orm'
import type { FastifyInstance } from 'fastify'
import { getExpectedTwilioSignature } from 'twilio/lib/webhooks/webhooks.js'
import { webhookEvents } from '../../src/db/schema/index.js'
import type { InboundEvent } from '../../src/modules/webhooks/webhooks-service.js'
import { eventually as eventuallyWithin } from '../helper.js'

/** Quick polling and retries, so that processing, retries and dead events happen within seconds. */
export const FAST = {
  JOBS_POLL_INTERVAL_MS: '500',
  INBOUND_WEBHOOK_RETRY_DELAY_SECONDS: '1',
  INBOUND_WEBHOOK_RETRY_LIMIT: '2',
}

/** Background work these tests wait for finishes within 20000 ms. */
export const eventually = (check: () => boolean | Promise<boolean>, ms = 20_000) => eventuallyWithin(check, ms)

/** Every stored inbound event, oldest first. */
export const storedEvents = (app: FastifyInstance) =>
  app.db.select().from(webhookEvents).orderBy(asc(webhookEvents.receivedAt), asc(webhookEvents.id))

export async function storedEvent(app: FastifyInstance, provider: string, providerEventId: string) {
  const rows = await storedEvents(app)
  return rows.find((row) => row.provider === provider && row.providerEventId === providerEventId)
}

export const countEvents = async (app: FastifyInstance) => (await storedEvents(app)).length

/** Processing jobs ever queued for one event, pending, done or archived. */
export async function jobsFor(app: FastifyInstance, eventId: string): Promise<number> {
  const result = (await app.db.execute(
    sql`select (select count(*) from pgboss.job where data->>'eventId' = ${eventId})
             + (select count(*) from pgboss.archive where data->>'eventId' = ${eventId}) as jobs`,
  )) as unknown as { rows?: { jobs: string | number }[] } | { jobs: string | number }[]
  const rows = Array.isArray(result) ? result : (result.rows ?? [])
  return Number(rows[0]?.jobs ?? -1)
}

/** The stored status of an event, by its id. */
export async function statusOf(app: FastifyInstance, id: string) {
  const [row] = await app.db.select().from(webhookEvents).where(eq(webhookEvents.id, id))
  return row?.status
}

interface Registration {
  provider: string
  type: string
  calls: InboundEvent[]
  fails: (call: number) => boolean
}

/**
 * Handlers that record each event they receive; one that `fails` throws for that call (1-based),
 * so retries, dead events and replays after a fix can be staged.
 */
export class RecordingHandlers {
  private readonly registrations: Registration[] = []

  /** Registers a handler for `provider` `type`; returns the list of the events it is called with. */
  on(provider: string, type: string, fails: (call: number) => boolean = () => false): InboundEvent[] {
    const calls: InboundEvent[] = []
    this.registrations.push({ provider, type, calls, fails })
    return calls
  }

  readonly extend = (app: FastifyInstance) => {
    for (const { provider, type, calls, fails } of this.registrations) {
      app.webhookHandlers.register(provider, type, async (event) => {
        calls.push(event)
        if (fails(calls.length)) throw new Error(`handler failure ${calls.length}`)
      })
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Twilio

export const TWILIO_PATH = '/api/v1/webhooks/twilio'
export const TWILIO_TOKEN = 'twilio_test_auth_token_current'
/** What PUBLIC_URL is set to in these tests: the URL Twilio is configured with, behind a proxy. */
export const PUBLIC_URL = 'https://api.example.com'

export type TwilioParams = Record<string, string | string[]>

/** A Twilio SID: two letters and 32 hex digits. */
export const sid = (prefix: string) => `${prefix}${randomBytes(16).toString('hex')}`

/** The parameters of an inbound SMS, as Twilio posts them to a messaging webhook. */
export function inboundSms(messageSid = sid('SM'), body = 'Hello from the tests'): TwilioParams {
  return {
    ToCountry: 'US',
    ToState: 'CA',
    SmsMessageSid: messageSid,
    NumMedia: '0',
    ToCity: 'SAN FRANCISCO',
    FromZip: '94105',
    SmsSid: messageSid,
    FromState: 'CA',
    SmsStatus: 'received',
    FromCity: 'SAN FRANCISCO',
    Body: body,
    FromCountry: 'US',
    To: '+14155550100',
    ToZip: '94105',
    NumSegments: '1',
    MessageSid: messageSid,
    AccountSid: sid('AC'),
    From: '+14155550199',
    ApiVersion: '2010-04-01',
  }
}

/** A message status callback (sent, delivered...) as Twilio posts it to a StatusCallback URL. */
export function statusCallback(messageSid: string, status: string): TwilioParams {
  return {
    SmsSid: messageSid,
    SmsStatus: status,
    MessageStatus: status,
    To: '+14155550100',
    MessageSid: messageSid,
    AccountSid: sid('AC'),
    From: '+14155550199',
    ApiVersion: '2010-04-01',
  }
}

/** The form body Twilio sends: repeated keys for array values. */
export function formBody(params: TwilioParams): string {
  const form = new URLSearchParams()
  for (const [key, value] of Object.entries(params)) {
    for (const item of Array.isArray(value) ? value : [value]) form.append(key, item)
  }
  return form.toString()
}

/** X-Twilio-Signature as the Twilio SDK computes it for `url` and the form parameters. */
export function twilioSignature(url: string, params: TwilioParams = {}, token = TWILIO_TOKEN): string {
  return getExpectedTwilioSignature(token, url, params)
}

export function deliverTwilio(
  app: FastifyInstance,
  delivery: {
    body: string
    signature?: string | undefined
    /** Path and query as they reach the app. */
    url?: string
    contentType?: string
    headers?: Record<string, string>
  },
) {
  return app.inject({
    method: 'POST',
    url: delivery.url ?? TWILIO_PATH,
    headers: {
      'content-type': delivery.contentType ?? 'application/x-www-form-urlencoded',
      ...(delivery.signature === undefined ? {} : { 'x-twilio-signature': delivery.signature }),
      ...delivery.headers,
    },
    payload: delivery.body,
  })
}

/** A form delivery signed over PUBLIC_URL + path, as Twilio sends it. */
export function deliverSignedForm(app: FastifyInstance, params: TwilioParams, token = TWILIO_TOKEN) {
  return deliverTwilio(app, {
    body: formBody(params),
    signature: twilioSignature(`${PUBLIC_URL}${TWILIO_PATH}`, params, token),
  })
}

// ---------------------------------------------------------------------------------------------------
// Meta

export const META_PATH = '/api/v1/webhooks/meta'
export const META_SECRET = 'meta_test_app_secret_current'
export const META_VERIFY_TOKEN = 'meta-test-verify-token'

/** X-Hub-Signature-256: `sha256=` and the hex HMAC-SHA256 of the raw body with the app secret. */
export const metaSignature = (body: string | Buffer, secret = META_SECRET) =>
  `sha256=${createHmac('sha256', secret).update(body).digest('hex')}`

export function deliverMeta(app: FastifyInstance, body: string, signature?: string) {
  return app.inject({
    method: 'POST',
    url: META_PATH,
    headers: {
      'content-type': 'application/json',
      ...(signature === undefined ? {} : { 'x-hub-signature-256': signature }),
    },
    payload: body,
  })
}

export const deliverSignedMeta = (app: FastifyInstance, body: string) => deliverMeta(app, body, metaSignature(body))

export interface WhatsAppChange {
  field: string
  value: Record<string, unknown>
}

/** A WhatsApp Cloud API message notification: one change per inbound message. */
export function whatsappMessage(text: string, messageId = `wamid.${randomBytes(12).toString('hex')}`): WhatsAppChange {
  return {
    field: 'messages',
    value: {
      messaging_product: 'whatsapp',
      metadata: { display_phone_number: '15550100', phone_number_id: '106540352242922' },
      contacts: [{ profile: { name: 'Test Customer' }, wa_id: '15550199' }],
      messages: [{ from: '15550199', id: messageId, timestamp: '1700000000', text: { body: text }, type: 'text' }],
    },
  }
}

/** A WhatsApp Business Account delivery: one entry whose changes are batched together. */
export function whatsappBatch(changes: WhatsAppChange[], accountId = '102290129340398'): string {
  return JSON.stringify({ object: 'whatsapp_business_account', entry: [{ id: accountId, changes }] })
}

/** A Messenger (Page) delivery: entries with messaging items. */
export function messengerBatch(texts: string[], pageId = '112233445566778', time = Date.now()): string {
  return JSON.stringify({
    object: 'page',
    entry: [
      {
        id: pageId,
        time,
        messaging: texts.map((text, index) => ({
          sender: { id: '2233445566778899' },
          recipient: { id: pageId },
          timestamp: time + index,
          message: { mid: `m_${randomBytes(12).toString('hex')}`, text },
        })),
      },
    ],
  })
}

// ---------------------------------------------------------------------------------------------------
// Metrics

/** webhook_events_total from /metrics, keyed `provider/status`. */
export async function webhookCounters(app: FastifyInstance): Promise<Record<string, number>> {
  const response = await app.inject({ method: 'GET', url: '/metrics' })
  if (response.statusCode !== 200) throw new Error(`/metrics answered ${response.statusCode}`)
  const counters: Record<string, number> = {}
  for (const line of response.body.split('\n')) {
    const match = /^webhook_events_total\{([^}]*)\} (\d+(?:\.\d+)?)$/.exec(line)
    if (!match?.[1] || !match[2]) continue
    const labels = Object.fromEntries([...match[1].matchAll(/(\w+)="([^"]*)"/g)].map(([, key, value]) => [key, value]))
    counters[`${labels.provider}/${labels.status}`] = Number(match[2])
  }
  return counters
}

/** What changed between two readings of webhook_events_total (only the counters that moved). */
export function counterDelta(before: Record<string, number>, after: Record<string, number>) {
  const delta: Record<string, number> = {}
  for (const [key, value] of Object.entries(after)) {
    const moved = value - (before[key] ?? 0)
    if (moved !== 0) delta[key] = moved
  }
  return delta
}
