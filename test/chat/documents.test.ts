import { and, count, eq, isNull } from 'drizzle-orm'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import t from 'tap'
import { documentChunks } from '../../src/db/schema/index.js'
import { chunkText } from '../../src/modules/chat/chunker.js'
import { buildTestApp, eventually } from '../helper.js'
import {
  type Account,
  account,
  addMember,
  assertProblem,
  bearer,
  callAs,
  createApiKey,
  createOrg,
  type Method,
  type Test,
  uniqueAddress,
  walkPages,
} from '../auth/support.js'
import { startFakeAnthropic } from '../fakes/anthropic.js'
import type { RecordedRequest } from '../fakes/control.js'
import { cosineSimilarity, fakeEmbedding, startFakeOpenAI } from '../fakes/openai.js'
import { checkConversationStream, parseSse, readChat } from './support.js'

/**
 * Project documents and retrieval: /api/v1/projects/{id}/documents (JSON and multipart uploads,
 * listing, deletion), /api/v1/projects/{id}/search (hybrid with embeddings, keyword without),
 * embeddings (inline for small documents, a job for large ones, batches of at most 100, a cache,
 * Retry-After), chats grounded in a project's passages, and who may do what.
 *
 * Two apps: `app` has embeddings (the fake OpenAI), `keywordApp` has none (full text only) and
 * answers chats through the fake Anthropic.
 */

const OPENAI_KEY = 'sk-openai-documents-test-9c2b'
const ANTHROPIC_KEY = 'sk-ant-documents-test-41fe'

const openai = await startFakeOpenAI(t)
const anthropic = await startFakeAnthropic(t)

const common = {
  CHAT_FALLBACK_MODELS: '',
  CHAT_PROVIDER_MAX_RETRIES: '0',
  CHAT_RATE_LIMIT_PER_MINUTE: '1000',
  CHAT_MAX_CONCURRENT_STREAMS: '10',
  JOBS_POLL_INTERVAL_MS: '500',
}
const app = await buildTestApp(t, {
  env: { ...common, OPENAI_API_KEY: OPENAI_KEY, OPENAI_BASE_URL: openai.baseURL, CHAT_DEFAULT_MODEL: 'gpt-4o-mini' },
})
const keywordApp = await buildTestApp(t, {
  env: {
    ...common,
    ANTHROPIC_API_KEY: ANTHROPIC_KEY,
    ANTHROPIC_BASE_URL: anthropic.baseURL,
    CHAT_DEFAULT_MODEL: 'claude-haiku-4-5',
  },
})

t.afterEach(() => {
  // A behaviour left queued by a failing test must not leak into the next one.
  openai.control.clear()
  openai.embeddingsControl.clear()
  openai.embeddingsControl.default = {}
  anthropic.control.clear()
})

interface DocumentBody {
  id: string
  projectId: string
  title: string
  contentType: string
  chars: number
  chunkCount: number
  status: 'processing' | 'ready' | 'failed'
  error: string | null
  createdAt: string
  updatedAt: string
}

interface SearchHit {
  documentId: string
  title: string
  chunk: number
  text: string
  score: number
}

interface SearchBody {
  mode: 'hybrid' | 'keyword'
  results: SearchHit[]
}

interface GroundedSource {
  index: number
  text: string
  title: string | null
  source: string | null
  documentId: string | null
  score: number | null
}

type Who = Pick<Account, 'headers'>

const call = (on: FastifyInstance, who: Who, method: Method, url: string, payload?: Record<string, unknown>) =>
  callAs(on, who, method, url, payload)

async function createProject(on: FastifyInstance, who: Who, orgId?: string): Promise<string> {
  const response = await call(on, who, 'POST', '/projects', { name: 'Docs', ...(orgId ? { orgId } : {}) })
  if (response.statusCode !== 201) throw new Error(`create project answered ${response.statusCode}: ${response.body}`)
  return response.json().id
}

const postDocument = (on: FastifyInstance, who: Who, projectId: string, payload: Record<string, unknown>) =>
  call(on, who, 'POST', `/projects/${projectId}/documents`, payload)

async function addDocument(
  on: FastifyInstance,
  who: Who,
  projectId: string,
  title: string,
  text: string,
  extra: Record<string, unknown> = {},
): Promise<DocumentBody> {
  const response = await postDocument(on, who, projectId, { title, text, ...extra })
  if (response.statusCode !== 201) throw new Error(`add document answered ${response.statusCode}: ${response.body}`)
  return response.json()
}

const search = (on: FastifyInstance, who: Who, projectId: string, payload: Record<string, unknown>) =>
  call(on, who, 'POST', `/projects/${projectId}/search`, payload)

async function searchOk(
  t: Test,
  on: FastifyInstance,
  who: Who,
  projectId: string,
  query: string,
  topK?: number,
): Promise<SearchBody> {
  const response = await search(on, who, projectId, { query, ...(topK === undefined ? {} : { topK }) })
  t.equal(response.statusCode, 200, `search "${query}": 200 (${response.body.slice(0, 200)})`)
  return response.json()
}

async function listDocuments(on: FastifyInstance, who: Who, projectId: string): Promise<DocumentBody[]> {
  const response = await call(on, who, 'GET', `/projects/${projectId}/documents?limit=100`)
  if (response.statusCode !== 200) throw new Error(`list answered ${response.statusCode}: ${response.body}`)
  return response.json().data
}

interface UploadFile {
  content: string | Uint8Array<ArrayBuffer>
  type: string
  name: string
}

/** A multipart upload built the way a browser would (FormData), sent through inject. */
async function upload(
  on: FastifyInstance,
  who: Who,
  projectId: string,
  parts: { title?: string; file?: UploadFile },
): Promise<LightMyRequestResponse> {
  const form = new FormData()
  if (parts.title !== undefined) form.append('title', parts.title)
  if (parts.file) form.append('file', new Blob([parts.file.content], { type: parts.file.type }), parts.file.name)
  const request = new Request('http://x', { method: 'POST', body: form })
  return on.inject({
    method: 'POST',
    url: `/api/v1/projects/${projectId}/documents`,
    headers: { ...who.headers, 'content-type': request.headers.get('content-type') ?? '' },
    payload: Buffer.from(await request.arrayBuffer()),
    remoteAddress: uniqueAddress(),
  })
}

