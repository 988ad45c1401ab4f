import type { FastifyInstance } from 'fastify'
import { orgsRoutes } from './orgs-routes.js'

/** Organizations, memberships and the audit log under /api/v1. */
export async function orgsModule(app: FastifyInstance) {
  await app.register(orgsRoutes, { prefix: '/api/v1' })
}
