import cors from '@fastify/cors'
import helmet from '@fastify/helmet'
import sensible from '@fastify/sensible'
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { type Config, corsOrigins } from '../config.js'
import { JsonBodyError, parseJsonBody } from '../lib/json.js'
import { HttpProblem } from '../lib/problem.js'
import { renderProblem } from './errors.js'

export const EXPOSED_HEADERS = [
  'ETag',
  'Location',
  'Retry-After',
  'RateLimit-Limit',
  'RateLimit-Remaining',
  'RateLimit-Reset',
  'X-Request-Id',
]

/**
 * Cross-cutting request hygiene: security headers, CORS allow-list, the hardened JSON parser and
 * refusing new work while the process shuts down.
 */
async function securityPlugin(app: FastifyInstance, { config }: { config: Config }) {
  await app.register(sensible)
  await app.register(helmet, { global: true })

  const origins = corsOrigins(config.CORS_ORIGINS)
  const wildcard = origins.includes('*')
  await app.register(cors, {
    // A wildcard never goes together with credentials: browsers would refuse it, and it would let
    // any site act with a user's cookies if cookies were ever used.
    origin: wildcard ? '*' : origins.length > 0 ? origins : false,
    credentials: !wildcard && origins.length > 0,
    methods: ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE'],
    allowedHeaders: [
      'Authorization',
      'Content-Type',
      'Idempotency-Key',
      'If-Match',
      'If-None-Match',
      'Last-Event-ID',
      'X-Request-Id',
    ],
    exposedHeaders: EXPOSED_HEADERS,
    maxAge: 600,
  })

  const jsonParser = (
    _request: unknown,
    body: string | Buffer,
    done: (error: Error | null, body?: unknown) => void,
  ) => {
    try {
      done(null, parseJsonBody(body.toString(), config.JSON_MAX_DEPTH))
    } catch (error) {
      if (error instanceof JsonBodyError) done(new HttpProblem(400, error.code, error.message))
      else done(error as Error)
    }
  }
  // Only JSON by default: modules that take other formats (webhooks) register their own parsers.
  app.removeContentTypeParser(['application/json', 'text/plain'])
  app.addContentTypeParser('application/json', { parseAs: 'string' }, jsonParser)
  app.addContentTypeParser(/^application\/[\w.+-]+\+json$/, { parseAs: 'string' }, jsonParser)

  let closing = false
  let idleReaper: NodeJS.Timeout | undefined
  app.addHook('preClose', async () => {
    closing = true
    // Node closes idle keep-alive connections once, when closing starts; a connection whose request
    // finishes afterwards would stay open until its keep-alive timeout and stall shutdown.
    idleReaper = setInterval(() => app.server.closeIdleConnections(), 100).unref()
  })
  app.addHook('onClose', async () => clearInterval(idleReaper))
  app.addHook('onRequest', async (request, reply) => {
    if (!closing) return
    // Requests that arrive on kept-alive connections during shutdown are told to go elsewhere.
    reply
      .code(503)
      .header('connection', 'close')
      .header('retry-after', '1')
      .type('application/problem+json')
      .send(renderProblem(request, 503, 'SHUTTING_DOWN', 'The server is shutting down; retry the request.'))
    return reply
  })
}

export default fp(securityPlugin, { name: 'security', fastify: '5.x', dependencies: ['errors'] })
