// First, before start-up leaves garbage to collect: see the module.
import './lib/tick-object-shape.js'
import type { Server } from 'node:http'
import AjvCompiler from '@fastify/ajv-compiler'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import Fastify, {
  type FastifyHttpOptions,
  type FastifyInstance,
  type FastifyServerOptions,
  LogController,
} from 'fastify'
import type { Redis } from 'ioredis'
import { type DestinationStream, pino } from 'pino'
import type { Config } from './config.js'
import type { DatabaseHandle } from './db/client.js'
import { requestIdGenerator } from './lib/ids.js'
import { logDestination } from './lib/log-destination.js'
import { requestLoggerFactory } from './lib/request-logger.js'
import { redactSecrets, redactUrl } from './lib/redact.js'
import { authSchemas } from './modules/auth/auth-schemas.js'
import { authModule } from './modules/auth/index.js'
import { billingLimitsPlugin, billingModule } from './modules/billing/index.js'
import { billingSchemas } from './modules/billing/billing-schemas.js'
import { integrationsModule } from './modules/integrations/index.js'
import { integrationSchemas } from './modules/integrations/integrations-schemas.js'
import { orgsModule } from './modules/orgs/index.js'
import { orgsSchemas } from './modules/orgs/orgs-schemas.js'
import { chatModule } from './modules/chat/index.js'
import { chatSchemas, conversationSchemas } from './modules/chat/chat-schemas.js'
import { documentSchemas } from './modules/chat/documents-schemas.js'
import { projectsModule } from './modules/projects/index.js'
import { projectsSchemas } from './modules/projects/projects-schemas.js'
import { systemModule } from './modules/system/index.js'
import { systemSchemas } from './modules/system/system-schemas.js'
import webhooksModule from './modules/webhooks/index.js'
import { endpointSchemas } from './modules/webhooks/endpoints-schemas.js'
import { webhookAdminSchemas } from './modules/webhooks/webhooks-admin-routes.js'
import { webhookReceiveSchemas } from './modules/webhooks/webhooks-routes.js'
import authPlugin from './plugins/auth.js'
import cryptoPlugin from './plugins/crypto.js'
import dbPlugin from './plugins/db.js'
import errorsPlugin from './plugins/errors.js'
import idempotencyPlugin from './plugins/idempotency.js'
import integrationsPlugin from './plugins/integrations.js'
import jobsPlugin from './plugins/jobs.js'
import observabilityPlugin from './plugins/observability.js'
import { eventWebhooksDocument } from './modules/events/catalogue.js'
import openapiPlugin from './plugins/openapi.js'
import outboxPlugin from './plugins/outbox.js'
import ssePlugin from './plugins/sse.js'
import rateLimitPlugin from './plugins/rate-limit.js'
import redisPlugin from './plugins/redis.js'
import securityPlugin from './plugins/security.js'

/** Dependencies a caller (a test, a benchmark) may supply instead of having them built from config. */
export interface AppOverrides {
  /** An already opened database; the app takes ownership and closes it. */
  database?: DatabaseHandle
  /** A Redis connection (for example to share one server between two app instances). */
  redis?: Redis | null
  /** Where log lines go (default: stdout). */
  logStream?: DestinationStream
}

type FlushableStream = DestinationStream & { flush?: () => void; flushSync?: () => void }

const REQUEST_ID = /^[\w.:-]{1,128}$/

type ValidatorFactory = NonNullable<
  NonNullable<NonNullable<FastifyServerOptions['schemaController']>['compilersFactory']>['buildValidator']
>
type AjvOptions = Parameters<ValidatorFactory>[1] & { customOptions?: Record<string, unknown> }

/**
 * Query strings and params arrive as text and are coerced to their declared types; JSON bodies
 * already carry types, so a body that sends "5" for a number is an error. Unknown properties are
 * rejected rather than silently stripped (Fastify's default), and every failure is reported.
 */
function partAwareValidator(): ValidatorFactory {
  const pool = AjvCompiler()
  return ((externalSchemas: never, ajvOptions: AjvOptions) => {
    const base = { ...ajvOptions?.customOptions, removeAdditional: false, allErrors: true }
    const coercing = pool(externalSchemas, { ...ajvOptions, customOptions: { ...base, coerceTypes: 'array' } } as never)
    const strict = pool(externalSchemas, { ...ajvOptions, customOptions: { ...base, coerceTypes: false } } as never)
    return (route: { httpPart?: string }) =>
      route.httpPart === 'body' ? strict(route as never) : coercing(route as never)
  }) as unknown as ValidatorFactory
}

/**
 * Errors as log objects, secrets redacted. Query builder errors carry the statement's parameters
 * (hashes, tokens, user data) as a property and inside their message (so in the stack too): the
 * SQL text stays, the values go.
 */
function serializeError(error: Error) {
  const serialized = redactSecrets(pino.stdSerializers.err(error))
  if (!('params' in serialized)) return serialized
  const query = (error as { query?: unknown }).query
  const message = typeof query === 'string' ? `Failed query: ${query}` : 'Failed query'
  return {
    ...serialized,
    message,
    stack: typeof serialized.stack === 'string' ? serialized.stack.replace(error.message, message) : serialized.stack,
    params: '[REDACTED]',
  }
}

