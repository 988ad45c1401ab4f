import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'
import { ProblemResponse } from '../../lib/problem.js'
import { checkReadiness, type ReadinessProbe } from './system-service.js'

export interface SystemRoutesOptions {
  probes: ReadinessProbe[]
}

// Probes and scrapers poll these constantly from a few addresses; they are cheap and not limited.
const unlimited = { rateLimit: false } as const

export const systemRoutes: FastifyPluginAsyncTypebox<SystemRoutesOptions> = async (app, { probes }) => {
  app.get(
    '/health',
    {
      config: unlimited,
      schema: {
        operationId: 'getHealth',
        tags: ['system'],
        summary: 'Liveness: the process is up and serving (no I/O)',
        response: { 200: Type.Unsafe(Type.Ref('Health')) },
      },
    },
    // Synchronous: probes poll this constantly, and an async handler costs a promise and a microtask.
    () => ({ status: 'ok' as const }),
  )

  app.get(
    '/ready',
    {
      config: unlimited,
      schema: {
        operationId: 'getReadiness',
        tags: ['system'],
        summary: 'Readiness: dependencies reachable; 503 when a critical one is down',
        response: { 200: Type.Unsafe(Type.Ref('Readiness')), 503: Type.Unsafe(Type.Ref('Readiness')) },
      },
    },
    async (_request, reply) => {
      const readiness = await checkReadiness(probes)
      reply.header('cache-control', 'no-store')
      return reply.code(readiness.status === 'unhealthy' ? 503 : 200).send(readiness)
    },
  )

  app.get(
    '/metrics',
    {
      config: unlimited,
      schema: {
        operationId: 'getMetrics',
        tags: ['system'],
        summary: 'Prometheus metrics in the text exposition format',
        produces: ['text/plain'],
        response: { 200: Type.String({ description: 'Prometheus text format' }), 500: ProblemResponse },
      },
    },
    async (_request, reply) => {
      reply.type(app.metrics.contentType)
      return app.metrics.metrics()
    },
  )
}
