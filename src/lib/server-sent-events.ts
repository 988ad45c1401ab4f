/** One event of a `text/event-stream`: its `data` lines joined, and its `event` field when it had one. */
export interface ServerSentEvent {
  event: string | null
  data: string
}

/**
 * An incremental reader of the `text/event-stream` format (WHATWG HTML, server-sent events): feed
 * it text as it arrives, in pieces cut anywhere, and it hands on each complete event. Comments,
 * `id` and `retry` fields are skipped, and so is an event without data, as a browser does.
 *
 * It works on the string between lines only (no per-byte state machine, no allocation per
 * field), because it sits on the hot path of every streamed token.
 */
export function createEventStreamReader(onEvent: (event: ServerSentEvent) => void) {
  let pending = ''
  let data: string | null = null
  let event: string | null = null

  const line = (text: string) => {
    if (text === '') {
      if (data !== null) onEvent({ event, data })
      data = null
      event = null
      return
    }
    const colon = text.indexOf(':')
    // A line starting with a colon is a comment (keep-alives).
    if (colon === 0) return
    const field = colon === -1 ? text : text.slice(0, colon)
    let value = colon === -1 ? '' : text.slice(colon + 1)
    if (value.charCodeAt(0) === 32) value = value.slice(1)
    if (field === 'data') data = data === null ? value : `${data}\n${value}`
    else if (field === 'event') event = value
  }

  return {
    /** Text of the stream, continuing from the previous piece. */
    push(text: string) {
      pending = pending === '' ? text : pending + text
      let start = 0
      for (;;) {
        const newline = pending.indexOf('\n', start)
        if (newline === -1) break
        // CRLF line endings: the CR belongs to the line break, not the value.
        const end = newline > start && pending.charCodeAt(newline - 1) === 13 ? newline - 1 : newline
        line(pending.slice(start, end))
        start = newline + 1
      }
      pending = start === 0 ? pending : pending.slice(start)
    },
    /**
     * The stream ended. An event cut before its blank line is still handed on (the format says to
     * drop it): some OpenAI-compatible servers end their last event with a single line break.
     */
    end() {
      if (pending !== '') line(pending.charCodeAt(pending.length - 1) === 13 ? pending.slice(0, -1) : pending)
      pending = ''
      line('')
    },
  }
}
