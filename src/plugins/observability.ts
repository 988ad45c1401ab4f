import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { collectDefaultMetrics, Registry } from 'prom-client'
import { RequestMetrics } from '../lib/request-metrics.js'
import { jsonHundredths, jsonString } from '../lib/json.js'
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

/** The label of requests no route matched: a fixed one, so no URL ever becomes a metric label. */
const UNMATCHED = 'unmatched'

type Hook = (request: FastifyRequest, reply: FastifyReply, done: () => void) => void

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

  // Labelled by route pattern, never the raw URL: bounded label cardinality and no ids or secrets
  // in metrics. The route's field of the line is serialised once per route.
  const complete = (request: FastifyRequest, reply: FastifyReply, route: string, routeMember: string) => {
    const elapsedMs = reply.elapsedTime
    const statusCode = reply.statusCode
    requests.record(request.method, route, statusCode, elapsedMs / 1000)
    // Every field is known and none is secret, so the line skips pino's generic serialisation.
    const members =
      `,"method":${jsonString(request.method)}${routeMember},"statusCode":${statusCode},"durationMs":${jsonHundredths(elapsedMs)}` +
      (request.userId ? `,"userId":${jsonString(request.userId)}` : '')
    if (!writeInfoLine(request.log, members, 'request completed'))
      request.log.info(
        {
          method: request.method,
          route,
          statusCode,
          durationMs: Math.round(elapsedMs * 100) / 100,
          ...(request.userId ? { userId: request.userId } : {}),
        },
        'request completed',
      )
  }

  // Each route gets its own completion hook that knows its pattern: Fastify's request.routeOptions
  // builds a dozen-property object on every call just to read it.
  app.addHook('onRoute', (route) => {
    const pattern = route.url
    const routeMember = `,"route":${jsonString(pattern)}`
    const onResponse: Hook = (request, reply, done) => {
      complete(request, reply, pattern, routeMember)
      done()
    }
    // First among the route's own hooks, so that none of them failing can cost the line; and a
    // new array, as the route's own may be shared with other routes (its HEAD twin among them).
    route.onResponse = [onResponse, ...(route.onResponse ? [route.onResponse].flat() : [])]
  })
  // Requests that matched no route (404, 405) have no route hooks.
  const unmatchedMember = `,"route":${jsonString(UNMATCHED)}`
  app.addHook('onResponse', (request, reply, done) => {
    if (request.is404) complete(request, reply, UNMATCHED, unmatchedMember)
    done()
  })
}

export default fp(observabilityPlugin, { name: 'observability', fastify: '5.x' })
