import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import type { AuthContext } from '../auth/authorization.js'
import { createProjectsRepository } from './projects-repository.js'
import { projectsRoutes } from './projects-routes.js'
import { createProjectsService } from './projects-service.js'

declare module 'fastify' {
  interface FastifyInstance {
    /** What other modules may ask of projects: one the caller's orgs own (404 otherwise); scopes are theirs to check. */
    projectsService: { get(auth: AuthContext, id: string): Promise<{ id: string; orgId: string }> }
  }
}

/**
 * Org-owned JSON documents under /api/v1/projects. Wrapped with fastify-plugin so that
 * `projectsService` is visible to the modules registered after it; its routes stay in their own context.
 */
async function projects(app: FastifyInstance) {
  const repository = createProjectsRepository(app.db)
  const service = createProjectsService({
    db: app.db,
    repository,
    outbox: app.outbox,
    orgs: app.orgsService,
    limits: app.billing,
  })
  app.billing.registerUsage('projects', (orgId, tx) => repository.countInOrg(orgId, tx))
  app.decorate('projectsService', { get: (auth: AuthContext, id: string) => service.visible(auth, id) })
  await app.register(projectsRoutes(service), { prefix: '/api/v1' })
}

export const projectsModule = fp(projects, {
  name: 'projects',
  fastify: '5.x',
  dependencies: ['outbox', 'auth', 'billing'],
})
