import { and, asc, eq, gt, inArray, or, sql } from 'drizzle-orm'
import type { Executor } from '../../db/client.js'
import { webhookEndpoints } from '../../db/schema/index.js'
import type { Cursor } from '../../lib/cursor.js'

export type EndpointRow = typeof webhookEndpoints.$inferSelect

/** The only code that touches the webhook_endpoints table. */
export function createEndpointsRepository(db: Executor) {
  return {
    async insert(values: typeof webhookEndpoints.$inferInsert, tx: Executor = db): Promise<EndpointRow> {
      const [row] = await tx.insert(webhookEndpoints).values(values).returning()
      return row as EndpointRow
    },

    /** Only within `orgIds`: an endpoint of another org does not exist for this caller. */
    async find(id: string, orgIds: string[], tx: Executor = db): Promise<EndpointRow | null> {
      if (orgIds.length === 0) return null
      const [row] = await tx
        .select()
        .from(webhookEndpoints)
        .where(and(eq(webhookEndpoints.id, id), inArray(webhookEndpoints.orgId, orgIds)))
      return row ?? null
    },

    async lock(id: string, tx: Executor): Promise<EndpointRow | null> {
      const [row] = await tx.select().from(webhookEndpoints).where(eq(webhookEndpoints.id, id)).for('update')
      return row ?? null
    },

    async update(
      id: string,
      values: Partial<Omit<typeof webhookEndpoints.$inferInsert, 'id' | 'orgId' | 'createdBy' | 'createdAt'>>,
      tx: Executor = db,
    ): Promise<EndpointRow> {
      const [row] = await tx
        .update(webhookEndpoints)
        .set({ ...values, updatedAt: sql`clock_timestamp()` })
        .where(eq(webhookEndpoints.id, id))
        .returning()
      return row as EndpointRow
    },

    /**
     * Starts the endpoint's delivery history afresh (it was enabled by hand or points elsewhere now):
     * no failing streak, no pause a receiver asked for. A lease a worker holds stays.
     */
    async resetDeliveryState(id: string, tx: Executor = db): Promise<void> {
      await tx
        .update(webhookEndpoints)
        .set({
          failingSince: null,
          deliveryLeaseUntil: sql`case when ${webhookEndpoints.deliveryLeaseToken} is null then null else ${webhookEndpoints.deliveryLeaseUntil} end`,
        })
        .where(eq(webhookEndpoints.id, id))
    },

    async delete(id: string, tx: Executor = db): Promise<void> {
      await tx.delete(webhookEndpoints).where(eq(webhookEndpoints.id, id))
    },

    /** Oldest first; ids are UUIDv7, so (createdAt, id) is the keyset. */
    async list(orgId: string, limit: number, after: Cursor | null, tx: Executor = db) {
      const keyset = after
        ? or(
            gt(webhookEndpoints.createdAt, sql`${after.k}::timestamptz`),
            and(eq(webhookEndpoints.createdAt, sql`${after.k}::timestamptz`), gt(webhookEndpoints.id, after.id)),
          )
        : undefined
      return tx
        .select({ endpoint: webhookEndpoints, sortKey: sql<string>`${webhookEndpoints.createdAt}::text` })
        .from(webhookEndpoints)
        .where(and(eq(webhookEndpoints.orgId, orgId), keyset))
        .orderBy(asc(webhookEndpoints.createdAt), asc(webhookEndpoints.id))
        .limit(limit)
    },
  }
}

export type EndpointsRepository = ReturnType<typeof createEndpointsRepository>
