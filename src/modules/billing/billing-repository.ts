import { eq, sql } from 'drizzle-orm'
import type { Database, Executor } from '../../db/client.js'
import { billingAccounts } from '../../db/schema/index.js'

export type BillingAccountRow = typeof billingAccounts.$inferSelect

export interface SubscriptionState {
  subscriptionId: string
  priceId: string | null
  status: string
  currentPeriodEnd: Date | null
  cancelAtPeriodEnd: boolean
  lastPaymentFailedAt?: Date
}

export function createBillingRepository(db: Database) {
  return {
    async find(orgId: string, tx: Executor = db): Promise<BillingAccountRow | undefined> {
      const [row] = await tx.select().from(billingAccounts).where(eq(billingAccounts.orgId, orgId))
      return row
    },

    /** The account of a Stripe customer, locked until the transaction ends: one webhook applies at a time. */
    async lockByCustomer(customerId: string, tx: Executor): Promise<BillingAccountRow | undefined> {
      const [row] = await tx
        .select()
        .from(billingAccounts)
        .where(eq(billingAccounts.stripeCustomerId, customerId))
        .for('update')
      return row
    },

    /** Records the org's customer; an org keeps its first one (a concurrent checkout's is ignored). */
    async insertCustomer(orgId: string, customerId: string, tx: Executor = db): Promise<BillingAccountRow> {
      await tx.insert(billingAccounts).values({ orgId, stripeCustomerId: customerId }).onConflictDoNothing()
      const [row] = await tx.select().from(billingAccounts).where(eq(billingAccounts.orgId, orgId))
      if (!row) throw new Error(`billing account of ${orgId} vanished`)
      return row
    },

    async applySubscription(orgId: string, state: SubscriptionState, tx: Executor): Promise<void> {
      await tx
        .update(billingAccounts)
        .set({ ...state, syncedAt: sql`now()`, updatedAt: sql`now()` })
        .where(eq(billingAccounts.orgId, orgId))
    },
  }
}

export type BillingRepository = ReturnType<typeof createBillingRepository>
