import { existsSync, readFileSync } from 'node:fs'
import { parseEnv } from 'node:util'
import { type Static, Type } from 'typebox'
import { Value } from 'typebox/value'
import { DURATION_LIST_PATTERN, DURATION_PATTERN, durationListMs, durationMs } from './lib/duration.js'

/** The third-party services every outbound call is attributed to. */
export const SERVICES = ['openai', 'anthropic', 'stripe'] as const
export type ServiceName = (typeof SERVICES)[number]
const SERVICE = `(${SERVICES.join('|')})`
const DURATION = '\\d+(\\.\\d+)?(ms|s|m|h|d)?'
const SERVICE_DURATIONS_PATTERN = `^\\s*${SERVICE}=${DURATION}(\\s*,\\s*${SERVICE}=${DURATION})*\\s*$`
const SERVICE_RATES_PATTERN = `^\\s*${SERVICE}=\\d+:\\d+(\\s*,\\s*${SERVICE}=\\d+:\\d+)*\\s*$`

/** `openai=60s,stripe=20s` as a map; a service left out keeps its built-in default. */
export function perService<T>(text: string, parse: (value: string) => T): Partial<Record<ServiceName, T>> {
  const entries = text
    .split(',')
    .map((part) => part.trim().split('='))
    .map(([name, value]) => [name as ServiceName, parse(value ?? '')] as const)
  return Object.fromEntries(entries)
}

/**
 * The one schema of the environment. Keys are the variable names themselves so that an error
 * message, the README table and .env.example all speak the same language.
 */
const Url = (description: string) => Type.String({ format: 'uri', pattern: '^[a-zA-Z][a-zA-Z0-9+.-]*://', description })
const Millis = (min: number, fallback: number, description: string) =>
  Type.Integer({ minimum: min, maximum: 3_600_000, default: fallback, description })

