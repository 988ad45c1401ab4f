import type { FastifyBaseLogger } from 'fastify'
import { LRUCache } from 'lru-cache'
import type { DatabaseHandle } from '../../db/client.js'
import type { Role } from './authorization.js'

export interface Memberships {
  roles: ReadonlyMap<string, Role>
  orgs: readonly { orgId: string; orgName: string; personal: boolean }[]
}

/** Announced by a trigger on the memberships table (migration 0004) for every committed change. */
const CHANNEL = 'backplane_memberships'

/**
 * The caller's memberships are needed on every authenticated request, and reading them is a
 * database round trip as expensive as the request's own work (it halved the throughput of a
 * project read). They are cached per user, for at most the TTL, and only while the database's
 * change notifications are being received: every committed change to a membership, made through
 * this API on any instance or directly in SQL, drops the user's entry on every instance. Changes
 * made through this instance are dropped synchronously as well, before the response is sent.
 * While the notification connection is down, nothing is cached.
 */
export async function createMembershipCache(options: {
  load: (userId: string) => Promise<Memberships>
  ttlMs: number
  database: Pick<DatabaseHandle, 'listen'>
  log: FastifyBaseLogger
}) {
  const { load, ttlMs, log } = options
  const cache = new LRUCache<string, Memberships>({
    max: 10_000,
    ttl: Math.max(1, ttlMs),
    // Concurrent misses for one user share a single query; an invalidation that lands while it
    // runs aborts it, so an older answer is never stored after a newer change.
    fetchMethod: (userId) => load(userId),
  })
  let listening = false
  const stopListening =
    ttlMs > 0
      ? await options.database.listen(CHANNEL, {
          // '*' follows a TRUNCATE: everybody's roles changed.
          onMessage: (userId) => (userId === '*' ? cache.clear() : cache.delete(userId)),
          onListening: (now) => {
            if (listening && !now) log.warn('membership change notifications lost; roles are read on every request')
            if (!listening && now) log.debug('membership change notifications flowing')
            listening = now
            cache.clear()
          },
        })
      : async () => {}

  return {
    async get(userId: string): Promise<Memberships> {
      if (!listening) return load(userId)
      // An invalidation that lands mid-fetch aborts it (the fetch rejects): read again, fresh. A
      // failed query fails again here and reaches the caller as itself.
      const memberships = (await cache.fetch(userId).catch(() => undefined)) ?? (await load(userId))
      // Nobody without memberships is kept: an account that disappears must not linger.
      if (memberships.roles.size === 0) cache.delete(userId)
      return memberships
    },

    /** Called after a membership change of `userId` has committed through this instance. */
    invalidate(userId: string): void {
      cache.delete(userId)
    },

    close: () => stopListening(),
  }
}

export type MembershipCache = Awaited<ReturnType<typeof createMembershipCache>>
