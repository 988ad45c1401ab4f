import { and, eq, lt, sql } from 'drizzle-orm'
import type { Executor } from '../db/client.js'
import { idempotencyKeys } from '../db/schema/index.js'

export type IdempotencyRow = typeof idempotencyKeys.$inferSelect

export interface KeyScope {
  principal: string
  route: string
  key: string
}

const where = (scope: KeyScope) =>
  and(
    eq(idempotencyKeys.principal, scope.principal),
    eq(idempotencyKeys.route, scope.route),
    eq(idempotencyKeys.key, scope.key),
  )

/** The only code that touches the idempotency_keys table. */
export function createIdempotencyStore(db: Executor) {
  return {
    /**
     * Takes the key for a request in one statement: a new key, an expired one, or one whose
     * request died mid-way (lease over) with the same body. Returns false when somebody else's
     * record stands; the caller then reads it.
     */
    async claim(scope: KeyScope, requestHash: string, leaseMs: number, ttlMs: number): Promise<boolean> {
      const lease = sql`now() + ${`${leaseMs} milliseconds`}::interval`
      const expiry = sql`now() + ${`${ttlMs} milliseconds`}::interval`
      const rows = await db
        .insert(idempotencyKeys)
        .values({ ...scope, requestHash, state: 'running', leaseExpiresAt: lease, expiresAt: expiry })
        .onConflictDoUpdate({
          target: [idempotencyKeys.principal, idempotencyKeys.route, idempotencyKeys.key],
          set: {
            requestHash,
            state: 'running',
            leaseExpiresAt: lease,
            expiresAt: expiry,
            createdAt: sql`now()`,
            responseStatus: null,
            responseHeaders: null,
            responseBody: null,
          },
          setWhere: sql`${idempotencyKeys.expiresAt} <= now() or (${idempotencyKeys.state} = 'running' and ${idempotencyKeys.leaseExpiresAt} <= now() and ${idempotencyKeys.requestHash} = ${requestHash})`,
        })
        .returning({ key: idempotencyKeys.key })
      return rows.length === 1
    },

    async find(scope: KeyScope): Promise<IdempotencyRow | null> {
      const [row] = await db.select().from(idempotencyKeys).where(where(scope))
      return row ?? null
    },

    async complete(scope: KeyScope, response: { status: number; headers: Record<string, string>; body: string }) {
      await db
        .update(idempotencyKeys)
        .set({
          state: 'completed',
          responseStatus: response.status,
          responseHeaders: response.headers,
          responseBody: response.body,
        })
        .where(and(where(scope), eq(idempotencyKeys.state, 'running')))
    },

    /** Forgets a key whose request failed on the server's side, so that a retry runs again. */
    async release(scope: KeyScope) {
      await db.delete(idempotencyKeys).where(and(where(scope), eq(idempotencyKeys.state, 'running')))
    },

    async deleteExpired(): Promise<void> {
      await db.delete(idempotencyKeys).where(lt(idempotencyKeys.expiresAt, sql`now()`))
    },
  }
}

export type IdempotencyStore = ReturnType<typeof createIdempotencyStore>