export const ConfigSchema = Type.Object({
  NODE_ENV: Type.Union([Type.Literal('development'), Type.Literal('production'), Type.Literal('test')], {
    default: 'development',
  }),
  PORT: Type.Integer({ minimum: 0, maximum: 65535, default: 3000, description: 'TCP port to listen on' }),
  HOST: Type.String({ minLength: 1, default: '0.0.0.0', description: 'Interface to bind' }),
  LOG_LEVEL: Type.Union(
    ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'].map((level) => Type.Literal(level)),
    { default: 'info' },
  ),
  DATA_DIR: Type.String({ minLength: 1, default: './data', description: 'Where the embedded database lives' }),
  DATABASE_URL: Type.Optional(
    Type.String({
      pattern: '^(postgres(ql)?://.+|memory://)$',
      description: 'postgres:// URL; unset for embedded PGlite under DATA_DIR; memory:// for a throwaway one',
    }),
  ),
  DATABASE_POOL_MAX: Type.Integer({ minimum: 1, maximum: 1000, default: 10 }),
  MIGRATE_ON_START: Type.Boolean({ default: false }),
  REDIS_URL: Type.Optional(Type.String({ pattern: '^rediss?://.+' })),
  PUBLIC_URL: Type.Optional(Url('Public base URL of this API (token issuer, webhook URLs)')),
  CORS_ORIGINS: Type.String({ default: '', description: 'Comma-separated allow-list of browser origins' }),
  TRUST_PROXY: Type.Union([Type.Boolean(), Type.Integer({ minimum: 0, maximum: 32 })], { default: false }),
  BODY_LIMIT: Type.Integer({ minimum: 1024, maximum: 100 * 1024 * 1024, default: 1024 * 1024 }),
  JSON_MAX_DEPTH: Type.Integer({ minimum: 2, maximum: 1000, default: 64 }),
  REQUEST_TIMEOUT_MS: Millis(100, 30_000, 'Time a client has to send a whole request'),
  HEADERS_TIMEOUT_MS: Millis(100, 15_000, 'Time a client has to send the request headers'),
  CONNECTION_TIMEOUT_MS: Millis(0, 0, 'Idle socket timeout (0: off; see README)'),
  KEEP_ALIVE_TIMEOUT_MS: Millis(100, 72_000, 'Keep-alive idle time, above any load balancer idle timeout'),
  SHUTDOWN_TIMEOUT_MS: Millis(100, 10_000, 'How long in-flight requests may finish on shutdown'),
  RATE_LIMIT_MAX: Type.Integer({ minimum: 1, default: 600, description: 'Requests per window per client' }),
  RATE_LIMIT_WINDOW_MS: Millis(100, 60_000, 'Rate-limit window'),
  MEMBERSHIP_CACHE_TTL_MS: Millis(
    0,
    5_000,
    "How long a user's org roles are reused between requests (0: read every time; see README)",
  ),
  AUTH_EXTERNAL_JWKS_URL: Type.Optional(Url('JWKS of an external identity provider')),
  AUTH_EXTERNAL_ISSUER: Type.Optional(Type.String({ minLength: 1 })),
  AUTH_EXTERNAL_AUDIENCE: Type.Optional(Type.String({ minLength: 1 })),
  OPENAI_API_KEY: Type.Optional(Type.String({ minLength: 1 })),
  OPENAI_BASE_URL: Type.Optional(Url('OpenAI-compatible server')),
  ANTHROPIC_API_KEY: Type.Optional(Type.String({ minLength: 1 })),
  ANTHROPIC_BASE_URL: Type.Optional(Url('Anthropic API base URL')),
  CHAT_DEFAULT_MODEL: Type.String({ minLength: 1, default: 'gpt-4o-mini' }),
  EMBEDDINGS_MODEL: Type.String({ minLength: 1, default: 'text-embedding-3-small' }),
  CHAT_FALLBACK_MODELS: Type.String({
    default: 'claude-haiku-4-5,gpt-4o-mini',
    description:
      'Models tried in turn when the requested one fails before its first token (comma-separated; claude-* models go to Anthropic, others to OpenAI)',
  }),
  CHAT_FIRST_TOKEN_TIMEOUT_MS: Millis(100, 30_000, 'How long a provider may take to send the first token'),
  CHAT_IDLE_TIMEOUT_MS: Millis(100, 30_000, 'How long a provider may pause between tokens'),
  CHAT_MAX_OUTPUT_TOKENS: Type.Integer({
    minimum: 1,
    maximum: 64_000,
    default: 1024,
    description: 'Longest answer, in tokens',
  }),
  CHAT_PROVIDER_MAX_RETRIES: Type.Integer({
    minimum: 0,
    maximum: 5,
    default: 1,
    description: 'Retries of a model call before its answer starts, before falling back to the next model',
  }),
  CHAT_DAILY_TOKEN_BUDGET: Type.Integer({
    minimum: 0,
    default: 1_000_000,
    description: "The free plan's tokens (input and output) per UTC day when BILLING_PLANS is unset; 0 for no budget",
  }),
  CHAT_MAX_CONCURRENT_STREAMS: Type.Integer({
    minimum: 1,
    maximum: 1000,
    default: 3,
    description: 'Answers one user may be streaming at once',
  }),
  CHAT_RATE_LIMIT_PER_MINUTE: Type.Integer({
    minimum: 1,
    maximum: 100_000,
    default: 10,
    description: 'Chat requests per user per minute',
  }),
  INTEGRATION_TIMEOUTS: Type.String({
    pattern: SERVICE_DURATIONS_PATTERN,
    default: 'openai=60s,anthropic=60s,stripe=20s',
    description:
      'How long one attempt of a third-party call may take, per service (for a streamed answer: until it starts)',
  }),
  INTEGRATION_RATE_LIMITS: Type.String({
    pattern: SERVICE_RATES_PATTERN,
    default: 'openai=50:500,anthropic=50:500,stripe=25:100',
    description:
      'Token bucket per service: requests per second, and the burst allowed on top per 10 s (0 for none); shared through Redis when REDIS_URL is set',
  }),
  INTEGRATION_MAX_RETRIES: Type.Integer({
    minimum: 0,
    maximum: 10,
    default: 3,
    description: 'Retries of an idempotent third-party call (and of any call answered 429)',
  }),
  INTEGRATION_RETRY_BASE_DELAY: Type.String({
    pattern: DURATION_PATTERN,
    default: '500ms',
    description: 'First retry backoff; doubles per attempt, with full jitter, unless the service sends Retry-After',
  }),
  INTEGRATION_RETRY_MAX_DELAY: Type.String({
    pattern: DURATION_PATTERN,
    default: '20s',
    description: 'Longest wait before a retry; a Retry-After longer than this fails the call at once',
  }),
  INTEGRATION_BREAKER_THRESHOLD: Type.Number({
    exclusiveMinimum: 0,
    exclusiveMaximum: 1,
    default: 0.5,
    description: "Share of a service's attempts failing (5xx, timeouts, no connection) that opens its circuit",
  }),
  INTEGRATION_BREAKER_MIN_CALLS: Type.Integer({
    minimum: 1,
    maximum: 1_000_000,
    default: 10,
    description: 'Attempts the breaker window must hold before it may open',
  }),
  INTEGRATION_BREAKER_WINDOW: Type.String({
    pattern: DURATION_PATTERN,
    default: '30s',
    description: 'How far back the breaker looks',
  }),
  INTEGRATION_BREAKER_HALF_OPEN_AFTER: Type.String({
    pattern: DURATION_PATTERN,
    default: '15s',
    description: 'How long an open circuit refuses calls before one probe may test the service again',
  }),
  STRIPE_SECRET_KEY: Type.Optional(Type.String({ minLength: 1 })),
  STRIPE_WEBHOOK_SECRET: Type.Optional(Type.String({ minLength: 1 })),
  STRIPE_API_URL: Type.Optional(
    Url('Stripe API base URL (a local stand-in such as stripe-mock); default api.stripe.com'),
  ),
  BILLING_PLANS: Type.Optional(
    Type.String({
      minLength: 2,
      description:
        'Plans as JSON: {"free":{"dailyTokens":100000,"projects":3,"members":3},"pro":{"priceId":"price_...","dailyTokens":5000000,"projects":100,"members":50}}; a limit left out is unlimited',
    }),
  ),
  BILLING_FREE_PLAN: Type.String({
    minLength: 1,
    default: 'free',
    description: 'The plan (without a price) of an org that has no entitled subscription',
  }),
  BILLING_RETURN_URL: Type.Optional(
    Url('Where Stripe Checkout and the customer portal send people back to (default: PUBLIC_URL)'),
  ),
  TWILIO_AUTH_TOKEN: Type.Optional(Type.String({ minLength: 1 })),
  META_APP_SECRET: Type.Optional(Type.String({ minLength: 1 })),
  META_VERIFY_TOKEN: Type.Optional(Type.String({ minLength: 1 })),
  ENCRYPTION_KEY: Type.Optional(
    Type.String({ pattern: '^[A-Za-z0-9+/]{43}=$', description: '32 random bytes, base64 (openssl rand -base64 32)' }),
  ),
  ENCRYPTION_KEY_RETIRED: Type.Optional(
    Type.String({
      pattern: '^[A-Za-z0-9+/]{43}=(,[A-Za-z0-9+/]{43}=)*$',
      description:
        'Previous encryption keys (comma-separated), still able to open what they sealed while `npm run keys:rotate-encryption` re-seals it',
    }),
  ),
  WEBHOOK_ALLOW_PRIVATE_TARGETS: Type.Boolean({ default: false }),
  WEBHOOK_RETRY_SCHEDULE: Type.String({
    pattern: DURATION_LIST_PATTERN,
    default: '0s,5s,5m,30m,2h,5h,10h,10h',
    description:
      'When each attempt of an outbound webhook delivery is made, counted from the failure before it (jitter added); the last entry is the last attempt',
  }),
  WEBHOOK_DELIVERY_TIMEOUT: Type.String({
    pattern: DURATION_PATTERN,
    default: '15s',
    description: 'How long one outbound webhook attempt may take, connecting and reading the answer included',
  }),
  WEBHOOK_DISABLE_AFTER_FAILING: Type.String({
    pattern: DURATION_PATTERN,
    default: '5d',
    description: 'An endpoint whose every delivery has failed for this long is disabled',
  }),
  WEBHOOK_DELIVERY_CONCURRENCY: Type.Integer({
    minimum: 1,
    maximum: 64,
    default: 8,
    description: 'Endpoints a worker process delivers to at the same time (each endpoint gets its events in order)',
  }),
  WORKERS: Type.Boolean({ default: true, description: 'Run queued jobs inside this process' }),
  INBOUND_WEBHOOK_RETRY_LIMIT: Type.Integer({
    minimum: 0,
    maximum: 20,
    default: 10,
    description: 'Retries of a failing inbound event handler before the event is dead',
  }),
  INBOUND_WEBHOOK_RETRY_DELAY_SECONDS: Type.Integer({
    minimum: 1,
    maximum: 3600,
    default: 10,
    description: 'First retry delay of a failing inbound event; doubles (with jitter) on each retry',
  }),
  INBOUND_WEBHOOK_TIMEOUT_SECONDS: Type.Integer({
    minimum: 1,
    maximum: 3600,
    default: 120,
    description:
      'How long one processing attempt of an inbound event may run; an attempt cut short by a dying worker is retried after it',
  }),
  JOBS_POLL_INTERVAL_MS: Type.Integer({
    minimum: 500,
    maximum: 60_000,
    default: 2000,
    description: 'How often idle workers look for new jobs',
  }),
  JOBS_MAINTENANCE_INTERVAL_SECONDS: Type.Integer({
    minimum: 1,
    maximum: 3600,
    default: 60,
    description: 'How often workers requeue timed-out jobs (their worker died) and prune finished ones',
  }),
})

