import t from 'tap'
import { buildTestApp } from '../helper.js'
import { assertProblem } from '../auth/support.js'
import {
  countEvents,
  deliverMeta,
  deliverSignedMeta,
  eventually,
  FAST,
  META_PATH,
  META_SECRET,
  META_VERIFY_TOKEN,
  messengerBatch,
  metaSignature,
  RecordingHandlers,
  statusOf,
  storedEvents,
  whatsappBatch,
  whatsappMessage,
} from './support.js'

const MESSAGES = 'whatsapp_business_account.messages'

// One app for the whole file: every case checks only the rows it stored, or that the number of
// stored rows did not change.
const handlers = new RecordingHandlers()
const messages = handlers.on('meta', MESSAGES)
const app = await buildTestApp(t, {
  env: { ...FAST, META_APP_SECRET: META_SECRET, META_VERIFY_TOKEN },
  extend: handlers.extend,
})

const challenge = (query: Record<string, string>, target = app) =>
  target.inject({ method: 'GET', url: META_PATH, query })

/** The stored rows whose payload mentions `marker` (a message id or text unique to one test). */
async function rowsWith(marker: string) {
  return (await storedEvents(app)).filter((row) => JSON.stringify(row.payload).includes(marker))
}

t.test('the subscription handshake echoes hub.challenge only for the verify token', async (t) => {
  const ok = await challenge({
    'hub.mode': 'subscribe',
    'hub.verify_token': META_VERIFY_TOKEN,
    'hub.challenge': '1158201444',
  })
  t.equal(ok.statusCode, 200)
  t.match(ok.headers['content-type'], /^text\/plain(;|$)/)
  t.equal(ok.body, '1158201444', 'the challenge, as sent')

  // Echoing the challenge is what subscribes a callback URL: a refusal never contains it.
  const refusedChallenge = 'challenge-5f3a9c'
  const refusals: [string, Record<string, string>][] = [
    ['a wrong token', { 'hub.mode': 'subscribe', 'hub.verify_token': 'guess', 'hub.challenge': refusedChallenge }],
    ['no token', { 'hub.mode': 'subscribe', 'hub.challenge': refusedChallenge }],
    [
      'a token that only starts right',
      { 'hub.mode': 'subscribe', 'hub.verify_token': 'meta-test', 'hub.challenge': refusedChallenge },
    ],
    [
      'another mode',
      { 'hub.mode': 'unsubscribe', 'hub.verify_token': META_VERIFY_TOKEN, 'hub.challenge': refusedChallenge },
    ],
    ['no mode', { 'hub.verify_token': META_VERIFY_TOKEN, 'hub.challenge': refusedChallenge }],
  ]
  for (const [label, query] of refusals) {
    const response = await challenge(query)
    assertProblem(t, response, 403, 'INVALID_VERIFY_TOKEN', label)
    t.notMatch(response.body, new RegExp(refusedChallenge), `${label}: the challenge is not echoed`)
  }

  assertProblem(
    t,
    await challenge({ 'hub.mode': 'subscribe', 'hub.verify_token': META_VERIFY_TOKEN }),
    400,
    'INVALID_CHALLENGE',
    'no challenge',
  )
  const unknown = await challenge({
    'hub.mode': 'subscribe',
    'hub.verify_token': META_VERIFY_TOKEN,
    'hub.challenge': '42',
    'hub.extra': 'x',
  })
  assertProblem(t, unknown, 400, 'VALIDATION_FAILED', 'an unknown parameter')
  const markup = await challenge({
    'hub.mode': 'subscribe',
    'hub.verify_token': META_VERIFY_TOKEN,
    'hub.challenge': '<script>alert(1)</script> x',
  })
  assertProblem(t, markup, 400, 'VALIDATION_FAILED', 'a challenge with spaces')
})

t.test('a signed WhatsApp batch stores each change as one event, handled one by one', async (t) => {
  const changes = [whatsappMessage('first message'), whatsappMessage('second message')]
  const ids = changes.map((change) => (change.value.messages as { id: string }[])[0]?.id ?? '')
  const body = whatsappBatch(changes)
  const response = await deliverSignedMeta(app, body)
  t.equal(response.statusCode, 200)
  t.same(response.json(), { received: true, duplicate: false })

  const rows = (await storedEvents(app)).filter((row) => ids.some((id) => JSON.stringify(row.payload).includes(id)))
  t.equal(rows.length, 2, 'two events')
  for (const [index, change] of changes.entries()) {
    const row = rows.find((candidate) => JSON.stringify(candidate.payload).includes(ids[index] ?? '-'))
    t.equal(row?.type, MESSAGES, `change ${index}: typed <object>.<field>`)
    t.match(row?.providerEventId, /^sha256:[0-9a-f]{64}$/, `change ${index}: identified by its content hash`)
    t.same(
      row?.payload,
      { object: 'whatsapp_business_account', entry: { id: '102290129340398', time: null }, change },
      `change ${index}: the change with its object and entry`,
    )
  }
  t.not(rows[0]?.providerEventId, rows[1]?.providerEventId, 'distinct ids')

  t.ok(
    await eventually(async () => {
      const statuses = await Promise.all(rows.map((row) => statusOf(app, row.id)))
      return statuses.every((status) => status === 'processed')
    }),
    'both processed',
  )
  const calls = messages.filter((call) => rows.some((row) => row.id === call.id))
  t.equal(calls.length, 2, 'the handler received each change once')
  t.same(
    calls
      .map(
        (call) => (call.payload as { change: { value: { messages: { id: string }[] } } }).change.value.messages[0]?.id,
      )
      .sort(),
    [...ids].sort(),
    'with its own message',
  )
  t.ok(
    calls.every((call) => call.type === MESSAGES && call.provider === 'meta'),
    'typed as stored',
  )
})

