import type { FastifyInstance } from 'fastify'
import { integrationsRoutes } from './integrations-routes.js'

/** What operators and org admins see of the third-party services (the policies live in the integrations plugin). */
export async function integrationsModule(app: FastifyInstance) {
  await app.register(integrationsRoutes, { prefix: '/api/v1' })
}