export type Config = Static<typeof ConfigSchema> & { PUBLIC_URL: string }

/** What a plan allows an org; null is unlimited. */
export interface PlanLimits {
  dailyTokens: number | null
  projects: number | null
  members: number | null
}

export interface Plan extends PlanLimits {
  id: string
  /** The Stripe price that subscribes to it; none for the free plan. */
  priceId: string | null
}

const PlanSchema = Type.Object(
  {
    priceId: Type.Optional(Type.String({ pattern: '^price_\\w+$' })),
    dailyTokens: Type.Optional(Type.Union([Type.Integer({ minimum: 0 }), Type.Null()])),
    projects: Type.Optional(Type.Union([Type.Integer({ minimum: 0 }), Type.Null()])),
    members: Type.Optional(Type.Union([Type.Integer({ minimum: 1 }), Type.Null()])),
  },
  { additionalProperties: false },
)
const PlansSchema = Type.Record(Type.String({ pattern: '^[a-z0-9][a-z0-9_-]{0,39}$' }), PlanSchema, {
  additionalProperties: false,
})

/**
 * The plans of BILLING_PLANS; without it, one free plan whose daily tokens are
 * CHAT_DAILY_TOKEN_BUDGET (0: unlimited) and with no other limit.
 */
export function billingPlans(config: Pick<Config, 'BILLING_PLANS' | 'CHAT_DAILY_TOKEN_BUDGET'>): Plan[] {
  if (!config.BILLING_PLANS) {
    const dailyTokens = config.CHAT_DAILY_TOKEN_BUDGET > 0 ? config.CHAT_DAILY_TOKEN_BUDGET : null
    return [{ id: 'free', priceId: null, dailyTokens, projects: null, members: null }]
  }
  const parsed = JSON.parse(config.BILLING_PLANS) as Static<typeof PlansSchema>
  return Object.entries(parsed).map(([id, plan]) => ({
    id,
    priceId: plan.priceId ?? null,
    dailyTokens: plan.dailyTokens ?? null,
    projects: plan.projects ?? null,
    members: plan.members ?? null,
  }))
}

