import { createHash } from 'node:crypto'
import type { Redis } from 'ioredis'
import { RateLimiterMemory, RateLimiterRedis, RateLimiterRes } from 'rate-limiter-flexible'

export const LOGIN_ATTEMPTS_PER_WINDOW = 10
export const LOGIN_WINDOW_SECONDS = 15 * 60

export interface LoginThrottle {
  consume(email: string): Promise<{ allowed: true } | { allowed: false; retryAfterSeconds: number }>
  reset(email: string): Promise<void>
}

/**
 * At most 10 sign-in attempts per account per 15 minutes (OWASP Authentication Cheat Sheet). Counts
 * live in Redis when configured, shared by every instance, with an in-memory fallback while Redis
 * is unreachable; accounts are keyed by a hash so that Redis holds no email addresses.
 */
export function createLoginThrottle(redis: Redis | null): LoginThrottle {
  const options = { points: LOGIN_ATTEMPTS_PER_WINDOW, duration: LOGIN_WINDOW_SECONDS, keyPrefix: 'backplane:login' }
  const memory = new RateLimiterMemory(options)
  const limiter = redis
    ? new RateLimiterRedis({ ...options, storeClient: redis, useRedisPackage: false, insuranceLimiter: memory })
    : memory
  const key = (email: string) => createHash('sha256').update(email).digest('base64url')
  return {
    async consume(email) {
      try {
        await limiter.consume(key(email))
        return { allowed: true }
      } catch (rejection) {
        if (rejection instanceof RateLimiterRes) {
          return { allowed: false, retryAfterSeconds: Math.max(1, Math.ceil(rejection.msBeforeNext / 1000)) }
        }
        throw rejection
      }
    },
    async reset(email) {
      await limiter.delete(key(email))
    },
  }
}