/** The embeddings requests the fake received from index `from` on. */
const embeddingRequests = (from: number): RecordedRequest[] =>
  openai.requests.slice(from).filter((request) => request.kind === 'embeddings')

const inputsOf = (request: RecordedRequest): string[] => {
  const input = request.body.input
  return Array.isArray(input) ? (input as string[]) : [input as string]
}

const chatRequests = (fake: { requests: RecordedRequest[] }, from: number) =>
  fake.requests.slice(from).filter((request) => request.kind === 'chat')

/** Chunks of a document still without an embedding. */
async function unembedded(on: FastifyInstance, documentId: string): Promise<number> {
  const [row] = await on.db
    .select({ n: count() })
    .from(documentChunks)
    .where(and(eq(documentChunks.documentId, documentId), isNull(documentChunks.embedding)))
  return Number(row?.n ?? -1)
}

async function chunksOf(on: FastifyInstance, documentId: string): Promise<number> {
  const [row] = await on.db.select({ n: count() }).from(documentChunks).where(eq(documentChunks.documentId, documentId))
  return Number(row?.n ?? -1)
}

/**
 * A text of `sentences` distinct sentences in paragraphs of six, about 90 characters each, marked
 * with `tag` so no other test's passages (or cached embeddings) are the same.
 */
function longText(tag: string, sentences: number): string {
  const paragraphs: string[] = []
  for (let p = 0; p * 6 < sentences; p++) {
    const lines: string[] = []
    for (let i = p * 6; i < Math.min(sentences, p * 6 + 6); i++) {
      lines.push(`Record ${tag} number ${i} notes that the ledger entry ${i * 7} was reviewed by clerk ${i % 13}.`)
    }
    paragraphs.push(lines.join(' '))
  }
  return paragraphs.join('\n\n')
}

/** Six short documents on distinct topics, and a query for each that only its document answers. */
const CORPUS = [
  {
    key: 'cats',
    title: 'Cats',
    text:
      'Cats are small domestic felines. A cat will purr when content, and its whiskers sense the width of gaps. ' +
      'Cats sleep for most of the day and hunt mice at night.',
    query: 'cats purr whiskers',
  },
  {
    key: 'rockets',
    title: 'Rockets',
    text:
      'A rocket carries its own propellant. At launch the engines burn liquid oxygen, and the rocket climbs to orbit ' +
      'in about nine minutes. Stages fall away as their tanks empty.',
    query: 'rocket launch orbit',
  },
  {
    key: 'bread',
    title: 'Bread baking',
    text:
      'Bread starts as dough of flour, water, salt and yeast. The yeast ferments the dough, which rises for hours ' +
      'before it is baked in a hot oven until the crust is brown.',
    query: 'yeast dough oven',
  },
  {
    key: 'volcanoes',
    title: 'Volcanoes',
    text:
      'A volcano is an opening in the crust where magma reaches the surface. During an eruption the volcano ' +
      'releases lava, ash and gas; lava flows can bury whole valleys.',
    query: 'volcano eruption lava',
  },
  {
    key: 'chess',
    title: 'Chess',
    text:
      'Chess is played on a board of sixty-four squares. Each player starts with sixteen pieces; a good opening ' +
      'controls the centre, and the game ends in checkmate when the king cannot escape.',
    query: 'chess opening checkmate',
  },
  {
    key: 'coffee',
    title: 'Coffee',
    text:
      'Coffee beans are the roasted seeds of the coffee plant. A dark roast tastes bitter; espresso forces hot ' +
      'water through finely ground beans under pressure.',
    query: 'coffee espresso roast',
  },
] as const

type CorpusKey = (typeof CORPUS)[number]['key']

async function seedCorpus(on: FastifyInstance, who: Who, projectId: string): Promise<Record<CorpusKey, string>> {
  const ids = {} as Record<CorpusKey, string>
  for (const entry of CORPUS) ids[entry.key] = (await addDocument(on, who, projectId, entry.title, entry.text)).id
  return ids
}

/** The shape and order every search answer must have. */
function checkResults(t: Test, body: SearchBody, topK: number, label: string) {
  t.ok(body.results.length <= topK, `${label}: at most topK (${topK}) results (${body.results.length})`)
  for (const [i, hit] of body.results.entries()) {
    t.match(
      hit,
      { documentId: /^doc_/, title: String, chunk: Number, text: String, score: Number },
      `${label}: result ${i} has documentId, title, chunk, text, score`,
    )
    t.ok(Number.isInteger(hit.chunk) && hit.chunk >= 0, `${label}: chunk is a position`)
    t.ok(hit.score > 0, `${label}: positive score`)
    if (i > 0) t.ok((body.results[i - 1] as SearchHit).score >= hit.score, `${label}: sorted by score descending`)
  }
}

// ---------------------------------------------------------------------------------------------------

t.test('a small document: 201 with Location, embedded before the answer', async (t) => {
  const user = await account(app)
  const projectId = await createProject(app, user)
  const text =
    'Parrots are clever birds that can imitate speech.\n\nMany parrots live for decades. Some learn hundreds of words.'
  const before = openai.requests.length
  const response = await postDocument(app, user, projectId, { title: 'Parrots', text })
  t.equal(response.statusCode, 201, response.body)
  const doc: DocumentBody = response.json()
  t.equal(response.headers.location, `/api/v1/projects/${projectId}/documents/${doc.id}`, 'Location of the document')
  t.match(doc, {
    id: /^doc_/,
    projectId,
    title: 'Parrots',
    contentType: 'text/plain',
    chars: text.length,
    chunkCount: chunkText(text).length,
    status: 'ready',
    error: null,
  })
  t.ok(!Number.isNaN(Date.parse(doc.createdAt)) && !Number.isNaN(Date.parse(doc.updatedAt)), 'timestamps')

  const requests = embeddingRequests(before)
  t.ok(requests.length >= 1, 'the fake saw an embeddings request before the answer')
  for (const request of requests) {
    t.ok(inputsOf(request).length <= 100, 'at most 100 inputs')
    t.equal(request.apiKey, OPENAI_KEY, 'with the configured key')
    t.equal(request.body.model, 'text-embedding-3-small', 'the default embeddings model')
    t.equal(request.body.dimensions, 1536, 'asked for the stored dimensions')
  }
  t.same(new Set(requests.flatMap(inputsOf)), new Set(chunkText(text)), 'the passages of the document were embedded')
  t.equal(await unembedded(app, doc.id), 0, 'every passage has its embedding when the answer arrives')

  const markdown = await addDocument(app, user, projectId, 'Notes', '# Notes\n\nParrots nest in tree holes.', {
    contentType: 'text/markdown',
  })
  t.equal(markdown.contentType, 'text/markdown', 'contentType is kept')
  const listed = await listDocuments(app, user, projectId)
  t.same(
    listed.map((d) => [d.id, d.status]),
    [
      [markdown.id, 'ready'],
      [doc.id, 'ready'],
    ],
    'both listed, newest first, ready',
  )
  t.same(listed[1], doc, 'listed as created')
})

