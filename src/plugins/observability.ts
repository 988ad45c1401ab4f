import type { FastifyInstance, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { Counter, collectDefaultMetrics, Histogram, Registry } from 'prom-client'

declare module 'fastify' {
  interface FastifyInstance {
    metrics: Registry
  }
  interface FastifyRequest {
    /** Set by authentication once the caller is known; appears on the completion log line. */
    userId: string | null
  }
}

/** Route pattern, never the raw URL: bounded label cardinality and no ids or secrets in metrics. */
function routeLabel(request: FastifyRequest): string {
  return request.routeOptions.url ?? 'unmatched'
}

/**
 * One completion log line per request and Prometheus metrics. Each app has its own registry, so
 * two apps in one process (tests, benchmarks) never share or double-register metrics.
 */
async function observabilityPlugin(app: FastifyInstance) {
  const registry = new Registry()
  collectDefaultMetrics({ register: registry })
  const requests = new Counter({
    name: 'http_requests_total',
    help: 'HTTP requests answered, by method, route pattern and status',
    labelNames: ['method', 'route', 'status_code'] as const,
    registers: [registry],
  })
  const duration = new Histogram({
    name: 'http_request_duration_seconds',
    help: 'Time to answer HTTP requests, by method, route pattern and status',
    labelNames: ['method', 'route', 'status_code'] as const,
    buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers: [registry],
  })
  app.decorate('metrics', registry)
  app.decorateRequest('userId', null)

  app.addHook('onSend', async (request, reply) => {
    reply.header('x-request-id', request.id)
  })

  app.addHook('onResponse', async (request, reply) => {
    const route = routeLabel(request)
    const labels = { method: request.method, route, status_code: String(reply.statusCode) }
    const seconds = reply.elapsedTime / 1000
    requests.inc(labels)
    duration.observe(labels, seconds)
    request.log.info(
      {
        method: request.method,
        route,
        statusCode: reply.statusCode,
        durationMs: Math.round(reply.elapsedTime * 100) / 100,
        ...(request.userId ? { userId: request.userId } : {}),
      },
      'request completed',
    )
  })
}

export default fp(observabilityPlugin, { name: 'observability', fastify: '5.x' })