t.test('a Messenger batch gives page.messaging events; with no handler they end ignored', async (t) => {
  const marker = `messenger-${Date.now()}`
  const response = await deliverSignedMeta(app, messengerBatch([`${marker} one`, `${marker} two`, `${marker} three`]))
  t.same(response.json(), { received: true, duplicate: false })
  const rows = await rowsWith(marker)
  t.equal(rows.length, 3, 'one event per messaging item')
  t.ok(
    rows.every((row) => row.type === 'page.messaging'),
    'typed page.messaging',
  )
  const first = rows.find((row) => JSON.stringify(row.payload).includes(`${marker} one`))
  t.match(first?.payload, {
    object: 'page',
    entry: { id: '112233445566778' },
    messaging: { message: { text: `${marker} one` } },
  })
  t.ok(
    await eventually(async () => {
      const statuses = await Promise.all(rows.map((row) => statusOf(app, row.id)))
      return statuses.every((status) => status === 'ignored')
    }),
    'ignored',
  )
})

t.test('a redelivered batch is a duplicate; an overlapping one stores only its new change', async (t) => {
  const old = whatsappMessage('already seen')
  const body = whatsappBatch([old, whatsappMessage('also already seen')])
  t.same((await deliverSignedMeta(app, body)).json(), { received: true, duplicate: false })
  const stored = await countEvents(app)

  const again = await deliverSignedMeta(app, body)
  t.equal(again.statusCode, 200)
  t.same(again.json(), { received: true, duplicate: true }, 'the same batch again')
  t.equal(await countEvents(app), stored, 'nothing new stored')

  const fresh = whatsappMessage('new in this batch')
  const overlapping = await deliverSignedMeta(app, whatsappBatch([old, fresh]))
  t.same(overlapping.json(), { received: true, duplicate: false }, 'one change is new')
  t.equal(await countEvents(app), stored + 1, 'only the new change is stored')
  t.equal((await rowsWith('new in this batch')).length, 1)
  t.equal((await rowsWith('already seen')).length, 2, 'the old changes are stored once each')
})

t.test('bad, missing, malformed and foreign signatures are 400 and store nothing', async (t) => {
  const body = whatsappBatch([whatsappMessage('should never be stored')])
  const hex = metaSignature(body).slice('sha256='.length)
  const cases: [string, string, string | undefined][] = [
    ['no header', body, undefined],
    ['an empty header', body, ''],
    ['the legacy sha1 form', body, `sha1=${hex.slice(0, 40)}`],
    ['the right digest under sha1=', body, `sha1=${hex}`],
    ['no prefix', body, hex],
    ['non-hex digits', body, `sha256=${'z'.repeat(64)}`],
    ['too short', body, `sha256=${hex.slice(0, 62)}`],
    ['too long', body, `sha256=${hex}00`],
    ['all zeros', body, `sha256=${'0'.repeat(64)}`],
    ['another secret', body, metaSignature(body, 'someone_elses_app_secret')],
    ['a body changed after signing', body.replace('never', 'always'), metaSignature(body)],
    ['a body with a trailing newline', `${body}\n`, metaSignature(body)],
  ]
  const before = await countEvents(app)
  for (const [label, payload, signature] of cases) {
    const response = await deliverMeta(app, payload, signature)
    assertProblem(t, response, 400, 'INVALID_SIGNATURE', label)
    t.notMatch(response.body, new RegExp(META_SECRET), `${label}: no secret in the answer`)
  }
  t.equal(await countEvents(app), before, 'nothing stored')
})

t.test('a signed body that is not a Meta delivery is 400 INVALID_EVENT and stores nothing', async (t) => {
  const cases: [string, string][] = [
    ['not JSON', 'hub.mode=subscribe'],
    ['JSON null', 'null'],
    ['an array', '[]'],
    ['no object', JSON.stringify({ entry: [{ id: '1', changes: [] }] })],
    ['an empty object name', JSON.stringify({ object: '', entry: [{ id: '1' }] })],
    ['no entry', JSON.stringify({ object: 'page' })],
    ['entry not an array', JSON.stringify({ object: 'page', entry: { id: '1' } })],
    ['no entries', JSON.stringify({ object: 'page', entry: [] })],
  ]
  const before = await countEvents(app)
  for (const [label, body] of cases) {
    assertProblem(t, await deliverSignedMeta(app, body), 400, 'INVALID_EVENT', label)
  }
  t.equal(await countEvents(app), before, 'nothing stored')
})

t.test('without META_APP_SECRET or META_VERIFY_TOKEN the endpoints answer 503 and store nothing', async (t) => {
  const unconfigured = await buildTestApp(t)
  const handshake = await challenge(
    { 'hub.mode': 'subscribe', 'hub.verify_token': META_VERIFY_TOKEN, 'hub.challenge': '42' },
    unconfigured,
  )
  assertProblem(t, handshake, 503, 'NOT_CONFIGURED', 'the handshake')
  const body = whatsappBatch([whatsappMessage('unconfigured')])
  assertProblem(t, await deliverSignedMeta(unconfigured, body), 503, 'NOT_CONFIGURED', 'a delivery')
  t.equal(await countEvents(unconfigured), 0, 'nothing stored')
})
