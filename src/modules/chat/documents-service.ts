import { createHash } from 'node:crypto'
import type { FastifyBaseLogger } from 'fastify'
import type { Database } from '../../db/client.js'
import { timestampCursorParam, toPage } from '../../lib/cursor.js'
import { newId } from '../../lib/ids.js'
import { problems } from '../../lib/problem.js'
import type { Jobs } from '../../plugins/jobs.js'
import { type AuthContext, requireOrgRole, requireScope } from '../auth/authorization.js'
import { chunkText } from './chunker.js'
import type { DocumentRow, DocumentsRepository, RankedChunk } from './documents-repository.js'
import type { Embedder } from './providers.js'

/** Jobs `{documentId}` computing the embeddings of a large document. */
export const EMBED_QUEUE = 'documents.embed'
/** Largest text accepted, in characters (JSON) or bytes (upload). */
export const MAX_DOCUMENT_CHARS = 2 * 1024 * 1024
/** Texts per embeddings request. */
const EMBED_BATCH = 100
/** Documents with more chunks than this are embedded by a background job; smaller ones before the answer. */
const INLINE_EMBED_CHUNKS = 20

export function presentDocument(row: DocumentRow) {
  return {
    id: row.id,
    projectId: row.projectId,
    title: row.title,
    contentType: row.contentType,
    chars: row.chars,
    chunkCount: row.chunkCount,
    status: row.status,
    error: row.error,
    createdAt: row.createdAt,
    updatedAt: row.updatedAt,
  }
}

const hashOf = (text: string) => createHash('sha256').update(text).digest('hex')

