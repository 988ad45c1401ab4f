import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { Counter, Gauge, Histogram } from 'prom-client'
import { BurstyRateLimiter, RateLimiterMemory, RateLimiterRedis } from 'rate-limiter-flexible'
import { type Config, perService, SERVICES, type ServiceName } from '../config.js'
import { durationMs } from '../lib/duration.js'
import {
  type BreakerState,
  type Bucket,
  createServicePolicy,
  type PolicySettings,
  type PolicyStatus,
  type ServicePolicy,
} from '../lib/resilience.js'

export type { ServiceName }

export interface ServiceStatus extends PolicyStatus {
  service: ServiceName
  /** The server holds a credential for it (orgs may bring their own for the model providers). */
  configured: boolean
}

/** The one way out to third-party services: a policy per service, its state for operators. */
export interface Integrations {
  policy(service: ServiceName): ServicePolicy
  configured(service: ServiceName): boolean
  statuses(): ServiceStatus[]
}

declare module 'fastify' {
  interface FastifyInstance {
    integrations: Integrations
  }
}

const BUILT_IN_TIMEOUTS: Record<ServiceName, number> = { openai: 60_000, anthropic: 60_000, stripe: 20_000 }

/**
 * A token bucket per service as rate-limiter-flexible builds one: a steady rate per second plus
 * a burst allowance per 10 s (BurstyRateLimiter). Counted in Redis when there is one, so every
 * instance draws from the same bucket; in memory if Redis fails, rather than not at all.
 */
function bucketFor(app: FastifyInstance, perSecond: number, burst: number): Bucket | undefined {
  if (perSecond === 0) return undefined
  const steady = { points: perSecond, duration: 1, keyPrefix: 'integration-rate' }
  const extra = { points: burst, duration: 10, keyPrefix: 'integration-burst' }
  const store = (options: typeof steady) => {
    const memory = new RateLimiterMemory(options)
    return app.redis
      ? new RateLimiterRedis({ ...options, storeClient: app.redis, useRedisPackage: false, insuranceLimiter: memory })
      : memory
  }
  return burst > 0 ? new BurstyRateLimiter(store(steady), store(extra)) : store(steady)
}

async function integrationsPlugin(app: FastifyInstance, { config }: { config: Config }) {
  const log = app.log.child({ module: 'integrations' })
  const timeouts = perService(config.INTEGRATION_TIMEOUTS, durationMs)
  const rates = perService(config.INTEGRATION_RATE_LIMITS, (value) => value.split(':').map(Number) as [number, number])
  const credentials: Record<ServiceName, string | undefined> = {
    openai: config.OPENAI_API_KEY,
    anthropic: config.ANTHROPIC_API_KEY,
    stripe: config.STRIPE_SECRET_KEY,
  }

  const attempts = new Counter({
    name: 'integration_attempts_total',
    help: 'Attempts of third-party calls, by service, operation and outcome (success, client_error, rate_limited, server_error, timeout, connection_error, circuit_open, throttled, aborted)',
    labelNames: ['service', 'operation', 'outcome'] as const,
    registers: [app.metrics],
  })
  const latency = new Histogram({
    name: 'integration_attempt_duration_seconds',
    help: 'Time third-party attempts took (for streams: until the answer started), by service and operation',
    labelNames: ['service', 'operation'] as const,
    buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
    registers: [app.metrics],
  })
  const retries = new Counter({
    name: 'integration_retries_total',
    help: 'Retries scheduled after a failed third-party attempt, by service and operation',
    labelNames: ['service', 'operation'] as const,
    registers: [app.metrics],
  })
  const policies = new Map<ServiceName, ServicePolicy>()
  new Gauge({
    name: 'integration_circuit_open',
    help: "1 while a service's circuit is open (calls refused), 0.5 while half-open (probing), 0 when closed",
    labelNames: ['service'] as const,
    registers: [app.metrics],
    collect() {
      for (const [service, policy] of policies) {
        const state = policy.status().state
        this.set({ service }, state === 'open' ? 1 : state === 'half-open' ? 0.5 : 0)
      }
    },
  })

  for (const service of SERVICES) {
    const settings: PolicySettings = {
      timeoutMs: timeouts[service] ?? BUILT_IN_TIMEOUTS[service],
      maxRetries: config.INTEGRATION_MAX_RETRIES,
      baseDelayMs: durationMs(config.INTEGRATION_RETRY_BASE_DELAY),
      maxDelayMs: durationMs(config.INTEGRATION_RETRY_MAX_DELAY),
      breaker: {
        threshold: config.INTEGRATION_BREAKER_THRESHOLD,
        minimumCalls: config.INTEGRATION_BREAKER_MIN_CALLS,
        windowMs: durationMs(config.INTEGRATION_BREAKER_WINDOW),
        halfOpenAfterMs: durationMs(config.INTEGRATION_BREAKER_HALF_OPEN_AFTER),
      },
    }
    const [perSecond, burst] = rates[service] ?? [0, 0]
    policies.set(
      service,
      createServicePolicy({
        service,
        settings,
        bucket: bucketFor(app, perSecond, burst),
        onAttempt: ({ operation, attempt, outcome, status, latencyMs }) => {
          attempts.inc({ service, operation, outcome })
          if (outcome !== 'throttled' && outcome !== 'circuit_open') {
            latency.observe({ service, operation }, latencyMs / 1000)
          }
          const line = { service, operation, attempt, outcome, ...(status ? { status } : {}), latencyMs }
          if (outcome === 'success' || outcome === 'aborted') log.info(line, 'integration call')
          else log.warn(line, 'integration call failed')
        },
        onRetry: ({ operation, attempt, delayMs }) => {
          retries.inc({ service, operation })
          log.info({ service, operation, attempt, retryInMs: delayMs }, 'integration call retrying')
        },
        onStateChange: (state: BreakerState) => {
          const line = { service, state }
          if (state === 'open') log.error(line, 'integration circuit opened: calls are paused')
          else log.warn(line, `integration circuit ${state}`)
        },
      }),
    )
  }

  const integrations: Integrations = {
    policy: (service) => policies.get(service) as ServicePolicy,
    configured: (service) => credentials[service] !== undefined,
    statuses: () =>
      SERVICES.map((service) => ({
        service,
        configured: credentials[service] !== undefined,
        ...(policies.get(service) as ServicePolicy).status(),
      })),
  }
  app.decorate('integrations', integrations)
}

export default fp(integrationsPlugin, {
  name: 'integrations',
  fastify: '5.x',
  dependencies: ['observability', 'redis'],
})
