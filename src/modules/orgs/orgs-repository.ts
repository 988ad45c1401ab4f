import { and, desc, eq, lt, or, sql } from 'drizzle-orm'
import type { Executor } from '../../db/client.js'
import { auditLog, memberships, orgs, users } from '../../db/schema/index.js'
import type { Cursor } from '../../lib/cursor.js'

export type Role = (typeof memberships.$inferSelect)['role']
export type OrgRow = typeof orgs.$inferSelect
export type AuditRow = typeof auditLog.$inferSelect

export interface MembershipView {
  orgId: string
  orgName: string
  personal: boolean
  role: Role
  createdAt: Date
}

export interface MemberView {
  userId: string
  email: string
  name: string | null
  role: Role
  createdAt: Date
}

const memberColumns = {
  userId: memberships.userId,
  email: users.email,
  name: users.name,
  role: memberships.role,
  createdAt: memberships.createdAt,
}

/** The only code that touches the orgs, memberships and audit_log tables. */
export function createOrgsRepository(db: Executor) {
  return {
    async insertOrg(values: typeof orgs.$inferInsert, tx: Executor = db) {
      const [row] = await tx.insert(orgs).values(values).returning()
      return row as OrgRow
    },

    async insertMembership(values: typeof memberships.$inferInsert, tx: Executor = db) {
      await tx.insert(memberships).values(values)
    },

    async findOrg(orgId: string, tx: Executor = db) {
      const [row] = await tx.select().from(orgs).where(eq(orgs.id, orgId))
      return row ?? null
    },

    /** All memberships of a user, newest first; users belong to few orgs, so no paging here. */
    async membershipsOf(userId: string, tx: Executor = db): Promise<MembershipView[]> {
      return tx
        .select({
          orgId: memberships.orgId,
          orgName: orgs.name,
          personal: sql<boolean>`${orgs.personalFor} is not null`,
          role: memberships.role,
          createdAt: memberships.createdAt,
        })
        .from(memberships)
        .innerJoin(orgs, eq(orgs.id, memberships.orgId))
        .where(eq(memberships.userId, userId))
        .orderBy(desc(memberships.createdAt), desc(memberships.orgId))
    },

    async findMembership(orgId: string, userId: string, tx: Executor = db) {
      const [row] = await tx
        .select()
        .from(memberships)
        .where(and(eq(memberships.orgId, orgId), eq(memberships.userId, userId)))
      return row ?? null
    },

    /** Members ordered by join time then user id; keyset pagination on that pair. */
    /** `sortKey` is createdAt as PostgreSQL text, microseconds included, for exact keyset cursors. */
    async listMembers(orgId: string, limit: number, after: Cursor | null, tx: Executor = db) {
      const afterClause = after
        ? or(
            sql`${memberships.createdAt} > ${after.k}::timestamptz`,
            and(sql`${memberships.createdAt} = ${after.k}::timestamptz`, sql`${memberships.userId} > ${after.id}`),
          )
        : undefined
      return tx
        .select({ ...memberColumns, sortKey: sql<string>`${memberships.createdAt}::text` })
        .from(memberships)
        .innerJoin(users, eq(users.id, memberships.userId))
        .where(and(eq(memberships.orgId, orgId), afterClause))
        .orderBy(memberships.createdAt, memberships.userId)
        .limit(limit)
    },

    async findMember(orgId: string, userId: string, tx: Executor = db): Promise<MemberView | null> {
      const [row] = await tx
        .select(memberColumns)
        .from(memberships)
        .innerJoin(users, eq(users.id, memberships.userId))
        .where(and(eq(memberships.orgId, orgId), eq(memberships.userId, userId)))
      return row ?? null
    },

    async updateRole(orgId: string, userId: string, role: Role, tx: Executor = db) {
      await tx
        .update(memberships)
        .set({ role })
        .where(and(eq(memberships.orgId, orgId), eq(memberships.userId, userId)))
    },

    async deleteMembership(orgId: string, userId: string, tx: Executor = db) {
      await tx.delete(memberships).where(and(eq(memberships.orgId, orgId), eq(memberships.userId, userId)))
    },

    /**
     * Owners of an org, locking their membership rows: two concurrent demotions of the last two
     * owners then run one after the other, and the second sees only one owner left.
     */
    async countMembers(orgId: string, tx: Executor = db): Promise<number> {
      const [row] = await tx
        .select({ count: sql<number>`count(*)::int` })
        .from(memberships)
        .where(eq(memberships.orgId, orgId))
      return Number(row?.count ?? 0)
    },

    async lockOwners(orgId: string, tx: Executor) {
      const rows = await tx
        .select({ userId: memberships.userId })
        .from(memberships)
        .where(and(eq(memberships.orgId, orgId), eq(memberships.role, 'owner')))
        .for('update')
      return rows.map((row) => row.userId)
    },

    async insertAudit(values: typeof auditLog.$inferInsert, tx: Executor = db) {
      await tx.insert(auditLog).values(values)
    },

    /** Audit entries newest first. Ids are UUIDv7, ordered by creation, so the id is the keyset. */
    async listAudit(orgId: string, limit: number, before: Cursor | null, tx: Executor = db) {
      const beforeClause = before ? lt(auditLog.id, before.id) : undefined
      return tx
        .select()
        .from(auditLog)
        .where(and(eq(auditLog.orgId, orgId), beforeClause))
        .orderBy(desc(auditLog.id))
        .limit(limit)
    },
  }
}

export type OrgsRepository = ReturnType<typeof createOrgsRepository>