t.test('invalid documents are refused before anything is stored or embedded', async (t) => {
  const user = await account(app)
  const projectId = await createProject(app, user)
  const before = openai.requests.length
  const invalid: [string, Record<string, unknown>][] = [
    ['no text', { title: 'A' }],
    ['no title', { text: 'Some text.' }],
    ['an empty title', { title: '', text: 'Some text.' }],
    ['a title over 500 characters', { title: 'x'.repeat(501), text: 'Some text.' }],
    ['empty text', { title: 'A', text: '' }],
    ['text that is not a string', { title: 'A', text: 42 }],
    ['an unsupported contentType', { title: 'A', text: 'Some text.', contentType: 'application/pdf' }],
    ['an unknown property', { title: 'A', text: 'Some text.', tags: ['x'] }],
  ]
  for (const [label, payload] of invalid) {
    assertProblem(t, await postDocument(app, user, projectId, payload), 400, 'VALIDATION_FAILED', label)
  }
  const blank = await postDocument(app, user, projectId, { title: 'Blank', text: '  \n\n \r\n\t ' })
  assertProblem(t, blank, 400, 'EMPTY_DOCUMENT', 'whitespace-only text')

  const tooLarge = await postDocument(app, user, projectId, { title: 'Huge', text: 'a'.repeat(2 * 1024 * 1024 + 1) })
  t.ok([400, 413].includes(tooLarge.statusCode), `text over 2 MB: 400 or 413 (${tooLarge.statusCode})`)
  t.match(tooLarge.headers['content-type'], /^application\/problem\+json/, 'a problem')
  t.ok(['VALIDATION_FAILED', 'DOCUMENT_TOO_LARGE', 'PAYLOAD_TOO_LARGE'].includes(tooLarge.json().code))

  t.same(await listDocuments(app, user, projectId), [], 'nothing was stored')
  t.equal(embeddingRequests(before).length, 0, 'nothing was embedded')
  assertProblem(
    t,
    await call(app, user, 'DELETE', `/projects/${projectId}/documents/doc_doesnotexist`),
    404,
    'DOCUMENT_NOT_FOUND',
    'deleting a document that does not exist',
  )
  const unauthenticated = await app.inject({
    method: 'POST',
    url: `/api/v1/projects/${projectId}/documents`,
    payload: { title: 'A', text: 'B.' },
  })
  assertProblem(t, unauthenticated, 401, 'UNAUTHORIZED', 'without a credential')
})

t.test('a document of exactly 2 MB is accepted (keyword app: no embeddings)', async (t) => {
  const user = await account(keywordApp)
  const projectId = await createProject(keywordApp, user)
  const sentence = 'Lighthouses guide ships along the rocky coast at night. '
  let text = sentence.repeat(Math.ceil((2 * 1024 * 1024) / sentence.length)).slice(0, 2 * 1024 * 1024 - 1)
  text = `${text}.`
  t.equal(text.length, 2 * 1024 * 1024)
  const started = Date.now()
  const response = await postDocument(keywordApp, user, projectId, { title: 'Lighthouses', text })
  t.equal(response.statusCode, 201, response.body.slice(0, 300))
  t.match(response.json(), { chars: text.length, status: 'ready' }, 'ready at once without embeddings')
  t.comment(`2 MB document stored in ${Date.now() - started} ms (${response.json().chunkCount} chunks)`)
})

t.test('listing: newest first, cursor-paginated', async (t) => {
  const user = await account(app)
  const projectId = await createProject(app, user)
  const other = await createProject(app, user)
  const created: string[] = []
  for (let i = 0; i < 5; i++) {
    created.push((await addDocument(app, user, projectId, `Doc ${i}`, `Listing document number ${i} of five.`)).id)
  }
  const { items, pages } = await walkPages<DocumentBody>(t, (cursor) =>
    call(
      app,
      user,
      'GET',
      `/projects/${projectId}/documents?limit=2${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`,
    ),
  )
  t.same(
    pages.map((page) => page.length),
    [2, 2, 1],
    'pages of two',
  )
  t.same(
    items.map((d) => d.id),
    [...created].reverse(),
    'every document once, newest first',
  )
  t.same(
    items.map((d) => d.title),
    ['Doc 4', 'Doc 3', 'Doc 2', 'Doc 1', 'Doc 0'],
  )
  const first = await call(app, user, 'GET', `/projects/${projectId}/documents?limit=2`)
  const cursor = first.json().nextCursor as string
  assertProblem(
    t,
    await call(app, user, 'GET', `/projects/${other}/documents?limit=2&cursor=${encodeURIComponent(cursor)}`),
    400,
    'INVALID_CURSOR',
    "another project's cursor",
  )
  assertProblem(
    t,
    await call(app, user, 'GET', `/projects/${projectId}/documents?cursor=bm9wZQ`),
    400,
    'INVALID_CURSOR',
    'a cursor this server did not issue',
  )
  assertProblem(
    t,
    await call(app, user, 'GET', `/projects/${projectId}/documents?limit=0`),
    400,
    'VALIDATION_FAILED',
    'limit 0',
  )
  t.same(await listDocuments(app, user, other), [], 'the other project has none')
})

