import t from 'tap'
import { CHUNK_OVERLAP_CHARS, CHUNK_TARGET_CHARS, chunkText } from '../../src/modules/chat/chunker.js'
import type { Test } from '../auth/support.js'

/**
 * The pure chunker behind documents: passages of about CHUNK_TARGET_CHARS along paragraph and
 * sentence boundaries, each starting with the last sentences (at most CHUNK_OVERLAP_CHARS) of the
 * one before, with no text lost.
 */

const WORDS = [
  'amber',
  'basalt',
  'cedar',
  'delta',
  'ember',
  'fjord',
  'granite',
  'harbor',
  'indigo',
  'juniper',
  'kelp',
  'lagoon',
  'meadow',
  'nectar',
  'orchid',
  'pebble',
  'quartz',
  'ridge',
  'saffron',
  'tundra',
]

/** A deterministic pseudo-random sequence, so a failure reproduces. */
function random(seed: number) {
  let state = seed
  return () => {
    state = (Math.imul(state, 1103515245) + 12345) >>> 0
    return state / 2 ** 32
  }
}

/**
 * A distinct sentence of about `length` characters: words, a number that makes it unique, and an
 * ending (`.`, `!` or `?`). No sentence ending inside it.
 */
function sentence(n: number, length: number, rnd: () => number): string {
  const ending = ['.', '!', '?'][n % 3] as string
  const words = [`Sentence${n}`]
  while (words.join(' ').length < length - 1) words.push(WORDS[Math.floor(rnd() * WORDS.length)] as string)
  return `${words.join(' ')}${ending}`
}

/** Paragraphs of sentences (lengths drawn from `sentenceLength`) until each reaches its target size. */
function corpus(paragraphSizes: number[], sentenceLength: [number, number], seed = 1) {
  const rnd = random(seed)
  let n = 0
  const paragraphs: string[][] = []
  for (const size of paragraphSizes) {
    const sentences: string[] = []
    while (sentences.join(' ').length < size) {
      const [min, max] = sentenceLength
      sentences.push(sentence(n++, min + Math.floor(rnd() * (max - min)), rnd))
    }
    paragraphs.push(sentences)
  }
  return { paragraphs, sentences: paragraphs.flat(), text: paragraphs.map((p) => p.join(' ')).join('\n\n') }
}

/**
 * Each chunk as the run of consecutive input sentences it is made of (joined by single spaces), or
 * a failure: a chunk that starts or ends inside a sentence is not such a run.
 */
function runsOf(t: Test, chunks: string[], sentences: string[]): { start: number; end: number }[] {
  const runs: { start: number; end: number }[] = []
  for (const [i, chunk] of chunks.entries()) {
    const start = sentences.findIndex((s) => chunk.startsWith(s))
    let end = start
    let joined = sentences[start] ?? ''
    while (start >= 0 && joined.length < chunk.length && end + 1 < sentences.length) {
      end++
      joined = `${joined} ${sentences[end]}`
    }
    if (start < 0 || joined !== chunk) {
      t.fail(`chunk ${i} is not a run of whole sentences: ${JSON.stringify(chunk.slice(0, 80))}…`)
      return runs
    }
    runs.push({ start, end })
  }
  return runs
}

/** Every sentence in some chunk, chunks in order, each overlapping the one before by whole sentences. */
function checkRuns(t: Test, chunks: string[], sentences: string[]) {
  const runs = runsOf(t, chunks, sentences)
  if (runs.length !== chunks.length) return runs
  t.equal(runs[0]?.start, 0, 'the first chunk starts with the first sentence')
  t.equal(runs.at(-1)?.end, sentences.length - 1, 'the last chunk ends with the last sentence')
  for (let i = 1; i < runs.length; i++) {
    const previous = runs[i - 1] as { start: number; end: number }
    const run = runs[i] as { start: number; end: number }
    t.ok(
      run.start > previous.start && run.start <= previous.end + 1,
      `chunk ${i} continues chunk ${i - 1} without skipping a sentence (${previous.start}-${previous.end}, then ${run.start}-${run.end})`,
    )
    t.ok(run.end > previous.end, `chunk ${i} adds sentences of its own`)
  }
  const covered = new Set(
    runs.flatMap((run) => Array.from({ length: run.end - run.start + 1 }, (_, k) => run.start + k)),
  )
  t.equal(covered.size, sentences.length, 'every sentence of the input is in some chunk')
  return runs
}

