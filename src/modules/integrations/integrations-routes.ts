import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'
import { ProblemResponse } from '../../lib/problem.js'
import { orgOrDefault, requireAuth, requireOrgRole } from '../auth/authorization.js'
import { IntegrationsQuery } from './integrations-schemas.js'

const ref = (id: string) => Type.Unsafe(Type.Ref(id))
const security = [{ bearer: [] }]
const errors = {
  400: ProblemResponse,
  401: ProblemResponse,
  403: ProblemResponse,
  404: ProblemResponse,
  429: ProblemResponse,
}

export const integrationsRoutes: FastifyPluginAsyncTypebox = async (app) => {
  app.get(
    '/integrations',
    {
      schema: {
        operationId: 'listIntegrations',
        tags: ['integrations'],
        summary: 'Third-party services: configured or not, circuit state, last success and failure, recent error rate',
        description:
          'For org owners and admins. Circuit state and error rates are those seen by the instance answering.',
        security,
        querystring: IntegrationsQuery,
        response: { 200: ref('IntegrationList'), ...errors },
      },
    },
    async (request) => {
      const auth = requireAuth(request)
      requireOrgRole(auth, orgOrDefault(auth, request.query.orgId), 'admin')
      return {
        data: app.integrations.statuses().map((status) => ({
          service: status.service,
          configured: status.configured,
          circuit: status.state,
          lastSuccessAt: status.lastSuccessAt?.toISOString() ?? null,
          lastFailureAt: status.lastFailureAt?.toISOString() ?? null,
          recentCalls: status.recentCalls,
          recentErrorRate: status.recentErrorRate,
        })),
      }
    },
  )
}
