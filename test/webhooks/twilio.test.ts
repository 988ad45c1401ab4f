import t from 'tap'
import { getExpectedBodyHash } from 'twilio/lib/webhooks/webhooks.js'
import { buildTestApp } from '../helper.js'
import { assertProblem } from '../auth/support.js'
import {
  countEvents,
  deliverSignedForm,
  deliverTwilio,
  eventually,
  FAST,
  formBody,
  inboundSms,
  jobsFor,
  PUBLIC_URL,
  RecordingHandlers,
  sid,
  statusCallback,
  statusOf,
  storedEvent,
  storedEvents,
  TWILIO_PATH,
  TWILIO_TOKEN,
  twilioSignature,
  type TwilioParams,
} from './support.js'

const PREVIOUS_TOKEN = 'twilio_test_auth_token_previous'
const PUBLIC_ENDPOINT = `${PUBLIC_URL}${TWILIO_PATH}`
const EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'

// One app for the whole file: every case uses its own SIDs and checks only its own rows, or that
// the number of stored rows did not change.
const handlers = new RecordingHandlers()
const received = handlers.on('twilio', 'message.received')
const sent = handlers.on('twilio', 'message.sent')
const delivered = handlers.on('twilio', 'message.delivered')
const app = await buildTestApp(t, {
  env: { ...FAST, PUBLIC_URL, TWILIO_AUTH_TOKEN: `${TWILIO_TOKEN},${PREVIOUS_TOKEN}` },
  extend: handlers.extend,
})

t.test('a signed inbound SMS is answered with empty TwiML, stored and processed once', async (t) => {
  const messageSid = sid('SM')
  const params = inboundSms(messageSid, 'Hi + welcome & thanks: 100% sure?')
  const response = await deliverSignedForm(app, params)
  t.equal(response.statusCode, 200)
  t.match(response.headers['content-type'], /^text\/xml(;|$)/, 'TwiML')
  t.equal(response.body, EMPTY_TWIML)

  const row = await storedEvent(app, 'twilio', `${messageSid}:received`)
  t.ok(row, 'stored before the answer, identified by the message SID and its status')
  t.equal(row?.type, 'message.received')
  t.same(row?.payload, params, 'the form parameters as sent')

  t.ok(await eventually(async () => (await statusOf(app, row?.id ?? '')) === 'processed'), 'processed')
  const calls = received.filter((call) => call.id === row?.id)
  t.equal(calls.length, 1, 'by the message.received handler, once')
  t.equal(calls[0]?.providerEventId, `${messageSid}:received`)
  t.equal((calls[0]?.payload as Record<string, string>).Body, 'Hi + welcome & thanks: 100% sure?')
})

t.test('the signed URL includes the query string', async (t) => {
  const params = inboundSms()
  const url = `${TWILIO_PATH}?source=sms&campaign=spring%20sale`
  const body = formBody(params)
  const before = await countEvents(app)
  const withoutQuery = await deliverTwilio(app, { url, body, signature: twilioSignature(PUBLIC_ENDPOINT, params) })
  assertProblem(t, withoutQuery, 400, 'INVALID_SIGNATURE', 'signed without the query')
  t.equal(await countEvents(app), before, 'nothing stored')
  const signed = await deliverTwilio(app, { url, body, signature: twilioSignature(`${PUBLIC_URL}${url}`, params) })
  t.equal(signed.statusCode, 200, 'signed with the query')
  t.equal(await countEvents(app), before + 1)
})

t.test('behind a proxy the signature is checked against PUBLIC_URL, not the address the app sees', async (t) => {
  const proxied = { host: '10.1.2.3:8080', 'x-forwarded-host': 'api.example.com', 'x-forwarded-proto': 'https' }
  const params = inboundSms()
  const body = formBody(params)
  const before = await countEvents(app)
  for (const internal of ['http://localhost', 'http://10.1.2.3:8080', 'http://api.example.com']) {
    const response = await deliverTwilio(app, {
      body,
      headers: proxied,
      signature: twilioSignature(`${internal}${TWILIO_PATH}`, params),
    })
    assertProblem(t, response, 400, 'INVALID_SIGNATURE', `signed for ${internal}`)
  }
  t.equal(await countEvents(app), before, 'nothing stored')

  const response = await deliverTwilio(app, {
    body,
    headers: proxied,
    signature: twilioSignature(PUBLIC_ENDPOINT, params),
  })
  t.equal(response.statusCode, 200, 'signed for the public URL')
  t.ok(await storedEvent(app, 'twilio', `${params.MessageSid}:received`), 'stored')
})

