import { Type } from 'typebox'
import { Pagination } from '../auth/auth-schemas.js'
import { MAX_DOCUMENT_CHARS } from './documents-service.js'

const Timestamp = Type.String({ format: 'date-time' })

export const DocumentSchema = Type.Object(
  {
    id: Type.String({ pattern: '^doc_' }),
    projectId: Type.String(),
    title: Type.String(),
    contentType: Type.String(),
    chars: Type.Integer(),
    chunkCount: Type.Integer(),
    status: Type.Union([Type.Literal('processing'), Type.Literal('ready'), Type.Literal('failed')], {
      description: 'processing: searchable by keyword while its embeddings are computed',
    }),
    error: Type.Union([Type.String(), Type.Null()]),
    createdAt: Timestamp,
    updatedAt: Timestamp,
  },
  { $id: 'Document', title: 'Document' },
)
export const DocumentListSchema = Type.Object(
  { data: Type.Array(Type.Unsafe(Type.Ref('Document'))), nextCursor: Type.Union([Type.String(), Type.Null()]) },
  { $id: 'DocumentList', title: 'DocumentList' },
)
export const SearchResultSchema = Type.Object(
  {
    mode: Type.Union([Type.Literal('hybrid'), Type.Literal('keyword')], {
      description: 'hybrid: full text and embeddings fused by reciprocal rank; keyword: full text only',
    }),
    results: Type.Array(
      Type.Object({
        documentId: Type.String(),
        title: Type.String(),
        chunk: Type.Integer({ description: 'Position of the passage in its document' }),
        text: Type.String(),
        score: Type.Number({ description: 'Higher is better; comparable within one answer only' }),
      }),
    ),
  },
  { $id: 'SearchResult', title: 'SearchResult' },
)
export const documentSchemas = [DocumentSchema, DocumentListSchema, SearchResultSchema]

export const CreateDocumentBody = Type.Object(
  {
    title: Type.String({ minLength: 1, maxLength: 500 }),
    text: Type.String({ minLength: 1, maxLength: MAX_DOCUMENT_CHARS }),
    contentType: Type.Optional(
      Type.Union([Type.Literal('text/plain'), Type.Literal('text/markdown')], { default: 'text/plain' }),
    ),
  },
  { additionalProperties: false },
)
export const ProjectParams = Type.Object(
  { id: Type.String({ minLength: 1, maxLength: 100 }) },
  { additionalProperties: false },
)
export const DocumentParams = Type.Object(
  { id: Type.String({ minLength: 1, maxLength: 100 }), docId: Type.String({ minLength: 1, maxLength: 100 }) },
  { additionalProperties: false },
)
export const ListDocumentsQuery = Type.Object({ ...Pagination }, { additionalProperties: false })
export const SearchBody = Type.Object(
  {
    query: Type.String({ minLength: 1, maxLength: 2_000 }),
    topK: Type.Optional(Type.Integer({ minimum: 1, maximum: 50, default: 5 })),
  },
  { additionalProperties: false },
)
