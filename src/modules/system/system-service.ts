import type { Redis } from 'ioredis'
import type { DatabaseHandle } from '../../db/client.js'
import type { Jobs } from '../../plugins/jobs.js'
import type { Readiness, ServiceCheck } from './system-schemas.js'

export interface ReadinessProbe {
  name: string
  /** A failing critical probe makes the instance unready (503); others only degrade it. */
  critical: boolean
  check(): Promise<ServiceCheck>
}

async function timed(run: () => Promise<unknown>): Promise<ServiceCheck> {
  const started = performance.now()
  try {
    await run()
    return { status: 'healthy', latencyMs: Math.round((performance.now() - started) * 100) / 100 }
  } catch {
    // The reason stays in the logs of the failing component; the probe only says it is down.
    return {
      status: 'unhealthy',
      latencyMs: Math.round((performance.now() - started) * 100) / 100,
      message: 'unreachable',
    }
  }
}

export function databaseProbe(database: DatabaseHandle, timeoutMs = 2000): ReadinessProbe {
  return { name: 'database', critical: true, check: () => timed(() => database.ping(timeoutMs)) }
}

export function redisProbe(redis: Redis, timeoutMs = 1000): ReadinessProbe {
  return {
    name: 'redis',
    critical: false,
    check: () =>
      timed(() =>
        Promise.race([
          redis.ping(),
          new Promise((_, reject) => setTimeout(() => reject(new Error('timeout')), timeoutMs).unref()),
        ]),
      ),
  }
}

/**
 * The job queue: its depth, and the dead-letter count, which degrades readiness (someone must
 * look at them) without taking the instance out of rotation.
 */
export function jobsProbe(jobs: Pick<Jobs, 'counts'>): ReadinessProbe {
  return {
    name: 'jobs',
    critical: false,
    async check() {
      const started = performance.now()
      const latencyMs = () => Math.round((performance.now() - started) * 100) / 100
      try {
        const { queued, dead } = await jobs.counts()
        return dead > 0
          ? { status: 'degraded', latencyMs: latencyMs(), queued, dead, message: 'dead-lettered jobs need attention' }
          : { status: 'healthy', latencyMs: latencyMs(), queued, dead }
      } catch {
        return { status: 'unhealthy', latencyMs: latencyMs(), message: 'unreachable' }
      }
    },
  }
}

/**
 * A configured third-party service: degraded while its circuit is open (its calls are refused,
 * so the features that need it fail fast), never unready: the API serves everything else.
 */
export function integrationProbe(
  service: string,
  status: () => { state: string; recentErrorRate: number },
): ReadinessProbe {
  return {
    name: service,
    critical: false,
    async check() {
      const { state, recentErrorRate } = status()
      if (state === 'open')
        return { status: 'degraded', message: 'circuit open: calls are paused after repeated failures' }
      if (state === 'half-open') return { status: 'degraded', message: 'circuit half-open: probing the service' }
      return recentErrorRate > 0
        ? { status: 'healthy', message: `recent error rate ${recentErrorRate}` }
        : { status: 'healthy' }
    },
  }
}

export async function checkReadiness(probes: ReadinessProbe[]): Promise<Readiness> {
  const results = await Promise.all(probes.map(async (probe) => [probe, await probe.check()] as const))
  let status: Readiness['status'] = 'healthy'
  for (const [probe, result] of results) {
    if (result.status === 'healthy') continue
    if (probe.critical && result.status === 'unhealthy') status = 'unhealthy'
    else if (status === 'healthy') status = 'degraded'
  }
  return {
    status,
    timestamp: new Date().toISOString(),
    services: Object.fromEntries(results.map(([probe, result]) => [probe.name, result])),
  }
}
