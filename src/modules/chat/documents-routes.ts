import multipart from '@fastify/multipart'
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { FastifyRequest } from 'fastify'
import { Type } from 'typebox'
import { HttpProblem, ProblemResponse, problems } from '../../lib/problem.js'
import { requireAuth } from '../auth/authorization.js'
import {
  CreateDocumentBody,
  DocumentParams,
  ListDocumentsQuery,
  ProjectParams,
  SearchBody,
} from './documents-schemas.js'
import { type DocumentsService, MAX_DOCUMENT_CHARS } from './documents-service.js'

const ref = (id: string) => Type.Unsafe(Type.Ref(id))
const security = [{ bearer: [] }]
const errors = {
  400: ProblemResponse,
  401: ProblemResponse,
  403: ProblemResponse,
  404: ProblemResponse,
  429: ProblemResponse,
}
/** JSON carries up to 2 MB of text, escaped: room for the escaping and the title. */
const JSON_BODY_LIMIT = MAX_DOCUMENT_CHARS * 2 + 64 * 1024

type CreateInput = { title: string; text: string; contentType: 'text/plain' | 'text/markdown' }

/** A plain-text or Markdown file from a multipart upload (field `file`, optional field `title`). */
async function fromUpload(request: FastifyRequest): Promise<CreateInput> {
  const file = await request.file({ limits: { fileSize: MAX_DOCUMENT_CHARS, files: 1, fields: 2 } })
  if (!file) throw problems.badRequest('FILE_REQUIRED', 'Send the document as a multipart field named "file".')
  const name = file.filename ?? ''
  const markdown = /\.(md|markdown)$/i.test(name) || file.mimetype === 'text/markdown'
  if (!markdown && file.mimetype !== 'text/plain' && !/\.txt$/i.test(name)) {
    throw new HttpProblem(415, 'UNSUPPORTED_DOCUMENT_TYPE', 'Upload plain text (.txt) or Markdown (.md).')
  }
  const buffer = await file.toBuffer()
  if (file.file.truncated) {
    throw new HttpProblem(413, 'PAYLOAD_TOO_LARGE', `A document holds at most ${MAX_DOCUMENT_CHARS} bytes.`)
  }
  let text: string
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(buffer)
  } catch {
    throw problems.badRequest('INVALID_ENCODING', 'The file is not UTF-8 text.')
  }
  if (text.includes('\u0000')) throw problems.badRequest('INVALID_CHARACTER', 'The file contains a NUL character.')
  const titleField = file.fields.title as { value?: unknown } | undefined
  const title = typeof titleField?.value === 'string' && titleField.value.trim() ? titleField.value.trim() : name
  if (!title || title.length > 500) {
    throw problems.badRequest(
      'INVALID_TITLE',
      'Give the document a title (a "title" field or a file name) of at most 500 characters.',
    )
  }
  return { title, text, contentType: markdown ? 'text/markdown' : 'text/plain' }
}

/** A project's documents and search over them. */
export function documentsRoutes(documents: DocumentsService): FastifyPluginAsyncTypebox {
  return async (app) => {
    await app.register(multipart, { limits: { fileSize: MAX_DOCUMENT_CHARS, files: 1, fields: 2 } })

    app.post(
      '/projects/:id/documents',
      {
        bodyLimit: JSON_BODY_LIMIT,
        schema: {
          operationId: 'createDocument',
          tags: ['documents'],
          summary: 'Add a document: JSON {title, text} or a multipart upload of a .txt or .md file',
          description:
            'The text is split into overlapping passages along paragraph and sentence boundaries, searchable by ' +
            'full text at once and by meaning once embedded (small documents before this answers, large ones in the ' +
            'background: status processing). Multipart: field `file`, optional field `title`. Up to 2 MB of text.',
          security,
          params: ProjectParams,
          // JSON is validated here; a multipart body is a stream, read and checked by the handler.
          body: { content: { 'application/json': { schema: CreateDocumentBody } } },
          response: { 201: ref('Document'), ...errors, 413: ProblemResponse, 415: ProblemResponse },
        },
      },
      async (request, reply) => {
        const auth = requireAuth(request)
        let input: CreateInput
        // Who may write is settled before an upload is read.
        await documents.writableProject(auth, request.params.id)
        if (request.isMultipart()) input = await fromUpload(request)
        else {
          const body = request.body as { title: string; text: string; contentType?: 'text/plain' | 'text/markdown' }
          input = { title: body.title, text: body.text, contentType: body.contentType ?? 'text/plain' }
        }
        const document = await documents.create(auth, request.params.id, input)
        return reply
          .code(201)
          .header('location', `/api/v1/projects/${request.params.id}/documents/${document.id}`)
          .send(document)
      },
    )

    app.get(
      '/projects/:id/documents',
      {
        schema: {
          operationId: 'listDocuments',
          tags: ['documents'],
          summary: "A project's documents, newest first",
          security,
          params: ProjectParams,
          querystring: ListDocumentsQuery,
          response: { 200: ref('DocumentList'), ...errors },
        },
      },
      async (request) => documents.list(requireAuth(request), request.params.id, request.query),
    )

    app.delete(
      '/projects/:id/documents/:docId',
      {
        schema: {
          operationId: 'deleteDocument',
          tags: ['documents'],
          summary: 'Delete a document and its passages',
          security,
          params: DocumentParams,
          response: { 204: { type: 'null', description: 'Deleted' }, ...errors },
        },
      },
      async (request, reply) => {
        await documents.remove(requireAuth(request), request.params.id, request.params.docId)
        return reply.code(204).send(null)
      },
    )

    app.post(
      '/projects/:id/search',
      {
        schema: {
          operationId: 'searchDocuments',
          tags: ['documents'],
          summary: "Search a project's documents: hybrid (full text + vectors, RRF) or keyword",
          security,
          params: ProjectParams,
          body: SearchBody,
          response: { 200: ref('SearchResult'), ...errors, 413: ProblemResponse, 415: ProblemResponse },
        },
      },
      async (request) => {
        const { mode, results } = await documents.search(requireAuth(request), request.params.id, request.body)
        return {
          mode,
          results: results.map((result) => ({
            documentId: result.documentId,
            title: result.title,
            chunk: result.seq,
            text: result.text,
            score: result.score,
          })),
        }
      },
    )
  }
}
