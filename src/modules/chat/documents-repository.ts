import { and, asc, desc, eq, inArray, isNull, lt, or, sql } from 'drizzle-orm'
import type { Executor } from '../../db/client.js'
import { resultRows } from '../../db/results.js'
import { documentChunks, documents, embeddingCache } from '../../db/schema/index.js'
import type { Cursor } from '../../lib/cursor.js'

export type DocumentRow = typeof documents.$inferSelect

export interface RankedChunk {
  chunkId: number
  documentId: string
  title: string
  seq: number
  text: string
  score: number
}

/** Candidates each ranking contributes before fusion. */
const FUSION_DEPTH = 50
/** Reciprocal rank fusion's constant: ranks 1 and 2 differ little, rank 1 and 50 a lot. */
const RRF_K = 60

const vectorLiteral = (embedding: number[]) => `[${embedding.join(',')}]`

/** The only code that touches the document tables. */
export function createDocumentsRepository(db: Executor) {
  return {
    async insert(
      document: typeof documents.$inferInsert,
      chunks: { seq: number; text: string; contentHash: string }[],
      tx: Executor,
    ): Promise<DocumentRow> {
      const [row] = await tx.insert(documents).values(document).returning()
      if (chunks.length > 0) {
        await tx
          .insert(documentChunks)
          .values(chunks.map((chunk) => ({ ...chunk, documentId: document.id, projectId: document.projectId })))
      }
      return row as DocumentRow
    },

    async find(projectId: string, id: string, tx: Executor = db): Promise<DocumentRow | null> {
      const [row] = await tx
        .select()
        .from(documents)
        .where(and(eq(documents.id, id), eq(documents.projectId, projectId)))
      return row ?? null
    },

    /** Newest first; (createdAt, id) is the keyset. */
    async list(projectId: string, limit: number, before: Cursor | null, tx: Executor = db) {
      const keyset = before
        ? or(
            lt(documents.createdAt, sql`${before.k}::timestamptz`),
            and(eq(documents.createdAt, sql`${before.k}::timestamptz`), lt(documents.id, before.id)),
          )
        : undefined
      return tx
        .select({ document: documents, sortKey: sql<string>`${documents.createdAt}::text` })
        .from(documents)
        .where(and(eq(documents.projectId, projectId), keyset))
        .orderBy(desc(documents.createdAt), desc(documents.id))
        .limit(limit)
    },

    async delete(id: string, tx: Executor = db): Promise<void> {
      await tx.delete(documents).where(eq(documents.id, id))
    },

    async orgOf(documentId: string, tx: Executor = db): Promise<string | undefined> {
      const [row] = await tx.select({ orgId: documents.orgId }).from(documents).where(eq(documents.id, documentId))
      return row?.orgId
    },

    async setStatus(id: string, status: DocumentRow['status'], error: string | null, tx: Executor = db) {
      await tx
        .update(documents)
        .set({ status, error, updatedAt: sql`now()` })
        .where(eq(documents.id, id))
    },

    /** Chunks of a document still without an embedding, in order. */
    async chunksToEmbed(documentId: string, limit: number, tx: Executor = db) {
      return tx
        .select({ id: documentChunks.id, text: documentChunks.text, contentHash: documentChunks.contentHash })
        .from(documentChunks)
        .where(and(eq(documentChunks.documentId, documentId), isNull(documentChunks.embedding)))
        .orderBy(asc(documentChunks.seq))
        .limit(limit)
    },

    async setEmbeddings(rows: { id: number; embedding: number[] }[], tx: Executor = db): Promise<void> {
      if (rows.length === 0) return
      await tx.execute(sql`
        update document_chunks as c set embedding = v.embedding::vector
        from jsonb_to_recordset(${JSON.stringify(rows.map((row) => ({ id: row.id, embedding: vectorLiteral(row.embedding) })))}::jsonb)
          as v(id bigint, embedding text)
        where c.id = v.id
      `)
    },

    async cachedEmbeddings(keys: string[], tx: Executor = db): Promise<Map<string, number[]>> {
      if (keys.length === 0) return new Map()
      const rows = await tx
        .select({ key: embeddingCache.key, embedding: embeddingCache.embedding })
        .from(embeddingCache)
        .where(inArray(embeddingCache.key, keys))
      return new Map(rows.map((row) => [row.key, row.embedding]))
    },

    async cacheEmbeddings(rows: { key: string; embedding: number[] }[], tx: Executor = db): Promise<void> {
      if (rows.length === 0) return
      await tx.insert(embeddingCache).values(rows).onConflictDoNothing()
    },

    /** Full-text ranking only. */
    async keywordSearch(projectId: string, query: string, topK: number, tx: Executor = db): Promise<RankedChunk[]> {
      const result = await tx.execute(sql`
        select c.id as "chunkId", c.document_id as "documentId", d.title, c.seq, c.text,
               ts_rank_cd(c.tsv, q) as score
        from document_chunks c
        join documents d on d.id = c.document_id,
             websearch_to_tsquery('english', ${query}) q
        where c.project_id = ${projectId} and c.tsv @@ q
        order by score desc, c.id
        limit ${topK}
      `)
      return rowsOf(result)
    },

    /**
     * Full text and vector similarity, fused by reciprocal rank: a chunk's score is the sum over
     * both rankings of 1 / (60 + its rank there), so agreement between them counts most.
     */
    async hybridSearch(
      projectId: string,
      query: string,
      embedding: number[],
      topK: number,
      tx: Executor = db,
    ): Promise<RankedChunk[]> {
      // The HNSW index filters by project after its search: look wider than the 50 kept, so a small
      // project among large ones still finds its nearest passages.
      const result = await tx.transaction(async (inner) => {
        await inner.execute(sql`set local hnsw.ef_search = 400`)
        return inner.execute(sql`
        with q as (select websearch_to_tsquery('english', ${query}) as q),
        keyword as (
          select c.id, row_number() over (order by ts_rank_cd(c.tsv, q.q) desc, c.id) as rank
          from document_chunks c, q
          where c.project_id = ${projectId} and c.tsv @@ q.q
          order by rank
          limit ${FUSION_DEPTH}
        ),
        semantic as (
          -- The inner query is the shape the HNSW index serves: nearest first, limited.
          select id, row_number() over (order by distance, id) as rank
          from (
            select c.id, c.embedding <=> ${vectorLiteral(embedding)}::vector as distance
            from document_chunks c
            where c.project_id = ${projectId} and c.embedding is not null
            order by c.embedding <=> ${vectorLiteral(embedding)}::vector
            limit ${FUSION_DEPTH}
          ) nearest
        ),
        fused as (
          select coalesce(k.id, s.id) as id,
                 coalesce(1.0 / (${RRF_K} + k.rank), 0) + coalesce(1.0 / (${RRF_K} + s.rank), 0) as score
          from keyword k full outer join semantic s on s.id = k.id
        )
        select c.id as "chunkId", c.document_id as "documentId", d.title, c.seq, c.text, f.score::float8 as score
        from fused f
        join document_chunks c on c.id = f.id
        join documents d on d.id = c.document_id
        order by f.score desc, c.id
        limit ${topK}
      `)
      })
      return rowsOf(result)
    },
  }
}

function rowsOf(result: unknown): RankedChunk[] {
  return resultRows<RankedChunk>(result).map((row) => ({
    ...row,
    chunkId: Number(row.chunkId),
    seq: Number(row.seq),
    score: Number(row.score),
  }))
}

export type DocumentsRepository = ReturnType<typeof createDocumentsRepository>
