import type { FastifyInstance } from 'fastify'
import { createProjectsRepository } from './projects-repository.js'
import { projectsRoutes } from './projects-routes.js'
import { createProjectsService } from './projects-service.js'

/** Org-owned JSON documents under /api/v1/projects. */
export async function projectsModule(app: FastifyInstance) {
  const service = createProjectsService({
    db: app.db,
    repository: createProjectsRepository(app.db),
    outbox: app.outbox,
    orgs: app.orgsService,
  })
  await app.register(projectsRoutes(service), { prefix: '/api/v1' })
}