t.test('deleting a document removes its passages from search', async (t) => {
  for (const [label, on] of [
    ['hybrid', app],
    ['keyword', keywordApp],
  ] as const) {
    await t.test(label, async (t) => {
      const user = await account(on)
      const projectId = await createProject(on, user)
      const gone = await addDocument(on, user, projectId, 'Zanzibar', 'Zanzibar exports cloves and nutmeg spices.')
      const kept = await addDocument(on, user, projectId, 'Harbours', 'Harbours shelter fishing boats from storms.')
      const found = await searchOk(t, on, user, projectId, 'zanzibar cloves')
      t.equal(found.results[0]?.documentId, gone.id, 'found before deletion')
      t.equal(found.mode, label)

      const deleted = await call(on, user, 'DELETE', `/projects/${projectId}/documents/${gone.id}`)
      t.equal(deleted.statusCode, 204, deleted.body)
      t.equal(deleted.body, '', 'no body')
      t.equal(await chunksOf(on, gone.id), 0, 'its passages are deleted')
      const after = await searchOk(t, on, user, projectId, 'zanzibar cloves')
      t.notOk(
        after.results.some((hit) => hit.documentId === gone.id),
        'no passage of the deleted document is found',
      )
      const harbours = await searchOk(t, on, user, projectId, 'harbours fishing boats')
      t.equal(harbours.results[0]?.documentId, kept.id, 'the other document is still found')
      t.same(
        (await listDocuments(on, user, projectId)).map((d) => d.id),
        [kept.id],
        'no longer listed',
      )
      assertProblem(
        t,
        await call(on, user, 'DELETE', `/projects/${projectId}/documents/${gone.id}`),
        404,
        'DOCUMENT_NOT_FOUND',
        'deleting it again',
      )
      const otherProject = await createProject(on, user)
      assertProblem(
        t,
        await call(on, user, 'DELETE', `/projects/${otherProject}/documents/${kept.id}`),
        404,
        'DOCUMENT_NOT_FOUND',
        'through another project of the same user',
      )
      t.equal(await chunksOf(on, kept.id), 1, 'which left it alone')
    })
  }
})

t.test('multipart uploads of .md and .txt files', async (t) => {
  const user = await account(app)
  const projectId = await createProject(app, user)
  const md = await upload(app, user, projectId, {
    title: 'Birds',
    file: { content: '# Birds\n\nParrots talk.', type: 'text/markdown', name: 'birds.md' },
  })
  t.equal(md.statusCode, 201, md.body)
  t.match(md.json(), { title: 'Birds', contentType: 'text/markdown', chars: 22, status: 'ready', chunkCount: 1 })
  t.equal(md.headers.location, `/api/v1/projects/${projectId}/documents/${md.json().id}`, 'Location')

  const txt = await upload(app, user, projectId, {
    title: 'Fish',
    file: { content: 'Salmon swim upstream to spawn.\n', type: 'text/plain', name: 'fish.txt' },
  })
  t.equal(txt.statusCode, 201, txt.body)
  t.match(txt.json(), { title: 'Fish', contentType: 'text/plain', status: 'ready' })

  const untitled = await upload(app, user, projectId, {
    file: { content: 'Owls hunt at night.', type: 'text/plain', name: 'owls.txt' },
  })
  t.equal(untitled.statusCode, 201, untitled.body)
  t.equal(untitled.json().title, 'owls.txt', 'without a title field, the file name')

  const byName = await upload(app, user, projectId, {
    title: 'Bees',
    file: { content: 'Bees dance to share where flowers are.', type: 'application/octet-stream', name: 'bees.md' },
  })
  t.equal(byName.statusCode, 201, byName.body)
  t.equal(byName.json().contentType, 'text/markdown', 'a .md name is Markdown whatever the part type says')

  const hits = await searchOk(t, app, user, projectId, 'parrots talk')
  t.equal(hits.results[0]?.documentId, md.json().id, 'the uploaded text is searchable')
  t.equal(hits.results[0]?.text, '# Birds Parrots talk.')
})

t.test('uploads that are not text are refused', async (t) => {
  const user = await account(app)
  const projectId = await createProject(app, user)
  const before = openai.requests.length
  const pdf = await upload(app, user, projectId, {
    title: 'Paper',
    file: { content: '%PDF-1.7\n%âãÏÓ\n1 0 obj', type: 'application/pdf', name: 'paper.pdf' },
  })
  assertProblem(t, pdf, 415, 'UNSUPPORTED_DOCUMENT_TYPE', 'a PDF')
  const png = await upload(app, user, projectId, {
    title: 'Picture',
    file: {
      content: new Uint8Array([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 13]),
      type: 'image/png',
      name: 'picture.png',
    },
  })
  assertProblem(t, png, 415, 'UNSUPPORTED_DOCUMENT_TYPE', 'an image')
  assertProblem(t, await upload(app, user, projectId, { title: 'Nothing' }), 400, 'FILE_REQUIRED', 'no file field')

  const tooLarge = await upload(app, user, projectId, {
    title: 'Huge',
    file: { content: 'b'.repeat(2 * 1024 * 1024 + 1), type: 'text/plain', name: 'huge.txt' },
  })
  assertProblem(t, tooLarge, 413, 'PAYLOAD_TOO_LARGE', 'a file over 2 MB')

  const nul = await upload(app, user, projectId, {
    title: 'Nul',
    file: { content: 'before\u0000after', type: 'text/plain', name: 'nul.txt' },
  })
  assertProblem(t, nul, 400, 'INVALID_CHARACTER', 'a NUL character')

  // 0xFF never occurs in UTF-8: the file is not UTF-8 text (a client error, not a server failure).
  const latin1 = await upload(app, user, projectId, {
    title: 'Latin-1',
    file: { content: new Uint8Array([0x63, 0x61, 0x66, 0xe9, 0x20, 0xff, 0x2e]), type: 'text/plain', name: 'l1.txt' },
  })
  t.ok(
    latin1.statusCode >= 400 && latin1.statusCode < 500,
    `a file that is not UTF-8 is a 4xx, not a server error (got ${latin1.statusCode}: ${latin1.body.slice(0, 200)})`,
  )

  t.same(await listDocuments(app, user, projectId), [], 'nothing was stored')
  t.equal(embeddingRequests(before).length, 0, 'nothing was embedded')
})

