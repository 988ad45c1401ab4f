import cors from '@fastify/cors'
import sensible from '@fastify/sensible'
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import helmet, { type HelmetOptions } from 'helmet'
import { type Config, corsOrigins } from '../config.js'
import { JsonBodyError, parseJsonBody } from '../lib/json.js'
import { HttpProblem } from '../lib/problem.js'
import { renderProblem } from './errors.js'

export const EXPOSED_HEADERS = [
  'ETag',
  'Idempotent-Replayed',
  'Location',
  'Retry-After',
  'RateLimit-Limit',
  'RateLimit-Remaining',
  'RateLimit-Reset',
  'X-Request-Id',
]

/**
 * Headers for JSON responses, per the OWASP REST Security Cheat Sheet: no content may be framed or
 * executed, no MIME sniffing, HTTPS only. Helmet's document-only headers (DNS prefetch, download
 * options, cross-domain policies, origin clustering, opener policy) say nothing to an API client
 * and each one costs time on every response; HTML pages (/docs) get helmet's full set.
 */
export const API_HELMET_OPTIONS: Readonly<HelmetOptions> = {
  contentSecurityPolicy: { useDefaults: false, directives: { defaultSrc: ["'none'"], frameAncestors: ["'none'"] } },
  frameguard: { action: 'deny' },
  crossOriginOpenerPolicy: false,
  originAgentCluster: false,
  referrerPolicy: false,
  xDnsPrefetchControl: false,
  xDownloadOptions: false,
  xPermittedCrossDomainPolicies: false,
  xXssProtection: false,
}

/**
 * The response headers helmet sets for a configuration, computed once. @fastify/helmet rebuilds
 * helmet's middleware and re-parses its CSP on every request, which measured as the most
 * expensive part of the request path (a bare route went from 54k to 23k req/s on one core); for a
 * fixed configuration the headers never change, so helmet runs once at start-up instead.
 */
export function helmetHeaders(options?: Readonly<HelmetOptions>): Record<string, string> {
  const headers: Record<string, string> = {}
  const recorder = {
    setHeader(name: string, value: number | string | readonly string[]) {
      headers[name.toLowerCase()] = Array.isArray(value) ? value.join(', ') : String(value)
    },
    removeHeader(name: string) {
      delete headers[name.toLowerCase()]
    },
  }
  helmet(options)({} as IncomingMessage, recorder as unknown as ServerResponse, () => {})
  return headers
}

/**
 * Cross-cutting request hygiene: security headers and the request id echo, CORS allow-list, the
 * hardened JSON parser and refusing new work while the process shuts down.
 */
async function securityPlugin(app: FastifyInstance, { config }: { config: Config }) {
  await app.register(sensible)

  // Routes that serve HTML (the /docs page) replace these with helmet's document headers.
  const securityHeaders = helmetHeaders(API_HELMET_OPTIONS)
  let closing = false
  // One callback-style hook on the hot path for every header each response carries, errors
  // included: an async hook costs a promise and a microtask, and a second hook (the request id
  // echo had one of its own) about 3% of a /health request.
  app.addHook('onRequest', (request, reply, done) => {
    reply.headers(securityHeaders)
    reply.header('x-request-id', request.id)
    if (!closing) return done()
    // Requests that arrive on kept-alive connections during shutdown are told to go elsewhere.
    reply
      .code(503)
      .header('connection', 'close')
      .header('retry-after', '1')
      .type('application/problem+json')
      .send(renderProblem(request, 503, 'SHUTTING_DOWN', 'The server is shutting down; retry the request.'))
  })

  const origins = corsOrigins(config.CORS_ORIGINS)
  const wildcard = origins.includes('*')
  // Without an allow-list there is nothing to answer: browsers refuse cross-origin reads by default.
  if (origins.length > 0) {
    await app.register(cors, {
      // A wildcard never goes together with credentials: browsers would refuse it, and it would let
      // any site act with a user's cookies if cookies were ever used.
      origin: wildcard ? '*' : origins,
      credentials: !wildcard,
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
  }

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

  let idleReaper: NodeJS.Timeout | undefined
  app.addHook('preClose', async () => {
    closing = true
    // Node closes idle keep-alive connections once, when closing starts; a connection whose request
    // finishes afterwards would stay open until its keep-alive timeout and stall shutdown.
    idleReaper = setInterval(() => app.server.closeIdleConnections(), 100).unref()
  })
  app.addHook('onClose', async () => clearInterval(idleReaper))
}

export default fp(securityPlugin, { name: 'security', fastify: '5.x', dependencies: ['errors'] })
