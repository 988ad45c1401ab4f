import { and, desc, eq, isNull, lt, or, sql } from 'drizzle-orm'
import type { Executor } from '../../db/client.js'
import { apiKeys, externalIdentities, refreshTokens, signingKeys, users } from '../../db/schema/index.js'
import type { Cursor } from '../../lib/cursor.js'

export type UserRow = typeof users.$inferSelect
export type RefreshTokenRow = typeof refreshTokens.$inferSelect
export type SigningKeyRow = typeof signingKeys.$inferSelect
export type ApiKeyRow = typeof apiKeys.$inferSelect

/** The only code that touches users, identities, refresh tokens, signing keys and API keys. */
export function createAuthRepository(db: Executor) {
  return {
    async insertUser(values: typeof users.$inferInsert, tx: Executor = db) {
      const [row] = await tx.insert(users).values(values).returning()
      return row as UserRow
    },

    async findUserByEmail(email: string, tx: Executor = db) {
      const [row] = await tx.select().from(users).where(eq(users.email, email))
      return row ?? null
    },

    async findUserById(id: string, tx: Executor = db) {
      const [row] = await tx.select().from(users).where(eq(users.id, id))
      return row ?? null
    },

    async isPlatformAdmin(id: string, tx: Executor = db): Promise<boolean> {
      const [row] = await tx.select({ platformAdmin: users.platformAdmin }).from(users).where(eq(users.id, id))
      return row?.platformAdmin ?? false
    },

    /** Returns false when no account has this (normalised) email. */
    async setPlatformAdmin(email: string, granted: boolean, tx: Executor = db): Promise<boolean> {
      const rows = await tx
        .update(users)
        .set({ platformAdmin: granted, updatedAt: new Date() })
        .where(eq(users.email, email))
        .returning({ id: users.id })
      return rows.length > 0
    },

    async findExternalIdentity(issuer: string, subject: string, tx: Executor = db) {
      const [row] = await tx
        .select()
        .from(externalIdentities)
        .where(and(eq(externalIdentities.issuer, issuer), eq(externalIdentities.subject, subject)))
      return row ?? null
    },

    async insertExternalIdentity(values: typeof externalIdentities.$inferInsert, tx: Executor = db) {
      await tx.insert(externalIdentities).values(values)
    },

    async insertRefreshToken(values: typeof refreshTokens.$inferInsert, tx: Executor = db) {
      await tx.insert(refreshTokens).values(values)
    },

    /** Locks the token row so that concurrent refreshes of one token are decided one at a time. */
    async lockRefreshToken(tokenHash: string, tx: Executor) {
      const [row] = await tx.select().from(refreshTokens).where(eq(refreshTokens.tokenHash, tokenHash)).for('update')
      return row ?? null
    },

    async findRefreshToken(tokenHash: string, tx: Executor = db) {
      const [row] = await tx.select().from(refreshTokens).where(eq(refreshTokens.tokenHash, tokenHash))
      return row ?? null
    },

    async markRotated(id: string, at: Date, tx: Executor) {
      await tx.update(refreshTokens).set({ rotatedAt: at }).where(eq(refreshTokens.id, id))
    },

    async revokeFamily(familyId: string, at: Date, tx: Executor = db) {
      await tx
        .update(refreshTokens)
        .set({ revokedAt: at })
        .where(and(eq(refreshTokens.familyId, familyId), isNull(refreshTokens.revokedAt)))
    },

    async listSigningKeys(tx: Executor = db) {
      return tx.select().from(signingKeys).orderBy(desc(signingKeys.createdAt), desc(signingKeys.kid))
    },

    async insertSigningKey(values: typeof signingKeys.$inferInsert, tx: Executor = db) {
      await tx.insert(signingKeys).values(values)
    },

    async retireSigningKeys(exceptKid: string, at: Date, tx: Executor = db) {
      await tx
        .update(signingKeys)
        .set({ retiredAt: at })
        .where(and(isNull(signingKeys.retiredAt), sql`${signingKeys.kid} <> ${exceptKid}`))
    },

    async insertApiKey(values: typeof apiKeys.$inferInsert, tx: Executor = db) {
      const [row] = await tx.insert(apiKeys).values(values).returning()
      return row as ApiKeyRow
    },

    async findApiKeyByHash(keyHash: string, tx: Executor = db) {
      const [row] = await tx.select().from(apiKeys).where(eq(apiKeys.keyHash, keyHash))
      return row ?? null
    },

    async findApiKey(id: string, tx: Executor = db) {
      const [row] = await tx.select().from(apiKeys).where(eq(apiKeys.id, id))
      return row ?? null
    },

    /** Live keys of an org (optionally only one creator's), newest first, keyset on the UUIDv7 id. */
    async listApiKeys(
      filter: { orgId: string; createdBy?: string },
      limit: number,
      before: Cursor | null,
      tx: Executor = db,
    ) {
      return tx
        .select()
        .from(apiKeys)
        .where(
          and(
            eq(apiKeys.orgId, filter.orgId),
            filter.createdBy ? eq(apiKeys.createdBy, filter.createdBy) : undefined,
            isNull(apiKeys.revokedAt),
            before ? lt(apiKeys.id, before.id) : undefined,
          ),
        )
        .orderBy(desc(apiKeys.id))
        .limit(limit)
    },

    async revokeApiKey(id: string, at: Date, tx: Executor = db) {
      await tx
        .update(apiKeys)
        .set({ revokedAt: at })
        .where(and(eq(apiKeys.id, id), isNull(apiKeys.revokedAt)))
    },

    /** Records use at most once a minute per key: reads stay reads under load. */
    async touchApiKey(id: string, at: Date, tx: Executor = db) {
      await tx
        .update(apiKeys)
        .set({ lastUsedAt: at })
        .where(
          and(
            eq(apiKeys.id, id),
            or(isNull(apiKeys.lastUsedAt), lt(apiKeys.lastUsedAt, new Date(at.getTime() - 60_000))),
          ),
        )
    },
  }
}

export type AuthRepository = ReturnType<typeof createAuthRepository>
