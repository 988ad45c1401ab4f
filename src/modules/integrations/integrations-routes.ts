import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { FastifyInstance } from 'fastify'
import { Type } from 'typebox'
import { ProblemResponse } from '../../lib/problem.js'
import { orgOrDefault, requireAuth, requireOrgRole, requireScope, requireUserSession } from '../auth/authorization.js'
import type { CredentialsService } from './credentials-service.js'
import { CredentialBody, CredentialParams, IntegrationsQuery } from './integrations-schemas.js'

const ref = (id: string) => Type.Unsafe(Type.Ref(id))
const security = [{ bearer: [] }]
const errors = {
  400: ProblemResponse,
  401: ProblemResponse,
  403: ProblemResponse,
  404: ProblemResponse,
  429: ProblemResponse,
}

export function integrationsRoutes(app: FastifyInstance, credentials: CredentialsService): FastifyPluginAsyncTypebox {
  return async (routes) => {
    routes.get(
      '/integrations',
      {
        schema: {
          operationId: 'listIntegrations',
          tags: ['integrations'],
          summary:
            "Third-party services: configured or not, the org's own key, circuit state, last success and failure, recent error rate",
          description:
            'For org owners and admins (API keys: orgs:read). Circuit state and error rates are those seen by the instance answering.',
          security,
          querystring: IntegrationsQuery,
          response: { 200: ref('IntegrationList'), ...errors },
        },
      },
      async (request) => {
        const auth = requireAuth(request)
        requireScope(auth, 'orgs:read')
        const orgId = orgOrDefault(auth, request.query.orgId)
        requireOrgRole(auth, orgId, 'admin')
        const own = new Map((await credentials.list(auth, orgId)).map((credential) => [credential.service, credential]))
        return {
          data: app.integrations.statuses().map((status) => {
            const credential = own.get(status.service as never)
            return {
              service: status.service,
              configured: status.configured,
              orgCredential: credential ? { lastFour: credential.lastFour, setAt: credential.setAt } : null,
              circuit: status.state,
              lastSuccessAt: status.lastSuccessAt?.toISOString() ?? null,
              lastFailureAt: status.lastFailureAt?.toISOString() ?? null,
              recentCalls: status.recentCalls,
              recentErrorRate: status.recentErrorRate,
            }
          }),
        }
      },
    )

    routes.put(
      '/orgs/:orgId/integrations/:service',
      {
        config: { rateLimit: { max: 20, timeWindow: 60_000 } },
        schema: {
          operationId: 'setOrgCredential',
          tags: ['integrations'],
          summary: "Store the org's own API key for a model provider, used for its chats and embeddings (org admins)",
          description:
            'The key is checked with a cheap call to the provider first (422 INVALID_CREDENTIAL when refused), stored encrypted, and never returned: only its last four characters.',
          security,
          params: CredentialParams,
          body: CredentialBody,
          response: {
            200: ref('OrgCredential'),
            ...errors,
            422: ProblemResponse,
            502: ProblemResponse,
            503: ProblemResponse,
          },
        },
      },
      async (request) => {
        const auth = requireUserSession(request)
        return credentials.set(auth, request.params.orgId, request.params.service, request.body.apiKey)
      },
    )

    routes.delete(
      '/orgs/:orgId/integrations/:service',
      {
        schema: {
          operationId: 'deleteOrgCredential',
          tags: ['integrations'],
          summary: "Remove the org's own key: its chats and embeddings use the server's key again (org admins)",
          security,
          params: CredentialParams,
          response: { 204: Type.Null(), ...errors },
        },
      },
      async (request, reply) => {
        const auth = requireUserSession(request)
        await credentials.remove(auth, request.params.orgId, request.params.service)
        return reply.code(204).send(null)
      },
    )
  }
}