function checkPlans(config: Static<typeof ConfigSchema>): void {
  if (config.BILLING_PLANS !== undefined) {
    let parsed: unknown
    try {
      parsed = JSON.parse(config.BILLING_PLANS)
    } catch {
      throw new ConfigError(
        'BILLING_PLANS',
        'must be JSON, such as {"free":{"projects":3},"pro":{"priceId":"price_123"}}',
      )
    }
    if (!Value.Check(PlansSchema, parsed)) {
      const [first] = Value.Errors(PlansSchema, parsed)
      throw new ConfigError(
        'BILLING_PLANS',
        `is invalid at ${first?.instancePath || '/'}: ${first?.message ?? 'bad value'}`,
      )
    }
  }
  const plans = billingPlans(config)
  const free = plans.find((plan) => plan.id === config.BILLING_FREE_PLAN)
  if (!free)
    throw new ConfigError('BILLING_FREE_PLAN', `names no plan of BILLING_PLANS (${plans.map((p) => p.id).join(', ')})`)
  if (free.priceId) throw new ConfigError('BILLING_FREE_PLAN', 'must name a plan without a priceId')
  const prices = plans.flatMap((plan) => (plan.priceId ? [plan.priceId] : []))
  if (new Set(prices).size !== prices.length)
    throw new ConfigError('BILLING_PLANS', 'must not give two plans the same priceId')
}

