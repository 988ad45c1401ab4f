import { createHash } from 'node:crypto'
import type { FastifyInstance, FastifyReply, FastifyRequest, RouteOptions } from 'fastify'
import fp from 'fastify-plugin'
import { Type } from 'typebox'
import { canonicalJson } from '../lib/json.js'
import { HttpProblem, problems } from '../lib/problem.js'
import { createIdempotencyStore, type KeyScope } from './idempotency-store.js'

declare module 'fastify' {
  interface FastifyContextConfig {
    /** Opt a POST or PATCH route into `Idempotency-Key` handling. */
    idempotency?: boolean
  }
  interface FastifyRequest {
    /** The key this request holds while it runs, if it sent one. */
    idempotencyClaim: KeyScope | null
  }
}

/** How long a completed response is replayed. */
export const IDEMPOTENCY_TTL_MS = 24 * 60 * 60_000
/**
 * How long a running request holds its key. A retry within it gets 409; after it (the first
 * request's process died), the retry runs. Longer than any request may take.
 */
export const IDEMPOTENCY_LEASE_MS = 5 * 60_000
const SWEEP_INTERVAL_MS = 60 * 60_000

/** The header of opted-in routes; spread into their `headers` schema so it is documented. */
export const IdempotencyKeyHeader = {
  'idempotency-key': Type.Optional(
    Type.String({
      minLength: 1,
      maxLength: 255,
      description:
        'Makes a retry safe: the same key with the same request replays the first response for 24 hours. ' +
        'The same key with another request is a 422; while the first still runs, a 409.',
    }),
  ),
}

// Replayed as they were; everything else (request id, rate-limit counters, dates) is per response.
const REPLAYED_HEADERS = ['content-type', 'location', 'etag', 'last-modified', 'cache-control']

/**
 * Idempotency keys (draft-ietf-httpapi-idempotency-key-header) for every route that sets
 * `config.idempotency`. The key is scoped to the caller and the route, and bound to a hash of the
 * request (method, URL, canonical body). The first request claims the key in the database; its
 * response (2xx-4xx) is stored before it is sent, so any retry that can see the response can
 * replay it. A 5xx releases the key: the change did not happen, and a retry should run again.
 *
 * Known limit: the change and the stored response are two commits. A process that dies between
 * them, or a database that refuses the second one three times, leaves a running claim; after its
 * lease a retry runs the request again.
 */
async function idempotencyPlugin(app: FastifyInstance) {
  const store = createIdempotencyStore(app.db)
  app.decorateRequest('idempotencyClaim', null)

  app.addHook('onRoute', (route: RouteOptions) => {
    if (!route.config?.idempotency) return
    assertDeclared(route)
    route.preHandler = [claimOrReplay, ...[route.preHandler ?? []].flat()]
    route.onSend = [storeResponse, ...[route.onSend ?? []].flat()]
  })

  async function claimOrReplay(request: FastifyRequest, reply: FastifyReply) {
    const key = request.headers['idempotency-key']
    // Without a caller there is no scope to store under; the route answers 401 itself.
    if (typeof key !== 'string' || !request.auth) return
    const scope: KeyScope = {
      principal: request.auth.apiKey ? request.auth.apiKey.id : request.auth.userId,
      route: `${request.method} ${request.routeOptions.url}`,
      key,
    }
    // The precondition is part of the request: the same body under another If-Match is another request.
    const requestHash = createHash('sha256')
      .update(`${request.method} ${request.url}\n${request.headers['if-match'] ?? ''}\n`)
      .update(canonicalJson(request.body ?? null))
      .digest('base64url')

    // A record can vanish between the claim and the read (expired and swept): claim again then.
    for (let attempt = 0; attempt < 2; attempt++) {
      if (await store.claim(scope, requestHash, IDEMPOTENCY_LEASE_MS, IDEMPOTENCY_TTL_MS)) {
        request.idempotencyClaim = scope
        return
      }
      const existing = await store.find(scope)
      if (!existing) continue
      if (existing.requestHash !== requestHash) {
        throw problems.unprocessable(
          'This Idempotency-Key was already used for a different request.',
          'IDEMPOTENCY_KEY_REUSED',
        )
      }
      if (existing.state === 'running') {
        throw new HttpProblem(409, 'IDEMPOTENCY_KEY_IN_USE', 'A request with this Idempotency-Key is still running.', {
          headers: { 'retry-after': '1' },
        })
      }
      request.log.debug({ idempotencyKey: key }, 'replaying a stored response')
      return reply
        .code(existing.responseStatus ?? 200)
        .headers({ ...existing.responseHeaders, 'idempotent-replayed': 'true' })
        .send(existing.responseBody ?? '')
    }
    throw problems.unavailable('The Idempotency-Key could not be claimed; retry.', 'IDEMPOTENCY_UNAVAILABLE', 1)
  }

  async function storeResponse(request: FastifyRequest, reply: FastifyReply, payload: unknown) {
    const scope = request.idempotencyClaim
    if (!scope) return payload
    request.idempotencyClaim = null
    const replayable = payload === null || payload === undefined || typeof payload === 'string'
    if (reply.statusCode >= 500 || !replayable) {
      await store.release(scope).catch((error) => request.log.warn({ err: error }, 'idempotency key not released'))
      return payload
    }
    const headers: Record<string, string> = {}
    for (const name of REPLAYED_HEADERS) {
      const value = reply.getHeader(name)
      if (value !== undefined) headers[name] = String(value)
    }
    // Awaited before sending: once the client holds the response, a retry must be able to replay it.
    const response = { status: reply.statusCode, headers, body: (payload as string | null) ?? '' }
    for (let attempt = 1; ; attempt++) {
      try {
        await store.complete(scope, response)
        break
      } catch (error) {
        if (attempt < 3) continue
        // The change is committed; the client still gets its real answer. The key stays claimed,
        // so a retry gets 409 until the lease ends and then runs again (the documented limit).
        request.log.error({ err: error }, 'idempotent response not stored')
        break
      }
    }
    return payload
  }

  // Expired keys are only dead weight (claims ignore them); a sweep keeps the table small.
  const sweeper = setInterval(() => {
    store.deleteExpired().catch((error) => app.log.warn({ err: error }, 'expired idempotency keys not swept'))
  }, SWEEP_INTERVAL_MS).unref()
  app.addHook('onClose', async () => clearInterval(sweeper))
}

/** An opted-in route must document the header and the two answers the plugin can give. */
function assertDeclared(route: RouteOptions) {
  const schema = route.schema as { headers?: { properties?: object }; response?: object } | undefined
  const missing = [
    ...(schema?.headers?.properties && 'idempotency-key' in schema.headers.properties
      ? []
      : ['the Idempotency-Key header']),
    ...['409', '422']
      .filter((status) => !(schema?.response && status in schema.response))
      .map((s) => `a ${s} response`),
  ]
  if (missing.length > 0) {
    throw new Error(
      `Route ${[route.method].flat().join(',')} ${route.url} opts into idempotency but lacks ${missing.join(', ')}`,
    )
  }
}

export default fp(idempotencyPlugin, { name: 'idempotency', fastify: '5.x', dependencies: ['db', 'auth'] })