export function fastifyOptions(config: Config, logStream: DestinationStream): FastifyHttpOptions<Server> {
  const newRequestId = requestIdGenerator()
  return {
    logger: {
      level: config.LOG_LEVEL,
      formatters: { log: redactSecrets },
      serializers: {
        req: (request) => ({ method: request.method, url: redactUrl(request.url), remoteAddress: request.ip }),
        // Errors from HTTP clients carry request configs (headers, bodies) among their properties.
        err: serializeError,
      },
      stream: logStream,
    },
    // One completion line per request is written by the observability plugin instead.
    logController: new LogController({ disableRequestLogging: true, requestIdLogLabel: 'requestId' }),
    requestIdHeader: false,
    // Each request's child logger is built only if something logs through it.
    childLoggerFactory: requestLoggerFactory,
    genReqId: (request) => {
      const offered = request.headers['x-request-id']
      return typeof offered === 'string' && REQUEST_ID.test(offered) ? offered : newRequestId()
    },
    // A number is a hop count (proxy-addr); Fastify's types omit it though the runtime accepts it.
    trustProxy: config.TRUST_PROXY as boolean,
    bodyLimit: config.BODY_LIMIT,
    // Slow clients cannot hold sockets: headers and the whole request must arrive in bounded time.
    requestTimeout: config.REQUEST_TIMEOUT_MS,
    connectionTimeout: config.CONNECTION_TIMEOUT_MS,
    keepAliveTimeout: config.KEEP_ALIVE_TIMEOUT_MS,
    http: {
      headersTimeout: Math.min(config.HEADERS_TIMEOUT_MS, config.REQUEST_TIMEOUT_MS),
      // How often Node checks those timeouts; its default (30 s) would let them overrun badly.
      connectionsCheckingInterval: Math.min(1000, Math.max(100, Math.floor(config.HEADERS_TIMEOUT_MS / 4))),
    },
    // The security plugin answers 503 problem+json itself while closing.
    return503OnClosing: false,
    forceCloseConnections: 'idle',
    routerOptions: { ignoreTrailingSlash: true, maxParamLength: 200 },
    schemaController: { compilersFactory: { buildValidator: partAwareValidator() } },
    // Plugins may open databases and apply migrations, which on a cold or busy machine can take
    // longer than Fastify's 10 s default; start-up stays bounded by the orchestrator's probes.
    pluginTimeout: 120_000,
  }
}

/**
 * Builds the whole application from config. The server, the worker, the tests and the benchmarks
 * all run exactly this; tests swap dependencies only through `overrides`.
 */
export async function buildApp(config: Config, overrides: AppOverrides = {}): Promise<FastifyInstance> {
  const logStream: FlushableStream = overrides.logStream ?? logDestination()
  const app = Fastify(fastifyOptions(config, logStream)).withTypeProvider<TypeBoxTypeProvider>()
  const flushTimer = logStream.flush
    ? setInterval(() => {
        try {
          logStream.flush?.()
        } catch {
          // a closed or broken stream: nothing more can be written
        }
      }, 1000).unref()
    : undefined
  app.addHook('onClose', async () => {
    clearInterval(flushTimer)
    try {
      logStream.flushSync?.()
    } catch {
      // a closed or broken stream: nothing more can be written
    }
  })

  await app.register(errorsPlugin)
  await app.register(observabilityPlugin)
  await app.register(openapiPlugin, { config, webhooks: eventWebhooksDocument() })
  await app.register(securityPlugin, { config })
  await app.register(redisPlugin, { config, ...(overrides.redis !== undefined ? { redis: overrides.redis } : {}) })
  await app.register(rateLimitPlugin, { config })
  await app.register(dbPlugin, { config, ...(overrides.database ? { database: overrides.database } : {}) })

  await app.register(cryptoPlugin, { config })
  await app.register(integrationsPlugin, { config })
  await app.register(billingLimitsPlugin, { config })
  await app.register(authPlugin, { config })
  await app.register(idempotencyPlugin)
  await app.register(outboxPlugin)
  await app.register(jobsPlugin, { config })
  await app.register(ssePlugin)

  // Named component schemas are global, like the OpenAPI document's one components section, so
  // that one module's responses can reference another's shapes (an Org carries a Role).
  for (const schema of [
    ...systemSchemas,
    ...authSchemas,
    ...orgsSchemas,
    ...projectsSchemas,
    ...webhookReceiveSchemas,
    ...webhookAdminSchemas,
    ...endpointSchemas,
    ...chatSchemas,
    ...conversationSchemas,
    ...documentSchemas,
    ...integrationSchemas,
    ...billingSchemas,
  ])
    app.addSchema(schema)

  await app.register(systemModule)
  await app.register(authModule)
  await app.register(orgsModule)
  await app.register(projectsModule)
  await app.register(integrationsModule, { config })
  await app.register(chatModule, { config })
  await app.register(webhooksModule, { config })
  await app.register(billingModule)

  return app
}