export class ConfigError extends Error {
  constructor(
    readonly variable: string,
    readonly problem: string,
  ) {
    super(`Invalid configuration: ${variable} ${problem}`)
    this.name = 'ConfigError'
  }
}

const BOOLEAN_WORDS: Record<string, boolean> = { true: true, false: false, '1': true, '0': false, yes: true, no: false }

function describe(schema: Record<string, unknown>): string {
  if ('anyOf' in schema && Array.isArray(schema.anyOf)) {
    const literals = schema.anyOf.map((member: { const?: unknown }) => member.const).filter((v) => v !== undefined)
    if (literals.length === schema.anyOf.length) return `must be one of ${literals.join(', ')}`
    return 'must be true, false or a number'
  }
  switch (schema.type) {
    case 'integer': {
      const range = [schema.minimum, schema.maximum].every((v) => v !== undefined)
        ? ` between ${schema.minimum} and ${schema.maximum}`
        : ''
      return `must be an integer${range}`
    }
    case 'number':
      return `must be a number above ${schema.exclusiveMinimum ?? schema.minimum} and below ${schema.exclusiveMaximum ?? schema.maximum}`
    case 'boolean':
      return 'must be true or false'
    default:
      if (schema.format === 'uri') return 'must be an absolute URL'
      if (schema.pattern === DURATION_PATTERN) return 'must be a duration such as 500ms, 15s, 5m, 2h or 5d'
      if (schema.pattern === SERVICE_DURATIONS_PATTERN)
        return `must be a comma-separated list of service=duration, such as openai=60s,stripe=20s (services: ${SERVICES.join(', ')})`
      if (schema.pattern === SERVICE_RATES_PATTERN)
        return `must be a comma-separated list of service=perSecond:burst, such as openai=50:500 (services: ${SERVICES.join(', ')})`
      if (schema.pattern === DURATION_LIST_PATTERN)
        return 'must be a comma-separated list of durations such as 0s,5s,5m,2h'
      if (typeof schema.pattern === 'string') return `must match ${schema.pattern}`
      return 'must be a non-empty string'
  }
}

function coerce(schema: Record<string, unknown>, raw: string): unknown {
  const accepts = (type: string) =>
    schema.type === type ||
    (Array.isArray(schema.anyOf) && schema.anyOf.some((m: { type?: string }) => m.type === type))
  const trimmed = raw.trim()
  const numeric = /^-?\d+(\.\d+)?$/.test(trimmed)
  // A variable that takes a number or a boolean (TRUST_PROXY) reads "1" as a count, not as true.
  if ((accepts('integer') || accepts('number')) && numeric) return Number(trimmed)
  const lowered = trimmed.toLowerCase()
  if (accepts('boolean') && lowered in BOOLEAN_WORDS) return BOOLEAN_WORDS[lowered]
  return raw
}

