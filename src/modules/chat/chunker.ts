/** About 250 tokens a passage: enough context to answer from, small enough to rank precisely. */
export const CHUNK_TARGET_CHARS = 1000
/** Each passage repeats the end of the previous one, so an answer spanning a boundary is found whole. */
export const CHUNK_OVERLAP_CHARS = 150

const SENTENCE_END = /(?<=[.!?…。])\s+(?=\S)/u

/** Splits text longer than `max` at spaces (or anywhere, for a run without spaces). */
function hardSplit(text: string, max: number): string[] {
  const pieces: string[] = []
  let rest = text
  while (rest.length > max) {
    const space = rest.lastIndexOf(' ', max)
    const cut = space > max / 2 ? space : max
    pieces.push(rest.slice(0, cut).trim())
    rest = rest.slice(cut).trim()
  }
  if (rest) pieces.push(rest)
  return pieces
}

/** Sentences, and paragraph ends kept as boundaries of their own. */
function units(text: string): string[] {
  const result: string[] = []
  for (const paragraph of text.replace(/\r\n?/g, '\n').split(/\n\s*\n/)) {
    const trimmed = paragraph.trim()
    if (!trimmed) continue
    for (const sentence of trimmed.split(SENTENCE_END)) {
      result.push(...hardSplit(sentence.trim(), CHUNK_TARGET_CHARS))
    }
    // An empty unit marks the paragraph end: a chunk prefers to end there.
    result.push('')
  }
  return result
}

/**
 * Overlapping chunks along paragraph and sentence boundaries: sentences are gathered up to about
 * CHUNK_TARGET_CHARS (a paragraph end past half of it closes the chunk early), and the next chunk
 * starts with the last sentences of this one, up to CHUNK_OVERLAP_CHARS.
 */
export function chunkText(text: string): string[] {
  const chunks: string[] = []
  let current: string[] = []
  let length = 0
  const close = () => {
    const body = current.join(' ').trim()
    if (!body) return
    chunks.push(body)
    const overlap: string[] = []
    let kept = 0
    for (let i = current.length - 1; i >= 0; i--) {
      const sentence = current[i] as string
      if (kept + sentence.length > CHUNK_OVERLAP_CHARS) break
      overlap.unshift(sentence)
      kept += sentence.length + 1
    }
    // Overlap only when there is more to come; it never makes a chunk of its own.
    current = overlap
    length = kept
  }
  let fresh = 0
  for (const unit of units(text)) {
    if (unit === '') {
      if (length >= CHUNK_TARGET_CHARS / 2 && fresh > 0) {
        close()
        fresh = 0
      }
      continue
    }
    if (length + unit.length > CHUNK_TARGET_CHARS && fresh > 0) {
      close()
      fresh = 0
    }
    current.push(unit)
    length += unit.length + 1
    fresh++
  }
  if (fresh > 0) {
    const body = current.join(' ').trim()
    if (body) chunks.push(body)
  }
  return chunks
}
