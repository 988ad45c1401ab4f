import swagger, { type FastifyDynamicSwaggerOptions } from '@fastify/swagger'
import swaggerUi from '@fastify/swagger-ui'
import type { FastifyInstance, RouteOptions } from 'fastify'
import fp from 'fastify-plugin'
import type { Config } from '../config.js'
import { helmetHeaders } from './security.js'

type JsonSchema = { type?: unknown; additionalProperties?: unknown; properties?: Record<string, unknown> }

/**
 * The API contract every route must state, because the OpenAPI document is generated from route
 * schemas and nothing else: an operationId, tags, a response schema per status, and input objects
 * that refuse unknown properties. Returns the violations; an empty list means the route conforms.
 */
export function routeContractViolations(route: Pick<RouteOptions, 'method' | 'url' | 'schema'>): string[] {
  const schema = route.schema as
    (Record<string, unknown> & { hide?: boolean; response?: Record<string, unknown>; tags?: unknown[] }) | undefined
  if (schema?.hide) return []
  const violations: string[] = []
  if (!schema) return ['has no schema']
  if (typeof schema.operationId !== 'string' || schema.operationId === '') violations.push('has no operationId')
  if (!Array.isArray(schema.tags) || schema.tags.length === 0) violations.push('has no tags')
  const statuses = Object.keys(schema.response ?? {})
  if (statuses.length === 0) violations.push('declares no response schemas')
  else if (!statuses.some((status) => /^[23]/.test(status))) violations.push('declares no success response')
  for (const part of ['body', 'querystring', 'params'] as const) {
    const input = schema[part] as JsonSchema | undefined
    if (input && input.type === 'object' && input.additionalProperties !== false) {
      violations.push(`${part} schema accepts unknown properties (set additionalProperties: false)`)
    }
  }
  return violations
}

/** OpenAPI 3.1 path items keyed by event name; the catalogue builds them as plain objects. */
type OpenApiWebhooks = NonNullable<Extract<FastifyDynamicSwaggerOptions['openapi'], { webhooks?: unknown }>['webhooks']>

async function openapiPlugin(
  app: FastifyInstance,
  { config, webhooks = {} }: { config: Config; webhooks?: Record<string, object> },
) {
  app.addHook('onRoute', (route) => {
    const violations = routeContractViolations(route)
    if (violations.length > 0) {
      throw new Error(`Route ${[route.method].flat().join(',')} ${route.url} ${violations.join('; ')}`)
    }
  })

  await app.register(swagger, {
    openapi: {
      openapi: '3.1.0',
      info: {
        title: 'Backplane API',
        version: '1.0.0',
        description:
          'Backend API for SaaS products: accounts and API keys, tenant-isolated projects, streamed AI chat, webhooks and billing. Errors are RFC 9457 problem+json.',
      },
      servers: [{ url: config.PUBLIC_URL }],
      tags: [
        { name: 'system', description: 'Liveness, readiness, metrics and discovery' },
        { name: 'auth', description: 'Accounts, sessions and token signing keys' },
        { name: 'api-keys', description: 'Scoped API keys for servers and scripts' },
        { name: 'orgs', description: 'Organizations, members, roles and the audit log' },
        { name: 'projects', description: 'Org-owned JSON documents with ETags, merge patches and idempotent writes' },
        {
          name: 'chat',
          description: 'AI answers streamed over Server-Sent Events, with fallback across providers, metered per org',
        },
        {
          name: 'webhooks',
          description:
            'Inbound provider events (verified, stored, then processed exactly once) and outbound endpoints; ' +
            'the events delivered to endpoints are listed under webhooks',
        },
        {
          name: 'integrations',
          description: 'Third-party services behind one resilience policy, and the keys orgs bring for them',
        },
        { name: 'billing', description: 'Plans and limits from Stripe subscriptions' },
      ],
      // Outbound events, as receivers see them; the catalogue lives with the modules that emit them.
      webhooks: webhooks as OpenApiWebhooks,
      components: {
        securitySchemes: {
          bearer: {
            type: 'http',
            scheme: 'bearer',
            description: 'An access token (JWT) or an API key',
          },
        },
      },
    },
    // Shared schemas keep their $id as the component name (`#/components/schemas/Problem`).
    refResolver: {
      buildLocalReference: (json, _baseUri, _fragment, index) => String(json.$id ?? `Schema${index}`),
    },
  })
  const documentHeaders = helmetHeaders()
  await app.register(swaggerUi, {
    routePrefix: '/docs',
    // The reference page is an HTML document: it gets helmet's full header set, and its own CSP.
    uiHooks: {
      onRequest: (_request, reply, done) => {
        reply.headers(documentHeaders)
        done()
      },
    },
    staticCSP: true,
    uiConfig: { deepLinking: true, defaultModelsExpandDepth: 1 },
  })
  app.get('/openapi.json', { schema: { hide: true }, config: { rateLimit: false } }, async () => app.swagger())
}

export default fp(openapiPlugin, { name: 'openapi', fastify: '5.x' })