/**
 * Reads the environment (plus `.env` in the working directory, whose values never override the real
 * environment), validates it against ConfigSchema and returns a typed config. The first problem
 * found throws a ConfigError whose message names the variable and never echoes its value, because
 * the value may be a secret.
 */
export function loadConfig(options: { env?: NodeJS.ProcessEnv; envFile?: string | false } = {}): Config {
  const fromFile: Record<string, string> = {}
  const envFile = options.envFile ?? '.env'
  if (envFile && existsSync(envFile)) Object.assign(fromFile, parseEnv(readFileSync(envFile, 'utf8')))
  const env = { ...fromFile, ...(options.env ?? process.env) }

  const values: Record<string, unknown> = {}
  for (const [name, property] of Object.entries(ConfigSchema.properties)) {
    const schema = property as unknown as Record<string, unknown>
    const raw = env[name]
    if (raw === undefined || raw.trim() === '') continue
    const value = coerce(schema, raw)
    if (!Value.Check(property, value)) throw new ConfigError(name, describe(schema))
    values[name] = value
  }
  const config = Value.Default(ConfigSchema, values) as Static<typeof ConfigSchema>
  if (!Value.Check(ConfigSchema, config)) {
    const [first] = Value.Errors(ConfigSchema, config)
    throw new ConfigError(first?.instancePath.slice(1) || 'environment', first?.message ?? 'is invalid')
  }

  const external = [config.AUTH_EXTERNAL_JWKS_URL, config.AUTH_EXTERNAL_ISSUER, config.AUTH_EXTERNAL_AUDIENCE]
  if (external.some(Boolean) && !external.every(Boolean)) {
    throw new ConfigError(
      'AUTH_EXTERNAL_JWKS_URL',
      'must be set together with AUTH_EXTERNAL_ISSUER and AUTH_EXTERNAL_AUDIENCE',
    )
  }
  for (const origin of corsOrigins(config.CORS_ORIGINS)) {
    if (origin !== '*' && !/^https?:\/\/[^/\s]+$/.test(origin)) {
      throw new ConfigError('CORS_ORIGINS', 'must be a comma-separated list of origins like https://app.example.com')
    }
  }
  if (config.NODE_ENV === 'production' && config.WEBHOOK_ALLOW_PRIVATE_TARGETS) {
    throw new ConfigError('WEBHOOK_ALLOW_PRIVATE_TARGETS', 'must not be true in production')
  }

  checkPlans(config)

  if (durationListMs(config.WEBHOOK_RETRY_SCHEDULE)[0] !== 0) {
    throw new ConfigError('WEBHOOK_RETRY_SCHEDULE', 'must start with 0 (the first attempt is made at once)')
  }
  const deliveryTimeoutMs = durationMs(config.WEBHOOK_DELIVERY_TIMEOUT)
  if (deliveryTimeoutMs < 100 || deliveryTimeoutMs > 300_000) {
    throw new ConfigError('WEBHOOK_DELIVERY_TIMEOUT', 'must be between 100ms and 5m')
  }
  if (durationMs(config.WEBHOOK_DISABLE_AFTER_FAILING) <= 0) {
    throw new ConfigError('WEBHOOK_DISABLE_AFTER_FAILING', 'must be longer than 0')
  }

  const port = config.PORT === 0 ? 3000 : config.PORT
  return { ...config, PUBLIC_URL: (config.PUBLIC_URL ?? `http://localhost:${port}`).replace(/\/+$/, '') }
}

export function corsOrigins(list: string): string[] {
  return list
    .split(',')
    .map((origin) => origin.trim())
    .filter(Boolean)
}
