import { sql } from 'drizzle-orm'
import { bigint, customType, index, integer, pgEnum, pgTable, text, timestamp, vector } from 'drizzle-orm/pg-core'
import { orgs } from './auth.js'
import { projects } from './projects.js'

/** Length of stored embeddings (text-embedding-3-small's; other models are asked for it). */
export const EMBEDDING_DIMENSIONS = 1536

const tsvector = customType<{ data: string }>({ dataType: () => 'tsvector' })

export const documentStatus = pgEnum('document_status', ['processing', 'ready', 'failed'])

/** Text a project's chats are grounded in. Its content lives in its chunks. */
export const documents = pgTable(
  'documents',
  {
    id: text().primaryKey(),
    orgId: text()
      .notNull()
      .references(() => orgs.id, { onDelete: 'cascade' }),
    projectId: text()
      .notNull()
      .references(() => projects.id, { onDelete: 'cascade' }),
    title: text().notNull(),
    contentType: text().notNull(),
    chars: integer().notNull(),
    chunkCount: integer().notNull(),
    // processing: chunks are searchable by keyword, embeddings are being computed.
    status: documentStatus().notNull(),
    error: text(),
    createdBy: text().notNull(),
    createdAt: timestamp({ withTimezone: true }).notNull().defaultNow(),
    updatedAt: timestamp({ withTimezone: true }).notNull().defaultNow(),
  },
  (table) => [index('documents_project_created_idx').on(table.projectId, table.createdAt, table.id)],
)

/**
 * Overlapping passages of a document, each searchable by full text (a generated tsvector, GIN) and
 * by meaning (its embedding, HNSW with cosine distance) once computed.
 */
export const documentChunks = pgTable(
  'document_chunks',
  {
    id: bigint({ mode: 'number' }).primaryKey().generatedAlwaysAsIdentity(),
    documentId: text()
      .notNull()
      .references(() => documents.id, { onDelete: 'cascade' }),
    projectId: text().notNull(),
    seq: integer().notNull(),
    text: text().notNull(),
    contentHash: text().notNull(),
    tsv: tsvector().generatedAlwaysAs(sql`to_tsvector('english', text)`),
    embedding: vector({ dimensions: EMBEDDING_DIMENSIONS }),
  },
  (table) => [
    index('document_chunks_document_idx').on(table.documentId, table.seq),
    index('document_chunks_project_idx').on(table.projectId),
    index('document_chunks_tsv_idx').using('gin', table.tsv),
    index('document_chunks_embedding_idx').using('hnsw', table.embedding.op('vector_cosine_ops')),
  ],
)

/** Embeddings already computed, by model and text: re-uploading or overlapping text costs no second call. */
export const embeddingCache = pgTable('embedding_cache', {
  key: text().primaryKey(),
  embedding: vector({ dimensions: EMBEDDING_DIMENSIONS }).notNull(),
  createdAt: timestamp({ withTimezone: true }).notNull().defaultNow(),
})
