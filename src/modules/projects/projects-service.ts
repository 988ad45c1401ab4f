import type { Billing } from '../billing/billing-service.js'
import { createHash } from 'node:crypto'
import type { Database, Executor } from '../../db/client.js'
import { cursorParam, timestampCursorParam, toPage } from '../../lib/cursor.js'
import { etagOf, ifMatchSatisfied } from '../../lib/etag.js'
import { newId } from '../../lib/ids.js'
import { canonicalJson } from '../../lib/json.js'
import { mergePatch } from '../../lib/merge-patch.js'
import { HttpProblem, problems } from '../../lib/problem.js'
import { type AuthContext, orgOrDefault, requireOrgRole, requireScope } from '../auth/authorization.js'
import type { Outbox } from '../events/events-service.js'
import type { OrgsService } from '../orgs/orgs-service.js'
import type { ProjectRow, ProjectSort, ProjectsRepository } from './projects-repository.js'
import { MAX_DATA_BYTES } from './projects-schemas.js'

export interface CreateProjectInput {
  orgId?: string | undefined
  name: string
  description?: string | undefined
  data?: unknown
}

export interface ProjectPatch {
  name?: string | undefined
  description?: string | null | undefined
  data?: unknown
}

export interface ListProjectsInput {
  orgId?: string | undefined
  q?: string | undefined
  sort?: ProjectSort | undefined
  order?: 'asc' | 'desc' | undefined
  limit?: number | undefined
  cursor?: string | undefined
}

const notFound = () => problems.notFound('Project not found.', 'PROJECT_NOT_FOUND')

/** Serialised size of `data`, refused above the limit (a merge can grow a document past it). */
function checkDataSize(data: unknown): void {
  if (Buffer.byteLength(JSON.stringify(data) ?? '') > MAX_DATA_BYTES) {
    throw new HttpProblem(413, 'DATA_TOO_LARGE', `A project's data must not exceed ${MAX_DATA_BYTES} bytes as JSON.`)
  }
}

function stale(): HttpProblem {
  return problems.preconditionFailed('The project changed since the ETag in If-Match was read.')
}

