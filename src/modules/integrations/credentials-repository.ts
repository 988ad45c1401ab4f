import { and, eq, inArray, sql } from 'drizzle-orm'
import type { Database, Executor } from '../../db/client.js'
import { orgCredentials } from '../../db/schema/index.js'

export type CredentialRow = typeof orgCredentials.$inferSelect

export function createCredentialsRepository(db: Database) {
  return {
    async forOrgs(orgIds: string[], tx: Executor = db): Promise<CredentialRow[]> {
      if (orgIds.length === 0) return []
      return tx.select().from(orgCredentials).where(inArray(orgCredentials.orgId, orgIds))
    },

    async upsert(row: Omit<CredentialRow, 'setAt'>, tx: Executor = db): Promise<CredentialRow> {
      const [saved] = await tx
        .insert(orgCredentials)
        .values(row)
        .onConflictDoUpdate({
          target: [orgCredentials.orgId, orgCredentials.service],
          set: { sealedKey: row.sealedKey, lastFour: row.lastFour, setBy: row.setBy, setAt: sql`now()` },
        })
        .returning()
      return saved as CredentialRow
    },

    async remove(orgId: string, service: string, tx: Executor = db): Promise<boolean> {
      const removed = await tx
        .delete(orgCredentials)
        .where(and(eq(orgCredentials.orgId, orgId), eq(orgCredentials.service, service)))
        .returning({ orgId: orgCredentials.orgId })
      return removed.length > 0
    },

    /** Every sealed key, for re-encryption under a new instance key. */
    async all(tx: Executor = db): Promise<CredentialRow[]> {
      return tx.select().from(orgCredentials)
    },

    /** Replaces a sealed key only if it is still the one read: a key set meanwhile wins. */
    async reseal(row: CredentialRow, sealedKey: string, tx: Executor = db): Promise<void> {
      await tx
        .update(orgCredentials)
        .set({ sealedKey })
        .where(
          and(
            eq(orgCredentials.orgId, row.orgId),
            eq(orgCredentials.service, row.service),
            eq(orgCredentials.sealedKey, row.sealedKey),
          ),
        )
    },
  }
}

export type CredentialsRepository = ReturnType<typeof createCredentialsRepository>

/** What a sealed key is bound to: a value copied to another org's or service's row does not open. */
export const credentialAad = (orgId: string, service: string) => `org-credential:${orgId}:${service}`
