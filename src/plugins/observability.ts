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

  // Set up front rather than in an onSend hook: every response, errors included, carries it.
  app.addHook('onRequest', (request, reply, done) => {
    reply.header('x-request-id', request.id)
    done()
  })

  // Label children are looked up once per (method, route, status), not hashed on every request.
  type Children = { count: ReturnType<typeof requests.labels>; duration: ReturnType<typeof duration.labels> }
  const children = new Map<string, Children>()
  const childrenFor = (method: string, route: string, status: string) => {
    const key = `${method} ${route} ${status}`
    let found = children.get(key)
    if (!found) {
      const labels = { method, route, status_code: status }
      found = { count: requests.labels(labels), duration: duration.labels(labels) }
      children.set(key, found)
    }
    return found
  }

  app.addHook('onResponse', (request, reply, done) => {
    const route = routeLabel(request)
    const metrics = childrenFor(request.method, route, String(reply.statusCode))
    metrics.count.inc()
    metrics.duration.observe(reply.elapsedTime / 1000)
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
    done()
  })
}

export default fp(observabilityPlugin, { name: 'observability', fastify: '5.x' })
