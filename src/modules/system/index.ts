import type { FastifyInstance } from 'fastify'
import { systemRoutes } from './system-routes.js'
import { SERVICES } from '../../config.js'
import { databaseProbe, integrationProbe, jobsProbe, type ReadinessProbe, redisProbe } from './system-service.js'

/** Operational endpoints at the root: /health, /ready, /metrics. */
export async function systemModule(app: FastifyInstance) {
  const probes: ReadinessProbe[] = [databaseProbe(app.database)]
  if (app.redis) probes.push(redisProbe(app.redis))
  probes.push(jobsProbe(app.jobs))
  for (const service of SERVICES) {
    if (!app.integrations.configured(service)) continue
    const policy = app.integrations.policy(service)
    probes.push(integrationProbe(service, () => policy.status()))
  }
  await app.register(systemRoutes, { probes })
}