t.test('a large document is embedded by the background job, in batches of at most 100', async (t) => {
  const user = await account(app)
  const projectId = await createProject(app, user)
  const text = longText('alpha', 1300)
  const chunks = chunkText(text)
  t.ok(chunks.length > 100, `more than 100 passages (${chunks.length})`)
  t.equal(new Set(chunks).size, chunks.length, 'all distinct')

  let before = openai.requests.length
  const response = await postDocument(app, user, projectId, { title: 'Ledger', text })
  t.equal(response.statusCode, 201, response.body.slice(0, 300))
  const doc: DocumentBody = response.json()
  t.match(doc, { status: 'processing', chunkCount: chunks.length }, 'answered processing')

  const ready = await eventually(
    async () => (await listDocuments(app, user, projectId)).find((d) => d.id === doc.id)?.status === 'ready',
    20_000,
  )
  t.ok(ready, 'eventually ready when listed')
  t.equal(await unembedded(app, doc.id), 0, 'every passage has an embedding')
  const requests = embeddingRequests(before)
  t.ok(requests.length >= 2, `several embeddings requests (${requests.length})`)
  t.ok(
    requests.every((request) => inputsOf(request).length <= 100),
    `each with at most 100 inputs (${requests.map((r) => inputsOf(r).length).join(', ')})`,
  )
  const inputs = requests.flatMap(inputsOf)
  t.equal(inputs.length, chunks.length, 'each passage embedded once')
  t.same(new Set(inputs), new Set(chunks), 'exactly the passages')

  // Found by its passages: the chunk number is the passage's position in the document.
  const hits = await searchOk(t, app, user, projectId, 'alpha number 777 ledger entry 5439', 3)
  const hit = hits.results[0]
  t.equal(hit?.documentId, doc.id)
  t.equal(hit?.text, chunks[hit?.chunk ?? -1], "the hit's text is passage `chunk` of the document")
  t.ok(hit?.text.includes('number 777 notes'), 'the passage holding the sentence')

  // The same text again: every passage is in the embedding cache, so no embeddings request at all.
  before = openai.requests.length
  const again = await addDocument(app, user, projectId, 'Ledger copy', text)
  t.equal(again.status, 'processing', 'still large: processing')
  t.ok(
    await eventually(
      async () => (await listDocuments(app, user, projectId)).find((d) => d.id === again.id)?.status === 'ready',
      20_000,
    ),
    'the copy becomes ready',
  )
  t.equal(await unembedded(app, again.id), 0, 'with every embedding')
  t.equal(embeddingRequests(before).length, 0, 'from the cache: no embeddings request')
})

t.test('the embedding cache: known passages are never embedded again', async (t) => {
  const user = await account(app)
  const projectId = await createProject(app, user)
  const text = longText('beta', 60)
  const extended = `${text}\n\n${longText('gamma', 12)}`
  const known = new Set(chunkText(text))
  const fresh = chunkText(extended).filter((chunk) => !known.has(chunk))
  t.ok(known.size >= 3 && known.size <= 20 && fresh.length > 0, 'small documents, partly new')

  let before = openai.requests.length
  const first = await addDocument(app, user, projectId, 'Beta', text)
  t.equal(first.status, 'ready')
  t.equal(embeddingRequests(before).flatMap(inputsOf).length, known.size, 'the first upload embeds every passage')

  before = openai.requests.length
  const copy = await addDocument(app, user, projectId, 'Beta again', text)
  t.equal(copy.status, 'ready', 'ready')
  t.equal(await unembedded(app, copy.id), 0, 'with every embedding')
  t.equal(embeddingRequests(before).length, 0, 'the same text again: no embeddings request')

  before = openai.requests.length
  const grown = await addDocument(app, user, projectId, 'Beta grown', extended)
  t.equal(grown.status, 'ready')
  t.same(
    embeddingRequests(before).flatMap(inputsOf).sort(),
    [...new Set(fresh)].sort(),
    'only the passages not seen before are embedded',
  )
})

t.test('an embeddings 429 with Retry-After is waited out and retried (inline path)', async (t) => {
  const user = await account(app)
  const projectId = await createProject(app, user)
  openai.embeddingsControl.next({ failBeforeFirstToken: { status: 429, retryAfterSeconds: 1 } })
  const before = openai.requests.length
  const started = Date.now()
  const doc = await addDocument(app, user, projectId, 'Tides', 'Tides rise and fall twice a day with the moon.')
  const elapsed = Date.now() - started
  t.equal(doc.status, 'ready', 'ready after the retry')
  const requests = embeddingRequests(before)
  t.equal(requests.length, 2, 'the rate-limited request and its retry')
  const [first, second] = requests as [RecordedRequest, RecordedRequest]
  t.equal(first.status, 429, 'the first was refused')
  t.ok(second.receivedAt - first.receivedAt >= 900, `retried after ~1 s (${second.receivedAt - first.receivedAt} ms)`)
  t.ok(second.receivedAt - first.receivedAt < 5000, 'not much later')
  t.same(inputsOf(second), inputsOf(first), 'the same inputs')
  t.ok(elapsed >= 900, `the answer waited for it (${elapsed} ms)`)
  t.equal(await unembedded(app, doc.id), 0, 'embedded')
})

t.test('inline embedding failing: answered processing, the job finishes it', async (t) => {
  const user = await account(app)
  const projectId = await createProject(app, user)
  openai.embeddingsControl.next({ failBeforeFirstToken: { status: 500, shouldRetry: false } })
  const doc = await addDocument(app, user, projectId, 'Glaciers', 'Glaciers carve valleys as they creep downhill.')
  t.equal(doc.status, 'processing', 'not ready yet')
  const keyword = await searchOk(t, app, user, projectId, 'glaciers carve valleys')
  t.equal(keyword.results[0]?.documentId, doc.id, 'searchable by full text meanwhile')
  t.ok(
    await eventually(
      async () => (await listDocuments(app, user, projectId)).find((d) => d.id === doc.id)?.status === 'ready',
      20_000,
    ),
    'ready once the job embedded it',
  )
  t.equal(await unembedded(app, doc.id), 0)
})