export function createProjectsService(deps: {
  db: Database
  repository: ProjectsRepository
  outbox: Outbox
  orgs: Pick<OrgsService, 'audit'>
  /** The org's plan limits its projects (403 PLAN_LIMIT when full). */
  limits?: Pick<Billing, 'assertRoomFor'>
}) {
  const { db, repository, outbox, orgs } = deps

  /** The orgs whose projects the caller may see: every membership (for an API key, its org). */
  const visibleOrgs = (auth: AuthContext) => [...auth.roles.keys()]

  async function record(type: string, project: ProjectRow, auth: AuthContext, ip: string, tx: Executor) {
    await outbox.record({ type, orgId: project.orgId, subject: { type: 'project', id: project.id }, data: project }, tx)
    await orgs.audit(
      {
        orgId: project.orgId,
        action: type,
        actorUserId: auth.userId,
        actorKeyId: auth.apiKey?.id ?? null,
        targetType: 'project',
        targetId: project.id,
        ip,
        metadata: { version: project.version },
      },
      tx,
    )
  }

  async function insert(auth: AuthContext, orgId: string, input: CreateProjectInput, ip: string) {
    requireScope(auth, 'projects:write')
    requireOrgRole(auth, orgId, 'member')
    // Absent or null (which a merge patch uses to remove it) is the empty document.
    const data = input.data === undefined || input.data === null ? {} : input.data
    checkDataSize(data)
    return db.transaction(async (tx) => {
      await deps.limits?.assertRoomFor(orgId, 'projects', tx)
      const project = await repository.insert(
        {
          id: newId('prj'),
          orgId,
          name: input.name,
          description: input.description ?? '',
          data,
          createdBy: auth.userId,
        },
        tx,
      )
      await record('project.created', project, auth, ip, tx)
      return project
    })
  }

  return {
    create: (auth: AuthContext, input: CreateProjectInput, ip: string) =>
      insert(auth, orgOrDefault(auth, input.orgId), input, ip),

    /** An export re-created as a new project; what the export says about its old identity is ignored. */
    import: (auth: AuthContext, orgId: string | undefined, input: CreateProjectInput, ip: string) =>
      insert(
        auth,
        orgOrDefault(auth, orgId),
        { name: input.name, description: input.description, data: input.data },
        ip,
      ),

    /**
     * A project the caller's orgs own, for other modules: they check their own scope (an API key
     * for documents needs `documents:read`, not `projects:read`).
     */
    async visible(auth: AuthContext, id: string) {
      const project = await repository.find(id, visibleOrgs(auth))
      if (!project) throw notFound()
      return project
    },

    async get(auth: AuthContext, id: string) {
      requireScope(auth, 'projects:read')
      const project = await repository.find(id, visibleOrgs(auth))
      if (!project) throw notFound()
      return project
    },

    async list(auth: AuthContext, input: ListProjectsInput) {
      requireScope(auth, 'projects:read')
      const orgIds = input.orgId ? (requireOrgRole(auth, input.orgId, 'viewer'), [input.orgId]) : visibleOrgs(auth)
      const sort = input.sort ?? 'updatedAt'
      const order = input.order ?? 'desc'
      const limit = input.limit ?? 20
      // The cursor is bound to the listing's filters and order; the org set is part of it because
      // an unfiltered listing spans the caller's memberships.
      const scope = createHash('sha256')
        .update(JSON.stringify([orgIds, input.q ?? null, sort, order]))
        .digest('base64url')
        .slice(0, 16)
      const after = sort === 'updatedAt' ? timestampCursorParam(input.cursor, scope) : cursorParam(input.cursor, scope)
      const rows = await repository.list({
        orgIds,
        ...(input.q ? { q: input.q } : {}),
        sort,
        order,
        after,
        limit: limit + 1,
      })
      const { data, nextCursor } = toPage(rows, limit, (row) => ({ k: row.sortKey, id: row.id, scope }))
      return { data: data.map(({ sortKey: _sortKey, ...summary }) => summary), nextCursor }
    },

    /**
     * Applies a merge patch under a row lock: concurrent writers queue, and each sees the version
     * the previous one committed, so with If-Match only the first of two racing writes succeeds.
     */
    async update(auth: AuthContext, id: string, patch: ProjectPatch, ifMatch: string | undefined, ip: string) {
      requireScope(auth, 'projects:write')
      return db.transaction(async (tx) => {
        const current = await repository.findForUpdate(id, visibleOrgs(auth), tx)
        if (!current) throw notFound()
        requireOrgRole(auth, current.orgId, 'member')
        if (!ifMatchSatisfied(ifMatch, etagOf(current.version))) throw stale()
        const next = {
          name: patch.name ?? current.name,
          description: patch.description === undefined ? current.description : (patch.description ?? ''),
          // Removing `data` altogether (null) leaves the empty document a new project starts with.
          data:
            patch.data === undefined ? current.data : patch.data === null ? {} : mergePatch(current.data, patch.data),
        }
        if (
          next.name === current.name &&
          next.description === current.description &&
          canonicalJson(next.data) === canonicalJson(current.data)
        ) {
          return current // nothing changed: no new version, no event
        }
        if (patch.data !== undefined) checkDataSize(next.data)
        const updated = await repository.update(id, next, tx)
        await record('project.updated', updated, auth, ip, tx)
        return updated
      })
    },

    async remove(auth: AuthContext, id: string, ifMatch: string | undefined, ip: string) {
      requireScope(auth, 'projects:write')
      await db.transaction(async (tx) => {
        const current = await repository.findForUpdate(id, visibleOrgs(auth), tx)
        if (!current) throw notFound()
        requireOrgRole(auth, current.orgId, 'member')
        if (!ifMatchSatisfied(ifMatch, etagOf(current.version))) throw stale()
        await repository.delete(id, tx)
        await record('project.deleted', current, auth, ip, tx)
      })
    },
  }
}

export type ProjectsService = ReturnType<typeof createProjectsService>
