import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { FastifyReply } from 'fastify'
import { Type } from 'typebox'
import { etagOf, ifNoneMatchHit } from '../../lib/etag.js'
import { ProblemResponse } from '../../lib/problem.js'
import { requireAuth } from '../auth/authorization.js'
import type { ProjectRow } from './projects-repository.js'
import {
  ConditionalDeleteHeaders,
  ConditionalReadHeaders,
  ConditionalWriteHeaders,
  CreateProjectBody,
  ImportProjectBody,
  ImportProjectQuery,
  ListProjectsQuery,
  PROJECT_BODY_LIMIT,
  PatchProjectBody,
  ProjectParams,
  WriteHeaders,
} from './projects-schemas.js'
import type { ProjectsService } from './projects-service.js'

const ref = (id: string) => Type.Unsafe(Type.Ref(id))
const security = [{ bearer: [] }]
const errors = {
  400: ProblemResponse,
  401: ProblemResponse,
  403: ProblemResponse,
  404: ProblemResponse,
  429: ProblemResponse,
}
// Idempotent writes may also answer: key still in use (409), key reused with another body (422).
const writeErrors = {
  ...errors,
  409: ProblemResponse,
  413: ProblemResponse,
  415: ProblemResponse,
  422: ProblemResponse,
}
const ETag = { etag: { type: 'string', description: 'The version, quoted; send it back in If-Match' } }

/** Versioned representations carry their ETag and must be revalidated before reuse. */
function sendVersioned(reply: FastifyReply, project: ProjectRow, status = 200) {
  return reply
    .code(status)
    .header('etag', etagOf(project.version))
    .header('cache-control', 'private, no-cache')
    .send(project)
}

export function projectsRoutes(projects: ProjectsService): FastifyPluginAsyncTypebox {
  return async (app) => {
    app.post(
      '/projects',
      {
        bodyLimit: PROJECT_BODY_LIMIT,
        config: { idempotency: true },
        schema: {
          operationId: 'createProject',
          tags: ['projects'],
          summary: 'Create a project (members and up; API keys need projects:write)',
          security,
          headers: WriteHeaders,
          body: CreateProjectBody,
          response: { 201: { ...ref('Project'), headers: ETag }, ...writeErrors },
        },
      },
      async (request, reply) => {
        const project = await projects.create(requireAuth(request), request.body, request.ip)
        return sendVersioned(reply.header('location', `/api/v1/projects/${project.id}`), project, 201)
      },
    )

    app.post(
      '/projects/import',
      {
        bodyLimit: PROJECT_BODY_LIMIT,
        config: { idempotency: true },
        schema: {
          operationId: 'importProject',
          tags: ['projects'],
          summary: 'Create a project from an export (the body of GET /projects/{id}); server-owned fields are ignored',
          security,
          headers: WriteHeaders,
          querystring: ImportProjectQuery,
          body: ImportProjectBody,
          response: { 201: { ...ref('Project'), headers: ETag }, ...writeErrors },
        },
      },
      async (request, reply) => {
        const project = await projects.import(requireAuth(request), request.query.orgId, request.body, request.ip)
        return sendVersioned(reply.header('location', `/api/v1/projects/${project.id}`), project, 201)
      },
    )

    app.get(
      '/projects',
      {
        schema: {
          operationId: 'listProjects',
          tags: ['projects'],
          summary: "Projects of the caller's orgs, without their data, newest change first by default",
          security,
          querystring: ListProjectsQuery,
          response: { 200: ref('ProjectList'), ...errors },
        },
      },
      async (request) => projects.list(requireAuth(request), request.query),
    )

    app.get(
      '/projects/:id',
      {
        schema: {
          operationId: 'getProject',
          tags: ['projects'],
          summary: 'A project with its data; this body is also the export format',
          security,
          params: ProjectParams,
          headers: ConditionalReadHeaders,
          response: {
            200: { ...ref('Project'), headers: ETag },
            304: { type: 'null', description: 'Not modified: the ETag in If-None-Match is current' },
            ...errors,
          },
        },
      },
      async (request, reply) => {
        const project = await projects.get(requireAuth(request), request.params.id)
        const etag = etagOf(project.version)
        if (ifNoneMatchHit(request.headers['if-none-match'], etag)) {
          return reply.code(304).header('etag', etag).header('cache-control', 'private, no-cache').send()
        }
        return sendVersioned(reply, project)
      },
    )

    app.patch(
      '/projects/:id',
      {
        bodyLimit: PROJECT_BODY_LIMIT,
        config: { idempotency: true },
        schema: {
          operationId: 'updateProject',
          tags: ['projects'],
          summary: 'Change a project with a JSON merge patch (RFC 7396); If-Match makes it conditional',
          description:
            'Send application/merge-patch+json (or application/json). Keys set to null are removed from data; ' +
            'objects merge key by key; arrays and other values replace. A stale If-Match answers 412.',
          security,
          consumes: ['application/merge-patch+json', 'application/json'],
          params: ProjectParams,
          headers: ConditionalWriteHeaders,
          body: PatchProjectBody,
          response: { 200: { ...ref('Project'), headers: ETag }, ...writeErrors, 412: ProblemResponse },
        },
      },
      async (request, reply) => {
        const project = await projects.update(
          requireAuth(request),
          request.params.id,
          request.body,
          request.headers['if-match'],
          request.ip,
        )
        return sendVersioned(reply, project)
      },
    )

    app.delete(
      '/projects/:id',
      {
        schema: {
          operationId: 'deleteProject',
          tags: ['projects'],
          summary: 'Delete a project; If-Match makes it conditional',
          security,
          params: ProjectParams,
          headers: ConditionalDeleteHeaders,
          response: { 204: Type.Null(), ...errors, 412: ProblemResponse },
        },
      },
      async (request, reply) => {
        await projects.remove(requireAuth(request), request.params.id, request.headers['if-match'], request.ip)
        return reply.code(204).send(null)
      },
    )
  }
}