t.test('search: the right document first in keyword and hybrid mode', async (t) => {
  for (const [mode, on] of [
    ['keyword', keywordApp],
    ['hybrid', app],
  ] as const) {
    await t.test(mode, async (t) => {
      const user = await account(on)
      const projectId = await createProject(on, user)
      const ids = await seedCorpus(on, user, projectId)
      for (const entry of CORPUS) {
        const body = await searchOk(t, on, user, projectId, entry.query, 3)
        t.equal(body.mode, mode, `mode ${mode}`)
        checkResults(t, body, 3, entry.query)
        t.equal(body.results[0]?.documentId, ids[entry.key], `"${entry.query}" finds ${entry.title} first`)
        t.equal(body.results[0]?.title, entry.title)
        t.equal(body.results[0]?.text, entry.text, 'the passage (the whole short document)')
        t.equal(body.results[0]?.chunk, 0)
        if (mode === 'keyword') t.equal(body.results.length, 1, 'full text: only the document with every word')
        else t.equal(body.results.length, 3, 'hybrid: topK passages, ranked by both signals')
      }
      const defaults = await searchOk(t, on, user, projectId, 'cats')
      checkResults(t, defaults, 5, 'default topK')
      if (mode === 'hybrid') t.equal(defaults.results.length, 5, 'topK defaults to 5')
      const one = await searchOk(t, on, user, projectId, 'rocket', 1)
      t.equal(one.results.length, 1, 'topK 1')
      t.equal(one.results[0]?.documentId, ids.rockets)

      const nothing = await searchOk(t, on, user, projectId, 'submarine periscope')
      if (mode === 'keyword') t.same(nothing, { mode: 'keyword', results: [] }, 'no word in any document: no result')
      const stopWords = await searchOk(t, on, user, projectId, 'the of and')
      if (mode === 'keyword') t.same(stopWords.results, [], 'only stop words: no result, no error')
      const either = await searchOk(t, on, user, projectId, 'cats OR rocket', 10)
      checkResults(t, either, 10, 'cats OR rocket')
      t.same(
        new Set(either.results.slice(0, 2).map((hit) => hit.documentId)),
        new Set([ids.cats, ids.rockets]),
        'web search syntax: OR finds both documents first',
      )
      if (mode === 'keyword') t.equal(either.results.length, 2, 'and only them')
      const odd = await search(on, user, projectId, { query: 'cats & | ! ( :* \\ \' "unterminated -' })
      t.equal(odd.statusCode, 200, 'query syntax characters are not an error')
      for (const topK of [0, 51, -1]) {
        assertProblem(
          t,
          await search(on, user, projectId, { query: 'cats', topK }),
          400,
          'VALIDATION_FAILED',
          `topK ${topK}`,
        )
      }
      assertProblem(t, await search(on, user, projectId, { query: '' }), 400, 'VALIDATION_FAILED', 'empty query')
      assertProblem(t, await search(on, user, projectId, {}), 400, 'VALIDATION_FAILED', 'no query')
      assertProblem(
        t,
        await search(on, user, projectId, { query: 'x'.repeat(2001) }),
        400,
        'VALIDATION_FAILED',
        'a query over 2000 characters',
      )
      t.ok((await searchOk(t, on, user, projectId, 'cats', 50)).results.length <= 50, 'topK 50 is allowed')

      // Another project of the same user sees none of these passages.
      const empty = await createProject(on, user)
      t.same((await searchOk(t, on, user, empty, 'cats purr whiskers')).results, [], 'another project: nothing')
    })
  }
})

t.test('hybrid search: meaning counts, and agreement of both rankings counts most', async (t) => {
  const user = await account(app)
  const projectId = await createProject(app, user)
  const both = await addDocument(app, user, projectId, 'Cliffs', 'The falcon builds a nest on the high cliff.')
  const semanticOnly = await addDocument(app, user, projectId, 'Falcons', 'Falcon falcon falcon.')
  const neither = await addDocument(app, user, projectId, 'Weather', 'Rain is expected over the hills tomorrow.')
  const query = 'falcon nest'
  // Preconditions of the construction: "Falcons" is nearer in meaning, but only "Cliffs" has both words.
  const q = fakeEmbedding(query)
  t.ok(
    cosineSimilarity(q, fakeEmbedding('Falcon falcon falcon.')) >
      cosineSimilarity(q, fakeEmbedding('The falcon builds a nest on the high cliff.')),
    'the semantic ranking alone puts Falcons first',
  )

  const body = await searchOk(t, app, user, projectId, query)
  t.equal(body.mode, 'hybrid')
  checkResults(t, body, 5, query)
  t.same(
    body.results.map((hit) => hit.documentId),
    [both.id, semanticOnly.id, neither.id],
    'matching by both signals outranks the best match by one signal',
  )
  const [first, second] = body.results as [SearchHit, SearchHit]
  t.ok(first.score > second.score, 'strictly higher')
  // Reciprocal rank fusion with k = 60: keyword rank 1 and vector rank 2, against vector rank 1 only.
  t.ok(Math.abs(first.score - (1 / 61 + 1 / 62)) < 1e-6, `fused score 1/61 + 1/62 (${first.score})`)
  t.ok(Math.abs(second.score - 1 / 61) < 1e-6, `one signal: 1/61 (${second.score})`)

  // A word no document has, next to one only "Falcons"-like text shares in meaning: no full-text
  // match (all words are required), but the vectors still find it.
  const meaning = await searchOk(t, app, user, projectId, 'zyxwv falcon falcon')
  t.equal(meaning.mode, 'hybrid')
  t.equal(meaning.results[0]?.documentId, semanticOnly.id, 'found by meaning alone')
})

t.test('search falls back to keyword when the query cannot be embedded', async (t) => {
  const user = await account(app)
  const projectId = await createProject(app, user)
  const ids = await seedCorpus(app, user, projectId)
  // Every embeddings request fails (retried quickly by the SDK, then given up).
  openai.embeddingsControl.default = { failBeforeFirstToken: { status: 500, retryAfterMs: 1 } }
  const before = openai.requests.length
  const body = await searchOk(t, app, user, projectId, 'Purr whiskers cats')
  t.equal(body.mode, 'keyword', 'mode keyword')
  t.same(
    body.results.map((hit) => hit.documentId),
    [ids.cats],
    'full-text results',
  )
  t.ok(embeddingRequests(before).length >= 1, 'the query embedding was attempted')
  t.ok(
    embeddingRequests(before).every((request) => request.status === 500),
    'and failed',
  )
})

