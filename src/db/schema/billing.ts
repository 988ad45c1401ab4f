import { boolean, pgTable, primaryKey, text, timestamp } from 'drizzle-orm/pg-core'
import { orgs } from './auth.js'

/**
 * An org's Stripe customer and the subscription state last read from Stripe. Written only by
 * verified Stripe webhooks (and the customer's creation at checkout); an org without a row, or
 * whose subscription is not entitled (canceled, unpaid), is on the free plan.
 */
export const billingAccounts = pgTable('billing_accounts', {
  orgId: text()
    .primaryKey()
    .references(() => orgs.id, { onDelete: 'cascade' }),
  stripeCustomerId: text().notNull().unique(),
  subscriptionId: text(),
  priceId: text(),
  /** Stripe's subscription status (active, trialing, past_due, canceled, unpaid, incomplete, ...). */
  status: text(),
  currentPeriodEnd: timestamp({ withTimezone: true }),
  cancelAtPeriodEnd: boolean().notNull().default(false),
  lastPaymentFailedAt: timestamp({ withTimezone: true }),
  /** When the subscription state was last read from Stripe. */
  syncedAt: timestamp({ withTimezone: true }),
  createdAt: timestamp({ withTimezone: true }).notNull().defaultNow(),
  updatedAt: timestamp({ withTimezone: true }).notNull().defaultNow(),
})

/**
 * An org's own API key for a model provider (bring your own key), sealed with the instance
 * encryption key (AES-256-GCM; the sealed value names the key that sealed it, for rotation).
 */
export const orgCredentials = pgTable(
  'org_credentials',
  {
    orgId: text()
      .notNull()
      .references(() => orgs.id, { onDelete: 'cascade' }),
    service: text().notNull(),
    sealedKey: text().notNull(),
    lastFour: text().notNull(),
    setBy: text(),
    setAt: timestamp({ withTimezone: true }).notNull().defaultNow(),
  },
  (table) => [primaryKey({ columns: [table.orgId, table.service] })],
)