t.test('a signature over the URL with its default port verifies too; another port does not', async (t) => {
  const params = inboundSms()
  const body = formBody(params)
  const otherPort = await deliverTwilio(app, {
    body,
    signature: twilioSignature(`https://api.example.com:8443${TWILIO_PATH}`, params),
  })
  assertProblem(t, otherPort, 400, 'INVALID_SIGNATURE', 'port 8443')
  const defaultPort = await deliverTwilio(app, {
    body,
    signature: twilioSignature(`https://api.example.com:443${TWILIO_PATH}`, params),
  })
  t.equal(defaultPort.statusCode, 200, 'port 443')
  t.ok(await storedEvent(app, 'twilio', `${params.MessageSid}:received`), 'stored')
})

t.test('a JSON delivery is verified through its bodySHA256 parameter', async (t) => {
  const eventId = sid('EV')
  const body = JSON.stringify({ id: eventId, type: 'com.twilio.test.json-event', data: { to: '+14155550100' } })
  const url = `${TWILIO_PATH}?bodySHA256=${getExpectedBodyHash(body)}`
  const signature = twilioSignature(`${PUBLIC_URL}${url}`)
  const before = await countEvents(app)

  const tampered = body.replace('+14155550100', '+14155550666')
  assertProblem(
    t,
    await deliverTwilio(app, { url, body: tampered, signature, contentType: 'application/json' }),
    400,
    'INVALID_SIGNATURE',
    'a body that does not match its hash',
  )
  // Recomputing the hash changes the signed URL, so the signature no longer matches it.
  const rehashed = `${TWILIO_PATH}?bodySHA256=${getExpectedBodyHash(tampered)}`
  assertProblem(
    t,
    await deliverTwilio(app, { url: rehashed, body: tampered, signature, contentType: 'application/json' }),
    400,
    'INVALID_SIGNATURE',
    'a tampered body with its own hash',
  )
  t.equal(await countEvents(app), before, 'nothing stored')

  const response = await deliverTwilio(app, { url, body, signature, contentType: 'application/json' })
  t.equal(response.statusCode, 200, 'the body as signed')
  const row = await storedEvent(app, 'twilio', eventId)
  t.equal(row?.type, 'com.twilio.test.json-event', 'stored with its own id and type')
  t.same(row?.payload, JSON.parse(body))
})

t.test('bad, missing and foreign signatures and changed parameters are 400 and store nothing', async (t) => {
  const params = inboundSms()
  const body = formBody(params)
  const changed = formBody({ ...params, Body: 'Send me the money' })
  const cases: [string, string, string | undefined][] = [
    ['no header', body, undefined],
    ['an empty header', body, ''],
    ['garbage', body, 'not-a-signature'],
    ['another auth token', body, twilioSignature(PUBLIC_ENDPOINT, params, 'someone_elses_auth_token')],
    ['a parameter changed after signing', changed, twilioSignature(PUBLIC_ENDPOINT, params)],
    ['a parameter added after signing', `${body}&Extra=1`, twilioSignature(PUBLIC_ENDPOINT, params)],
    ['a JSON content type for a form', body, twilioSignature(PUBLIC_ENDPOINT, params)],
  ]
  const before = await countEvents(app)
  for (const [label, payload, signature] of cases) {
    const response = await deliverTwilio(app, {
      body: payload,
      signature,
      ...(label.startsWith('a JSON') ? { contentType: 'application/json' } : {}),
    })
    assertProblem(t, response, 400, 'INVALID_SIGNATURE', label)
    t.notMatch(response.body, new RegExp(TWILIO_TOKEN), `${label}: no token in the answer`)
  }
  t.equal(await countEvents(app), before, 'nothing stored')
})