t.test('chat grounded in a project: numbered passages in the prompt, sources in done', async (t) => {
  const user = await account(app)
  const projectId = await createProject(app, user)
  const ids = await seedCorpus(app, user, projectId)
  const before = openai.requests.length
  const response = await call(app, user, 'POST', '/chat', {
    message: 'How do cats use their whiskers, and when do they purr?',
    projectId,
  })
  const stream = readChat(t, response)
  const done = stream.done
  if (!done) return t.fail(`no done: ${response.body}`)
  const sources = done.sources as unknown as GroundedSource[]
  t.equal(sources.length, 5, 'five passages')
  t.same(
    sources.map((source) => source.index),
    [1, 2, 3, 4, 5],
    'numbered from 1',
  )
  t.equal(sources[0]?.documentId, ids.cats, 'the best passage first')
  t.equal(sources[0]?.title, 'Cats')
  for (const source of sources) {
    t.match(source, { documentId: /^doc_/, title: String, score: Number, text: String })
    const entry = CORPUS.find((c) => ids[c.key] === source.documentId)
    t.equal(source.title, entry?.title, 'the title of its document')
    t.equal(source.text, entry?.text.slice(0, 300), 'an excerpt of its passage')
  }
  t.ok(
    sources.every((source, i) => i === 0 || (sources[i - 1]?.score ?? 0) >= (source.score ?? 0)),
    'in retrieval order',
  )

  const chats = chatRequests(openai, before)
  t.equal(chats.length, 1, 'one chat request')
  const system = ((chats[0]?.body.messages as { role: string; content: string }[])[0] ?? { content: '' }).content
  const cats = CORPUS[0]
  t.ok(system.includes(`[1] Cats: ${cats.text}`), 'passage [1] with its title in the system prompt')
  let previous = -1
  for (const [i, source] of sources.entries()) {
    const entry = CORPUS.find((c) => ids[c.key] === source.documentId)
    const at = system.indexOf(`[${i + 1}] ${entry?.title}: ${entry?.text}`)
    t.ok(at > previous, `passage [${i + 1}] (${entry?.title}) in order`)
    previous = at
  }
  t.notOk(system.includes('[6]'), 'no more than five')
  t.ok(
    embeddingRequests(before).some((request) =>
      inputsOf(request).includes('How do cats use their whiskers, and when do they purr?'),
    ),
    'the question was embedded for retrieval',
  )

  // The client's own passages come first; the project's are numbered after them.
  const withContext = readChat(
    t,
    await call(app, user, 'POST', '/chat', {
      message: 'rocket launch orbit',
      projectId,
      context: { chunks: ['A passage from the client.'] },
    }),
  )
  const contextSources = (withContext.done?.sources ?? []) as unknown as GroundedSource[]
  t.match(contextSources[0], { index: 1, text: 'A passage from the client.', documentId: null })
  t.match(contextSources[1], { index: 2, documentId: ids.rockets, title: 'Rockets' })
  const lastChat = chatRequests(openai, before).at(-1)
  const contextSystem = ((lastChat?.body.messages as { content: string }[])[0] ?? { content: '' }).content
  t.ok(contextSystem.includes('[1] A passage from the client.'), 'the client passage is [1]')
  t.ok(contextSystem.includes(`[2] Rockets: ${CORPUS[1].text}`), 'the best retrieved passage is [2]')

  // Without a project, no retrieval.
  const plain = readChat(t, await call(app, user, 'POST', '/chat', { message: 'cats purr whiskers' }))
  t.same(plain.done?.sources, [], 'no project, no sources')
})

t.test('a conversation with a project gets sources in its done', async (t) => {
  const user = await account(app)
  const projectId = await createProject(app, user)
  const ids = await seedCorpus(app, user, projectId)
  const created = await call(app, user, 'POST', '/conversations', { projectId })
  t.equal(created.statusCode, 201, created.body)
  const before = openai.requests.length
  const response = await call(app, user, 'POST', `/conversations/${created.json().id}/messages`, {
    content: 'Tell me about the coffee espresso roast',
  })
  t.equal(response.statusCode, 200, response.body.slice(0, 300))
  const stream = checkConversationStream(t, parseSse(response.body), { label: 'conversation' })
  const sources = (stream.done?.sources ?? []) as unknown as GroundedSource[]
  t.equal(stream.done?.status, 'complete')
  t.ok(sources.length >= 1, `sources listed (${sources.length})`)
  t.match(sources[0], { index: 1, documentId: ids.coffee, title: 'Coffee', score: Number })
  const system = ((chatRequests(openai, before)[0]?.body.messages as { content: string }[])[0] ?? { content: '' })
    .content
  t.ok(system.includes(`[1] Coffee: ${CORPUS[5].text}`), 'the passage is in the prompt')
})

t.test('chat still answers when retrieval cannot embed the question (keyword fallback)', async (t) => {
  const user = await account(app)
  const projectId = await createProject(app, user)
  const ids = await seedCorpus(app, user, projectId)
  openai.embeddingsControl.default = { failBeforeFirstToken: { status: 500, retryAfterMs: 1 } }
  const before = openai.requests.length
  const stream = readChat(
    t,
    await call(app, user, 'POST', '/chat', { message: 'Volcano eruption lava', projectId }),
    'grounded chat',
  )
  t.ok(stream.done, 'answered')
  const sources = (stream.done?.sources ?? []) as unknown as GroundedSource[]
  t.same(
    sources.map((source) => source.documentId),
    [ids.volcanoes],
    'grounded in the full-text results',
  )
  t.ok(embeddingRequests(before).length >= 1, 'embedding the question was attempted')
  t.equal(chatRequests(openai, before).length, 1, 'and the chat request was made')
})

t.test('keyword mode grounds chats too (Anthropic, no embeddings)', async (t) => {
  const user = await account(keywordApp)
  const projectId = await createProject(keywordApp, user)
  const ids = await seedCorpus(keywordApp, user, projectId)
  const before = anthropic.requests.length
  const stream = readChat(t, await call(keywordApp, user, 'POST', '/chat', { message: 'chess checkmate', projectId }))
  const sources = (stream.done?.sources ?? []) as unknown as GroundedSource[]
  t.same(
    sources.map((source) => [source.index, source.documentId, source.title]),
    [[1, ids.chess, 'Chess']],
    'the full-text match',
  )
  const request = chatRequests(anthropic, before)[0]
  const system = ((request?.body.system as { text: string }[] | undefined) ?? []).map((block) => block.text).join('')
  t.ok(system.includes(`[1] Chess: ${CORPUS[4].text}`), 'in the system prompt')
})

