import type { FastifyInstance } from 'fastify'
import { systemRoutes } from './system-routes.js'
import { databaseProbe, jobsProbe, type ReadinessProbe, redisProbe } from './system-service.js'

/** Operational endpoints at the root: /health, /ready, /metrics. */
export async function systemModule(app: FastifyInstance) {
  const probes: ReadinessProbe[] = [databaseProbe(app.database)]
  if (app.redis) probes.push(redisProbe(app.redis))
  probes.push(jobsProbe(app.jobs))
  await app.register(systemRoutes, { probes })
}
