import t from 'tap'
import { createEventStreamReader, type ServerSentEvent } from '../../src/lib/server-sent-events.js'

/** Everything `pieces` make of a stream, fed in order, then ended. */
function read(pieces: string[]): ServerSentEvent[] {
  const events: ServerSentEvent[] = []
  const reader = createEventStreamReader((event) => events.push(event))
  for (const piece of pieces) reader.push(piece)
  reader.end()
  return events
}

const STREAM =
  ': keep-alive comment\n\n' +
  'data: {"a":1}\n\n' +
  'event: error\ndata: {"error":{"type":"server_error"}}\n\n' +
  'id: 7\nretry: 100\ndata:no space\n\n' +
  'data: first line\ndata:  two spaces\ndata\n\n' +
  'data: [DONE]\n\n'

const EXPECTED: ServerSentEvent[] = [
  { event: null, data: '{"a":1}' },
  { event: 'error', data: '{"error":{"type":"server_error"}}' },
  { event: null, data: 'no space' },
  { event: null, data: 'first line\n two spaces\n' },
  { event: null, data: '[DONE]' },
]

t.test('fields, comments and multi-line data as the format defines them', async (t) => {
  t.same(read([STREAM]), EXPECTED)
})

t.test('the same events however the stream is cut into pieces', async (t) => {
  for (let cut = 1; cut < STREAM.length; cut++) {
    const events = read([STREAM.slice(0, cut), STREAM.slice(cut)])
    if (JSON.stringify(events) !== JSON.stringify(EXPECTED)) {
      t.fail(`cut at ${cut} gave ${JSON.stringify(events)}`)
      return
    }
  }
  t.same(read([...STREAM]), EXPECTED, 'one character at a time')
})

t.test('CRLF line endings are line endings, not part of the values', async (t) => {
  const crlf = STREAM.replaceAll('\n', '\r\n')
  t.same(read([crlf]), EXPECTED)
  for (let cut = 1; cut < crlf.length; cut++) {
    if (JSON.stringify(read([crlf.slice(0, cut), crlf.slice(cut)])) !== JSON.stringify(EXPECTED)) {
      t.fail(`CRLF cut at ${cut}`)
      return
    }
  }
})

t.test('an event without data is not one; a last event without its blank line still is', async (t) => {
  t.same(read(['event: ping\n\n', ': only a comment\n\n']), [])
  t.same(read(['data: last\n']), [{ event: null, data: 'last' }], 'ended after one line break')
  t.same(read(['data: last']), [{ event: null, data: 'last' }], 'ended mid-line')
  t.same(read(['data: last\r']), [{ event: null, data: 'last' }], 'ended after a CR')
  t.same(read(['']), [], 'an empty stream has no events')
})