t.test("another org's project: 404 PROJECT_NOT_FOUND on every route", async (t) => {
  const owner = await account(app)
  const stranger = await account(app)
  const projectId = await createProject(app, owner)
  const doc = await addDocument(app, owner, projectId, 'Secret', 'The secret recipe uses cardamom.')
  const attempts: [string, Promise<LightMyRequestResponse>][] = [
    ['create', postDocument(app, stranger, projectId, { title: 'X', text: 'Y.' })],
    ['list', call(app, stranger, 'GET', `/projects/${projectId}/documents`)],
    ['delete', call(app, stranger, 'DELETE', `/projects/${projectId}/documents/${doc.id}`)],
    ['search', search(app, stranger, projectId, { query: 'secret recipe' })],
    [
      'upload',
      upload(app, stranger, projectId, { title: 'X', file: { content: 'Y.', type: 'text/plain', name: 'y.txt' } }),
    ],
    ['chat', call(app, stranger, 'POST', '/chat', { message: 'secret recipe', projectId })],
  ]
  const missing = await call(app, stranger, 'GET', '/projects/prj_doesnotexist/documents')
  assertProblem(t, missing, 404, 'PROJECT_NOT_FOUND', 'a project that does not exist')
  for (const [label, attempt] of attempts) {
    const response = await attempt
    assertProblem(t, response, 404, 'PROJECT_NOT_FOUND', label)
    t.equal(response.json().detail, missing.json().detail, `${label}: like a project that does not exist`)
  }
  t.same(
    (await listDocuments(app, owner, projectId)).map((d) => d.id),
    [doc.id],
    'nothing added or deleted',
  )
})

t.test('a viewer may list and search, not add or delete', async (t) => {
  const owner = await account(app)
  const viewer = await account(app)
  const member = await account(app)
  const orgId = await createOrg(app, owner, 'Docs Org')
  await addMember(app, owner, orgId, viewer, 'viewer')
  await addMember(app, owner, orgId, member, 'member')
  const projectId = await createProject(app, owner, orgId)
  const doc = await addDocument(app, owner, projectId, 'Maps', 'Old maps show sea monsters near the edges.')

  t.same(
    (await listDocuments(app, viewer, projectId)).map((d) => d.id),
    [doc.id],
    'the viewer lists',
  )
  t.equal((await searchOk(t, app, viewer, projectId, 'sea monsters maps')).results[0]?.documentId, doc.id, 'searches')
  assertProblem(
    t,
    await postDocument(app, viewer, projectId, { title: 'X', text: 'Y.' }),
    403,
    'INSUFFICIENT_ROLE',
    'viewer create',
  )
  assertProblem(
    t,
    await upload(app, viewer, projectId, { title: 'X', file: { content: 'Y.', type: 'text/plain', name: 'y.txt' } }),
    403,
    'INSUFFICIENT_ROLE',
    'viewer upload',
  )
  assertProblem(
    t,
    await call(app, viewer, 'DELETE', `/projects/${projectId}/documents/${doc.id}`),
    403,
    'INSUFFICIENT_ROLE',
    'viewer delete',
  )
  const added = await addDocument(app, member, projectId, 'Member doc', 'Members may add documents.')
  t.equal(added.projectId, projectId, 'a member adds')
  const removed = await call(app, member, 'DELETE', `/projects/${projectId}/documents/${added.id}`)
  t.equal(removed.statusCode, 204, 'and deletes')
  t.same(
    (await listDocuments(app, owner, projectId)).map((d) => d.id),
    [doc.id],
    "the viewer's attempts changed nothing",
  )
})

t.test('API keys need documents:read to read and documents:write to write', async (t) => {
  const owner = await account(app)
  const projectId = await createProject(app, owner)
  const doc = await addDocument(app, owner, projectId, 'Keys', 'Brass keys open old wooden doors.')
  const key = async (scopes: string[]) => ({
    headers: bearer((await createApiKey(app, owner, owner.personalOrgId, scopes)).key),
  })
  const reader = await key(['documents:read'])
  const writer = await key(['documents:write'])
  const projectsOnly = await key(['projects:read', 'projects:write'])

  const readerList = await call(app, reader, 'GET', `/projects/${projectId}/documents`)
  t.equal(readerList.statusCode, 200, `documents:read lists (${readerList.body.slice(0, 200)})`)
  const readerSearch = await search(app, reader, projectId, { query: 'brass keys' })
  t.equal(readerSearch.statusCode, 200, `documents:read searches (${readerSearch.body.slice(0, 200)})`)
  assertProblem(
    t,
    await postDocument(app, reader, projectId, { title: 'X', text: 'Y.' }),
    403,
    'INSUFFICIENT_SCOPE',
    'documents:read cannot create',
  )
  assertProblem(
    t,
    await call(app, reader, 'DELETE', `/projects/${projectId}/documents/${doc.id}`),
    403,
    'INSUFFICIENT_SCOPE',
    'documents:read cannot delete',
  )

  const created = await postDocument(app, writer, projectId, { title: 'By key', text: 'Written with an API key.' })
  t.equal(created.statusCode, 201, `documents:write creates (${created.body.slice(0, 200)})`)
  if (created.statusCode === 201) {
    const deleted = await call(app, writer, 'DELETE', `/projects/${projectId}/documents/${created.json().id}`)
    t.equal(deleted.statusCode, 204, 'and deletes')
  }
  assertProblem(
    t,
    await call(app, writer, 'GET', `/projects/${projectId}/documents`),
    403,
    'INSUFFICIENT_SCOPE',
    'documents:write cannot list',
  )
  assertProblem(
    t,
    await search(app, writer, projectId, { query: 'brass keys' }),
    403,
    'INSUFFICIENT_SCOPE',
    'documents:write cannot search',
  )

  for (const [label, response] of [
    ['list', await call(app, projectsOnly, 'GET', `/projects/${projectId}/documents`)],
    ['search', await search(app, projectsOnly, projectId, { query: 'brass keys' })],
    ['create', await postDocument(app, projectsOnly, projectId, { title: 'X', text: 'Y.' })],
  ] as const) {
    assertProblem(t, response, 403, 'INSUFFICIENT_SCOPE', `projects scopes only: ${label}`)
  }

  // With both scope families (as a client would likely grant), everything works.
  const full = await key(['projects:read', 'documents:read', 'documents:write'])
  t.equal((await call(app, full, 'GET', `/projects/${projectId}/documents`)).statusCode, 200)

  // A key of another org does not see the project at all.
  const stranger = await account(app)
  const strangerKey = {
    headers: bearer(
      (await createApiKey(app, stranger, stranger.personalOrgId, ['projects:read', 'documents:read'])).key,
    ),
  }
  assertProblem(
    t,
    await call(app, strangerKey, 'GET', `/projects/${projectId}/documents`),
    404,
    'PROJECT_NOT_FOUND',
    "another org's key",
  )
})