t.test('empty or whitespace-only text gives no chunk', async (t) => {
  t.same(chunkText(''), [])
  t.same(chunkText('   '), [])
  t.same(chunkText('\n\n\n'), [])
  t.same(chunkText(' \r\n\r\n \t \r\n '), [], 'CRLF and tabs only')
})

t.test('a short text is one chunk, trimmed', async (t) => {
  t.same(chunkText('Hello world.'), ['Hello world.'])
  t.same(chunkText('\n\n  Parrots talk. Crows count!  \n'), ['Parrots talk. Crows count!'])
  t.same(chunkText('# Birds\n\nParrots talk.'), ['# Birds Parrots talk.'], 'a heading and its paragraph together')
})

t.test('one long paragraph: chunks of about the target size, overlapping by whole sentences', async (t) => {
  const { sentences, text } = corpus([20_000], [40, 130], 7)
  const chunks = chunkText(text)
  const longest = Math.max(...sentences.map((s) => s.length))
  t.ok(chunks.length >= 20 && chunks.length <= 30, `about 20000 / (1000 - overlap) chunks (${chunks.length})`)
  for (const [i, chunk] of chunks.entries()) {
    t.ok(chunk.length <= CHUNK_TARGET_CHARS + longest, `chunk ${i} is not far above the target (${chunk.length})`)
    if (i < chunks.length - 1) t.ok(chunk.length >= 800, `chunk ${i} is not much below the target (${chunk.length})`)
    t.equal(chunk, chunk.trim(), `chunk ${i} is trimmed`)
  }
  const runs = checkRuns(t, chunks, sentences)
  for (let i = 1; i < runs.length; i++) {
    const previous = runs[i - 1] as { start: number; end: number }
    const run = runs[i] as { start: number; end: number }
    t.ok(run.start <= previous.end, `chunk ${i} starts with the last sentence(s) of chunk ${i - 1}`)
    const overlap = sentences.slice(run.start, previous.end + 1).join(' ')
    t.ok(
      overlap.length > 0 && overlap.length <= CHUNK_OVERLAP_CHARS,
      `the overlap is at most ${CHUNK_OVERLAP_CHARS} characters (${overlap.length})`,
    )
    t.ok((chunks[i - 1] as string).endsWith(overlap) && (chunks[i] as string).startsWith(overlap), 'shared text')
  }
})

t.test('paragraphs that fit are kept whole, each in one chunk', async (t) => {
  const sizes = [620, 540, 780, 700, 560, 650, 730, 600]
  const { paragraphs, sentences, text } = corpus(sizes, [50, 110], 11)
  const chunks = chunkText(text)
  t.equal(chunks.length, paragraphs.length, 'a chunk per paragraph of more than half the target')
  for (const [i, paragraph] of paragraphs.entries()) {
    const whole = paragraph.join(' ')
    t.ok(
      chunks.some((chunk) => chunk.includes(whole)),
      `paragraph ${i} (${whole.length} chars) is whole in one chunk`,
    )
    t.ok((chunks[i] as string).endsWith(whole), `chunk ${i} ends with paragraph ${i}`)
  }
  checkRuns(t, chunks, sentences)
})

t.test('small paragraphs are gathered, never split', async (t) => {
  const rnd = random(5)
  const sizes = Array.from({ length: 40 }, () => 120 + Math.floor(rnd() * 330))
  const { paragraphs, sentences, text } = corpus(sizes, [40, 100], 13)
  const chunks = chunkText(text)
  const longest = Math.max(...sentences.map((s) => s.length))
  t.ok(chunks.length < paragraphs.length, 'several paragraphs share a chunk')
  for (const [i, paragraph] of paragraphs.entries()) {
    t.ok(
      chunks.some((chunk) => chunk.includes(paragraph.join(' '))),
      `paragraph ${i} is whole in some chunk`,
    )
  }
  for (const [i, chunk] of chunks.entries()) {
    t.ok(chunk.length <= CHUNK_TARGET_CHARS + longest, `chunk ${i} within bounds (${chunk.length})`)
    if (i < chunks.length - 1) t.ok(chunk.length >= CHUNK_TARGET_CHARS / 2, `chunk ${i} not tiny (${chunk.length})`)
  }
  checkRuns(t, chunks, sentences)
})