export function createDocumentsService(deps: {
  db: Database
  repository: DocumentsRepository
  /** The embeddings provider an org's documents use: its own key, or the server's; null without either. */
  embedderFor(orgId: string): Promise<Embedder | null>
  jobs: Jobs
  projects: { get(auth: AuthContext, id: string): Promise<{ id: string; orgId: string }> }
  log: FastifyBaseLogger
}) {
  const { db, repository, embedderFor, jobs, projects, log } = deps

  /** The project, if the caller may read (or write) its documents; 404 for other orgs' projects. */
  async function project(auth: AuthContext, projectId: string, access: 'read' | 'write') {
    requireScope(auth, access === 'read' ? 'documents:read' : 'documents:write')
    const found = await projects.get(auth, projectId)
    requireOrgRole(auth, found.orgId, access === 'read' ? 'viewer' : 'member')
    return found
  }

  /** Vectors for texts, from the cache where possible; new ones are cached. Batches of at most 100. */
  async function embedTexts(embedder: Embedder | null, texts: string[]): Promise<number[][]> {
    if (!embedder) throw new Error('no embeddings provider')
    const keys = texts.map((text) => hashOf(`${embedder.model}\n${text}`))
    const cached = await repository.cachedEmbeddings([...new Set(keys)])
    const missing = [...new Set(keys.filter((key) => !cached.has(key)))]
    const textOf = new Map(keys.map((key, i) => [key, texts[i] as string]))
    for (let start = 0; start < missing.length; start += EMBED_BATCH) {
      const batch = missing.slice(start, start + EMBED_BATCH)
      const vectors = await embedder.embed(batch.map((key) => textOf.get(key) as string))
      const rows = batch.map((key, i) => ({ key, embedding: vectors[i] as number[] }))
      await repository.cacheEmbeddings(rows)
      for (const row of rows) cached.set(row.key, row.embedding)
    }
    return keys.map((key) => cached.get(key) as number[])
  }

  /** Embeds what is not embedded yet; the document is ready after, or failed with a reason. */
  async function embedDocument(documentId: string, orgId?: string): Promise<void> {
    const owner = orgId ?? (await repository.orgOf(documentId))
    // Deleted meanwhile: nothing left to embed.
    if (owner === undefined) return
    const embedder = await embedderFor(owner)
    for (;;) {
      const chunks = await repository.chunksToEmbed(documentId, EMBED_BATCH)
      if (chunks.length === 0) break
      const vectors = await embedTexts(
        embedder,
        chunks.map((chunk) => chunk.text),
      )
      await repository.setEmbeddings(chunks.map((chunk, i) => ({ id: chunk.id, embedding: vectors[i] as number[] })))
    }
    await repository.setStatus(documentId, 'ready', null)
  }

  return {
    embedDocument,
    writableProject: (auth: AuthContext, projectId: string) => project(auth, projectId, 'write'),

    /** The job's handler: a failure is retried by the queue; the last one marks the document failed. */
    async embedJob(documentId: string, attempt: number, lastAttempt: boolean) {
      try {
        await embedDocument(documentId)
      } catch (error) {
        log.warn({ err: error, documentId, attempt }, 'document embedding failed')
        if (lastAttempt) await repository.setStatus(documentId, 'failed', 'Embeddings could not be computed.')
        throw error
      }
    },

    async create(
      auth: AuthContext,
      projectId: string,
      input: { title: string; text: string; contentType: 'text/plain' | 'text/markdown' },
    ) {
      const found = await project(auth, projectId, 'write')
      const title = input.title.trim()
      if (!title) {
        throw problems.badRequest('INVALID_TITLE', 'The title is empty.', [
          { path: '/body/title', message: 'must not be blank' },
        ])
      }
      if (input.text.length > MAX_DOCUMENT_CHARS) {
        throw problems.badRequest('DOCUMENT_TOO_LARGE', `A document holds at most ${MAX_DOCUMENT_CHARS} characters.`)
      }
      const chunks = chunkText(input.text)
      if (chunks.length === 0) {
        throw problems.badRequest('EMPTY_DOCUMENT', 'The document has no text.', [
          { path: '/body/text', message: 'must contain text' },
        ])
      }
      const id = newId('doc')
      const embedder = await embedderFor(found.orgId)
      const inline = embedder !== null && chunks.length <= INLINE_EMBED_CHUNKS
      const row = await db.transaction(async (tx) => {
        const inserted = await repository.insert(
          {
            id,
            orgId: found.orgId,
            projectId,
            title,
            contentType: input.contentType,
            chars: input.text.length,
            chunkCount: chunks.length,
            // Without an embeddings provider, keyword search is all there is: ready at once.
            status: embedder ? 'processing' : 'ready',
            createdBy: auth.userId,
          },
          chunks.map((text, seq) => ({ seq, text, contentHash: hashOf(text) })),
          tx,
        )
        if (embedder && !inline) await jobs.send(EMBED_QUEUE, { documentId: id }, { tx })
        return inserted
      })
      if (!inline) return presentDocument(row)
      try {
        await embedDocument(id, found.orgId)
      } catch (error) {
        // Searchable by keyword meanwhile; the queue keeps trying.
        log.warn({ err: error, documentId: id }, 'inline embedding failed; queued')
        await jobs.send(EMBED_QUEUE, { documentId: id })
      }
      return presentDocument((await repository.find(projectId, id)) ?? row)
    },

    async list(auth: AuthContext, projectId: string, query: { limit?: number; cursor?: string | undefined }) {
      await project(auth, projectId, 'read')
      const limit = query.limit ?? 20
      const before = timestampCursorParam(query.cursor, projectId)
      const rows = await repository.list(projectId, limit + 1, before)
      const { data, nextCursor } = toPage(rows, limit, (row) => ({
        k: row.sortKey,
        id: row.document.id,
        scope: projectId,
      }))
      return { data: data.map((row) => presentDocument(row.document)), nextCursor }
    },

    async remove(auth: AuthContext, projectId: string, documentId: string) {
      await project(auth, projectId, 'write')
      const found = await repository.find(projectId, documentId)
      if (!found) throw problems.notFound('Document not found.', 'DOCUMENT_NOT_FOUND')
      await repository.delete(documentId)
    },

    /** Ranked chunks: hybrid (full text and vectors, fused) with an embeddings provider, keyword otherwise. */
    async search(auth: AuthContext, projectId: string, input: { query: string; topK?: number | undefined }) {
      const found = await project(auth, projectId, 'read')
      return this.retrieve(found.orgId, projectId, input.query, input.topK ?? 5)
    },

    /** Retrieval without access checks, for callers that made them (chat grounded in a project). */
    async retrieve(
      orgId: string,
      projectId: string,
      query: string,
      topK: number,
    ): Promise<{ mode: 'hybrid' | 'keyword'; results: RankedChunk[] }> {
      const embedder = await embedderFor(orgId)
      if (embedder) {
        let embedding: number[] | undefined
        try {
          ;[embedding] = await embedTexts(embedder, [query])
        } catch (error) {
          // The provider is down: full text still answers, and the mode says so.
          log.warn({ err: error }, 'query embedding failed; keyword search only')
        }
        if (embedding)
          return { mode: 'hybrid', results: await repository.hybridSearch(projectId, query, embedding, topK) }
      }
      return { mode: 'keyword', results: await repository.keywordSearch(projectId, query, topK) }
    },
  }
}

export type DocumentsService = ReturnType<typeof createDocumentsService>
