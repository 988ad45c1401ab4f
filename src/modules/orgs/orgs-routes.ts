import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'
import { ProblemResponse, problems } from '../../lib/problem.js'
import { trimEmailField } from '../auth/auth-schemas.js'
import { requireAuth, requireOrgRole, requireUserSession } from '../auth/authorization.js'
import { AddMemberBody, ChangeRoleBody, CreateOrgBody, MemberParams, OrgParams, PageQuery } from './orgs-schemas.js'

const ref = (id: string) => Type.Unsafe(Type.Ref(id))
const security = [{ bearer: [] }]
const errors = {
  400: ProblemResponse,
  401: ProblemResponse,
  403: ProblemResponse,
  404: ProblemResponse,
  429: ProblemResponse,
}

export const orgsRoutes: FastifyPluginAsyncTypebox = async (app) => {
  const orgs = app.orgsService

  app.post(
    '/orgs',
    {
      config: { rateLimit: { max: 30, timeWindow: 60_000 } },
      schema: {
        operationId: 'createOrg',
        tags: ['orgs'],
        summary: 'Create an organization; the caller becomes its owner',
        security,
        body: CreateOrgBody,
        response: { 201: ref('Org'), ...errors },
      },
    },
    async (request, reply) => {
      const org = await orgs.createOrg(requireUserSession(request), request.body.name, request.ip)
      return reply.code(201).header('location', `/api/v1/orgs/${org.id}`).send(org)
    },
  )

  app.get(
    '/orgs',
    {
      schema: {
        operationId: 'listOrgs',
        tags: ['orgs'],
        summary: 'Organizations the caller belongs to',
        security,
        querystring: PageQuery,
        response: { 200: ref('OrgList'), ...errors },
      },
    },
    async (request) => orgs.listOrgs(requireAuth(request), request.query.limit ?? 20, request.query.cursor),
  )

  app.get(
    '/orgs/:orgId/members',
    {
      schema: {
        operationId: 'listOrgMembers',
        tags: ['orgs'],
        summary: 'Members of an organization',
        security,
        params: OrgParams,
        querystring: PageQuery,
        response: { 200: ref('MemberList'), ...errors },
      },
    },
    async (request) =>
      orgs.listMembers(requireAuth(request), request.params.orgId, request.query.limit ?? 20, request.query.cursor),
  )

  app.post(
    '/orgs/:orgId/members',
    {
      preValidation: trimEmailField,
      schema: {
        operationId: 'addOrgMember',
        tags: ['orgs'],
        summary: 'Add an existing user, by email, with a role (admins; owners for the owner role)',
        security,
        params: OrgParams,
        body: AddMemberBody,
        response: { 201: ref('Member'), ...errors, 409: ProblemResponse },
      },
    },
    async (request, reply) => {
      const auth = requireUserSession(request)
      // Checked before the lookup, so outsiders cannot probe which emails have accounts.
      requireOrgRole(auth, request.params.orgId, 'admin')
      const userId = await app.authService.userIdByEmail(request.body.email)
      if (!userId) throw problems.notFound('No account uses this email.', 'USER_NOT_FOUND')
      const member = await orgs.addMember(auth, request.params.orgId, { userId, role: request.body.role }, request.ip)
      return reply.code(201).header('location', `/api/v1/orgs/${request.params.orgId}/members/${userId}`).send(member)
    },
  )

  app.patch(
    '/orgs/:orgId/members/:userId',
    {
      schema: {
        operationId: 'changeOrgMemberRole',
        tags: ['orgs'],
        summary: "Change a member's role (the last owner cannot be demoted)",
        security,
        params: MemberParams,
        body: ChangeRoleBody,
        response: { 200: ref('Member'), ...errors, 409: ProblemResponse },
      },
    },
    async (request) =>
      orgs.changeRole(
        requireUserSession(request),
        request.params.orgId,
        request.params.userId,
        request.body.role,
        request.ip,
      ),
  )

  app.delete(
    '/orgs/:orgId/members/:userId',
    {
      schema: {
        operationId: 'removeOrgMember',
        tags: ['orgs'],
        summary: 'Remove a member, or leave (the last owner cannot be removed)',
        security,
        params: MemberParams,
        response: { 204: Type.Null(), ...errors, 409: ProblemResponse },
      },
    },
    async (request, reply) => {
      await orgs.removeMember(requireUserSession(request), request.params.orgId, request.params.userId, request.ip)
      return reply.code(204).send(null)
    },
  )

  app.get(
    '/orgs/:orgId/audit-log',
    {
      schema: {
        operationId: 'listOrgAuditLog',
        tags: ['orgs'],
        summary: 'Security-relevant events of an organization, newest first (admins)',
        security,
        params: OrgParams,
        querystring: PageQuery,
        response: { 200: ref('AuditList'), ...errors },
      },
    },
    async (request) =>
      orgs.listAudit(requireAuth(request), request.params.orgId, request.query.limit ?? 20, request.query.cursor),
  )
}