t.test('a sentence longer than the target is split at spaces', async (t) => {
  const rnd = random(3)
  const words = Array.from({ length: 400 }, (_, i) => `${WORDS[Math.floor(rnd() * WORDS.length)]}${i}`)
  const long = `${words.join(' ')}.`
  t.ok(long.length > 2 * CHUNK_TARGET_CHARS, `the sentence is ${long.length} characters`)
  const chunks = chunkText(long)
  t.ok(chunks.length >= 3, `split into ${chunks.length} chunks`)
  for (const [i, chunk] of chunks.entries()) {
    t.ok(chunk.length <= CHUNK_TARGET_CHARS, `chunk ${i} is at most the target (${chunk.length})`)
  }
  t.same(chunks.join(' ').split(' '), long.split(' '), 'cut between words only, every word kept, in order')

  // Within other text: the short sentences around it are kept too.
  const text = `A short opening. ${long} A short closing!`
  const around = chunkText(text)
  for (const [i, chunk] of around.entries()) {
    t.ok(
      chunk.length <= CHUNK_TARGET_CHARS + CHUNK_OVERLAP_CHARS + 1,
      `chunk ${i} within target + overlap (${chunk.length})`,
    )
  }
  const tokens = new Set(around.flatMap((chunk) => chunk.split(' ')))
  t.ok(
    text.split(' ').every((word) => tokens.has(word)),
    'every word of the text is in some chunk, none cut',
  )
})

t.test('a run of characters without spaces is split anyway, nothing lost', async (t) => {
  const run = 'x'.repeat(2500)
  const chunks = chunkText(run)
  t.ok(chunks.length >= 3)
  t.ok(
    chunks.every((chunk) => chunk.length <= CHUNK_TARGET_CHARS),
    'each at most the target',
  )
  t.equal(chunks.join(''), run, 'all characters kept')
})

t.test('CRLF and CR line endings chunk like LF', async (t) => {
  const { text, sentences } = corpus([620, 540, 780, 300, 200, 700], [50, 110], 17)
  const lf = chunkText(text)
  const crlf = chunkText(text.replaceAll('\n', '\r\n'))
  const cr = chunkText(text.replaceAll('\n', '\r'))
  t.same(crlf, lf, 'CRLF paragraphs are paragraphs')
  t.same(cr, lf, 'CR paragraphs are paragraphs')
  t.notOk(
    crlf.some((chunk) => chunk.includes('\r')),
    'no carriage return is left in a chunk',
  )
  checkRuns(t, crlf, sentences)
  t.same(chunkText('First paragraph.\r\n\r\nSecond paragraph.'), ['First paragraph. Second paragraph.'])
})

t.test('sentence endings other than the period', async (t) => {
  const parts = Array.from({ length: 60 }, (_, i) => `Item ${i} has some words in it${['!', '?', '…', '.'][i % 4]}`)
  const text = parts.join(' ')
  const chunks = chunkText(text)
  t.ok(chunks.length >= 2)
  checkRuns(t, chunks, parts)
})

t.test('markdown: no word lost', async (t) => {
  const text = [
    '# Title',
    '',
    'Intro line one.\nIntro line two continues here.',
    '',
    '- first item',
    '- second item',
    '',
    '```',
    'code block line',
    '```',
    '',
    ...Array.from({ length: 30 }, (_, i) => `Paragraph ${i} says something about topic ${i}. It has two sentences.\n`),
  ].join('\n')
  const chunks = chunkText(text)
  const words = (s: string) => s.split(/\s+/).filter(Boolean)
  const present = new Set(chunks.flatMap(words))
  const missing = words(text).filter((word) => !present.has(word))
  t.same(missing, [], 'every word of the input is in some chunk')
  t.ok(chunks.length >= 2, `${chunks.length} chunks`)
})
