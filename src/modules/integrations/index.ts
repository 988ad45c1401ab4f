import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import type { Config } from '../../config.js'
import { createCredentialsRepository } from './credentials-repository.js'
import { createCredentialsService, type OrgKeys } from './credentials-service.js'
import { integrationsRoutes } from './integrations-routes.js'

declare module 'fastify' {
  interface FastifyInstance {
    /** The keys an org brought for the model providers (chat and embeddings use them instead of the server's). */
    orgCredentials: { keysFor(orgId: string): Promise<OrgKeys> }
  }
}

/**
 * What operators and org admins see of the third-party services (the policies live in the
 * integrations plugin), and the keys orgs bring. Wrapped with fastify-plugin so that
 * `orgCredentials` is visible to chat, registered after it; the routes stay in their own context.
 */
async function integrations(app: FastifyInstance, { config }: { config: Config }) {
  const credentials = createCredentialsService({
    repository: createCredentialsRepository(app.db),
    cryptoBox: app.cryptoBox,
    config,
    policy: (service) => app.integrations.policy(service),
    log: app.log.child({ module: 'integrations' }),
  })
  app.decorate('orgCredentials', { keysFor: (orgId: string) => credentials.keysFor(orgId) })
  await app.register(integrationsRoutes(app, credentials), { prefix: '/api/v1' })
}

export const integrationsModule = fp(integrations, {
  name: 'integrations-module',
  fastify: '5.x',
  dependencies: ['integrations', 'crypto', 'auth'],
})