t.test('repeated keys are signed as Twilio signs arrays: each value, sorted', async (t) => {
  const params: TwilioParams = { ...inboundSms(), MediaContentType: ['image/png', 'image/jpeg'] }
  const body = formBody(params)
  const before = await countEvents(app)
  const firstOnly = twilioSignature(PUBLIC_ENDPOINT, { ...params, MediaContentType: 'image/png' })
  assertProblem(
    t,
    await deliverTwilio(app, { body, signature: firstOnly }),
    400,
    'INVALID_SIGNATURE',
    'signed with the first value only',
  )
  const lastWins = twilioSignature(PUBLIC_ENDPOINT, { ...params, MediaContentType: 'image/jpeg' })
  assertProblem(
    t,
    await deliverTwilio(app, { body, signature: lastWins }),
    400,
    'INVALID_SIGNATURE',
    'signed with the last value only',
  )
  t.equal(await countEvents(app), before, 'nothing stored')

  const response = await deliverTwilio(app, { body, signature: twilioSignature(PUBLIC_ENDPOINT, params) })
  t.equal(response.statusCode, 200, 'signed over both values')
  const row = await storedEvent(app, 'twilio', `${params.MessageSid}:received`)
  t.same((row?.payload as Record<string, unknown>).MediaContentType, ['image/png', 'image/jpeg'], 'stored as an array')
})

t.test('a redelivered SMS is acknowledged, stored once and processed once', async (t) => {
  const params = inboundSms()
  const first = await deliverSignedForm(app, params)
  const again = await deliverSignedForm(app, params)
  t.equal(first.statusCode, 200)
  t.equal(again.statusCode, 200, 'the retry is acknowledged too')
  t.equal(again.body, EMPTY_TWIML)
  const rows = (await storedEvents(app)).filter((row) => row.providerEventId.startsWith(String(params.MessageSid)))
  t.equal(rows.length, 1, 'one stored event')
  const id = rows[0]?.id ?? ''
  t.equal(await jobsFor(app, id), 1, 'one processing job')
  t.ok(await eventually(async () => (await statusOf(app, id)) === 'processed'), 'processed')
  t.equal(received.filter((call) => call.id === id).length, 1, 'the handler ran once')
  t.equal(await jobsFor(app, id), 1, 'and no job was added')
})

t.test('status callbacks of one message are one event per status; a retried status is a duplicate', async (t) => {
  const messageSid = sid('SM')
  const before = await countEvents(app)
  for (const status of ['sent', 'delivered', 'delivered']) {
    t.equal((await deliverSignedForm(app, statusCallback(messageSid, status))).statusCode, 200, status)
  }
  t.equal(await countEvents(app), before + 2, 'two events')
  const sentRow = await storedEvent(app, 'twilio', `${messageSid}:sent`)
  const deliveredRow = await storedEvent(app, 'twilio', `${messageSid}:delivered`)
  t.equal(sentRow?.type, 'message.sent')
  t.equal(deliveredRow?.type, 'message.delivered')
  t.ok(
    await eventually(async () => {
      const statuses = [await statusOf(app, sentRow?.id ?? ''), await statusOf(app, deliveredRow?.id ?? '')]
      return statuses.every((status) => status === 'processed')
    }),
    'both processed',
  )
  t.same(
    sent.filter((call) => call.providerEventId.startsWith(messageSid)).map((call) => call.id),
    [sentRow?.id],
    'the sent handler ran once',
  )
  t.same(
    delivered.filter((call) => call.providerEventId.startsWith(messageSid)).map((call) => call.id),
    [deliveredRow?.id],
    'the delivered handler ran once',
  )
})

t.test('while the auth token is rotated, signatures with either token verify; a third does not', async (t) => {
  const current = inboundSms()
  const previous = inboundSms()
  const third = inboundSms()
  t.equal((await deliverSignedForm(app, current, TWILIO_TOKEN)).statusCode, 200, 'the current token')
  t.equal((await deliverSignedForm(app, previous, PREVIOUS_TOKEN)).statusCode, 200, 'the previous token')
  const before = await countEvents(app)
  assertProblem(t, await deliverSignedForm(app, third, 'a_third_auth_token'), 400, 'INVALID_SIGNATURE', 'a third')
  t.equal(await countEvents(app), before, 'the third is not stored')
  t.ok(await storedEvent(app, 'twilio', `${current.MessageSid}:received`))
  t.ok(await storedEvent(app, 'twilio', `${previous.MessageSid}:received`))
})

t.test('without TWILIO_AUTH_TOKEN the endpoint answers 503 NOT_CONFIGURED and stores nothing', async (t) => {
  const unconfigured = await buildTestApp(t, { env: { PUBLIC_URL } })
  const response = await deliverSignedForm(unconfigured, inboundSms())
  assertProblem(t, response, 503, 'NOT_CONFIGURED')
  t.equal(await countEvents(unconfigured), 0, 'nothing stored')
})
