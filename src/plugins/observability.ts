import type { FastifyInstance, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { collectDefaultMetrics, Registry } from 'prom-client'
import { RequestMetrics } from '../lib/request-metrics.js'
import { jsonString } from '../lib/json.js'
import { writeInfoLine } from '../lib/request-logger.js'

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
  const requests = new RequestMetrics(
    registry,
    {
      counter: 'http_requests_total',
      counterHelp: 'HTTP requests answered, by method, route pattern and status',
      histogram: 'http_request_duration_seconds',
      histogramHelp: 'Time to answer HTTP requests, by method, route pattern and status',
    },
    [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
  )
  app.decorate('metrics', registry)
  app.decorateRequest('userId', null)

  // Set up front rather than in an onSend hook: every response, errors included, carries it.
  app.addHook('onRequest', (request, reply, done) => {
    reply.header('x-request-id', request.id)
    done()
  })

  app.addHook('onResponse', (request, reply, done) => {
    const route = routeLabel(request)
    const elapsedMs = reply.elapsedTime
    const statusCode = reply.statusCode
    const durationMs = Math.round(elapsedMs * 100) / 100
    requests.record(request.method, route, statusCode, elapsedMs / 1000)
    // Every field is known and none is secret, so the line skips pino's generic serialisation.
    const members =
      `,"method":${jsonString(request.method)},"route":${jsonString(route)},"statusCode":${statusCode},"durationMs":${durationMs}` +
      (request.userId ? `,"userId":${jsonString(request.userId)}` : '')
    if (!writeInfoLine(request.log, members, 'request completed'))
      request.log.info(
        {
          method: request.method,
          route,
          statusCode,
          durationMs,
          ...(request.userId ? { userId: request.userId } : {}),
        },
        'request completed',
      )
    done()
  })
}

export default fp(observabilityPlugin, { name: 'observability', fastify: '5.x' })
