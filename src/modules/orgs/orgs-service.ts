import type { Billing } from '../billing/billing-service.js'
import type { Database, Executor } from '../../db/client.js'
import { cursorParam, toPage } from '../../lib/cursor.js'
import { newId } from '../../lib/ids.js'
import { problems } from '../../lib/problem.js'
import { type AuthContext, type Role, requireOrgRole, requireScope } from '../auth/authorization.js'
import type { OrgsRepository } from './orgs-repository.js'

export interface AuditEntry {
  orgId: string | null
  action: string
  actorUserId?: string | null
  actorKeyId?: string | null
  targetType?: string
  targetId?: string
  ip?: string | null
  metadata?: Record<string, unknown>
}

/** What other modules may ask of orgs; they never touch the tables. */
export interface OrgsService {
  createPersonalOrg(userId: string, name: string, tx?: Executor): Promise<{ id: string }>
  membershipsOf(userId: string): Promise<{ orgId: string; orgName: string; personal: boolean; role: Role }[]>
  audit(entry: AuditEntry, tx?: Executor): Promise<void>
}

export function createOrgsService(deps: {
  db: Database
  repository: OrgsRepository
  /** Told after a user's memberships changed (committed), so cached roles are dropped. */
  onMembershipChange?: (userId: string) => void
  /** The org's plan limits its seats (403 PLAN_LIMIT when full). */
  limits?: Pick<Billing, 'assertRoomFor'>
}) {
  const { db, repository } = deps
  const changed = (userId: string) => deps.onMembershipChange?.(userId)

  async function audit(entry: AuditEntry, tx?: Executor) {
    await repository.insertAudit(
      {
        id: newId('aud'),
        orgId: entry.orgId,
        action: entry.action,
        actorUserId: entry.actorUserId ?? null,
        actorKeyId: entry.actorKeyId ?? null,
        targetType: entry.targetType ?? null,
        targetId: entry.targetId ?? null,
        ip: entry.ip ?? null,
        metadata: entry.metadata ?? {},
      },
      tx,
    )
  }

  const actor = (auth: AuthContext) => ({ actorUserId: auth.userId, actorKeyId: auth.apiKey?.id ?? null })

  return {
    audit,

    async createPersonalOrg(userId: string, name: string, tx?: Executor) {
      const org = await repository.insertOrg({ id: newId('org'), name, personalFor: userId }, tx)
      await repository.insertMembership({ orgId: org.id, userId, role: 'owner' }, tx)
      return org
    },

    membershipsOf: (userId: string) => repository.membershipsOf(userId),

    /** The caller's orgs, oldest first, keyset-paginated on the UUIDv7 org id. */
    async listOrgs(auth: AuthContext, limit: number, cursor: string | undefined) {
      requireScope(auth, 'orgs:read')
      const after = cursorParam(cursor)
      const orgs = (await repository.membershipsOf(auth.userId))
        .filter((membership) => auth.roles.has(membership.orgId) && (!after || membership.orgId > after.id))
        .sort((a, b) => (a.orgId < b.orgId ? -1 : 1))
        .map((membership) => ({
          id: membership.orgId,
          name: membership.orgName,
          personal: membership.personal,
          role: auth.roles.get(membership.orgId) ?? membership.role,
          createdAt: membership.createdAt,
        }))
      return toPage(orgs, limit, (org) => ({ k: '', id: org.id }))
    },

    async createOrg(auth: AuthContext, name: string, ip: string) {
      const created = await db.transaction(async (tx) => {
        const org = await repository.insertOrg({ id: newId('org'), name, personalFor: null }, tx)
        await repository.insertMembership({ orgId: org.id, userId: auth.userId, role: 'owner' }, tx)
        await audit(
          { orgId: org.id, action: 'org.created', ...actor(auth), targetType: 'org', targetId: org.id, ip },
          tx,
        )
        return { id: org.id, name: org.name, personal: false, role: 'owner' as Role, createdAt: org.createdAt }
      })
      changed(auth.userId)
      return created
    },

    async listMembers(auth: AuthContext, orgId: string, limit: number, cursor: string | undefined) {
      requireScope(auth, 'orgs:read')
      requireOrgRole(auth, orgId, 'viewer')
      const rows = await repository.listMembers(orgId, limit + 1, cursorParam(cursor))
      const { data, nextCursor } = toPage(rows, limit, (row) => ({ k: row.sortKey, id: row.userId }))
      return { data: data.map(({ sortKey: _sortKey, ...member }) => member), nextCursor }
    },

    async addMember(auth: AuthContext, orgId: string, input: { userId: string; role: Role }, ip: string) {
      const callerRole = requireOrgRole(auth, orgId, 'admin')
      if (input.role === 'owner' && callerRole !== 'owner') {
        throw problems.forbidden('Only an owner can make someone an owner.', 'INSUFFICIENT_ROLE')
      }
      await db.transaction(async (tx) => {
        if (await repository.findMembership(orgId, input.userId, tx)) {
          throw problems.conflict('That user is already a member.', 'ALREADY_MEMBER')
        }
        await deps.limits?.assertRoomFor(orgId, 'members', tx)
        await repository.insertMembership({ orgId, userId: input.userId, role: input.role }, tx)
        await audit(
          {
            orgId,
            action: 'member.added',
            ...actor(auth),
            targetType: 'user',
            targetId: input.userId,
            ip,
            metadata: { role: input.role },
          },
          tx,
        )
      })
      changed(input.userId)
      const member = await repository.findMember(orgId, input.userId)
      if (!member) throw problems.notFound('Member not found.', 'MEMBER_NOT_FOUND')
      return member
    },

    async changeRole(auth: AuthContext, orgId: string, userId: string, role: Role, ip: string) {
      const callerRole = requireOrgRole(auth, orgId, 'admin')
      await db.transaction(async (tx) => {
        const owners = await repository.lockOwners(orgId, tx)
        const membership = await repository.findMembership(orgId, userId, tx)
        if (!membership) throw problems.notFound('Member not found.', 'MEMBER_NOT_FOUND')
        // Admins manage members and admins; only owners grant or take away ownership.
        if ((role === 'owner' || membership.role === 'owner') && callerRole !== 'owner') {
          throw problems.forbidden('Only an owner can change ownership.', 'INSUFFICIENT_ROLE')
        }
        if (membership.role === 'owner' && role !== 'owner' && owners.length <= 1) {
          throw problems.conflict('The last owner cannot be demoted; make someone else an owner first.', 'LAST_OWNER')
        }
        if (role !== 'owner' && (await repository.findOrg(orgId, tx))?.personalFor === userId) {
          // A personal org may be shared, but it always stays its person's to own.
          throw problems.conflict('Nobody can be demoted in their personal organization.', 'PERSONAL_ORG')
        }
        if (membership.role === role) return
        await repository.updateRole(orgId, userId, role, tx)
        await audit(
          {
            orgId,
            action: 'member.role_changed',
            ...actor(auth),
            targetType: 'user',
            targetId: userId,
            ip,
            metadata: { from: membership.role, to: role },
          },
          tx,
        )
      })
      changed(userId)
      const member = await repository.findMember(orgId, userId)
      if (!member) throw problems.notFound('Member not found.', 'MEMBER_NOT_FOUND')
      return member
    },

    async removeMember(auth: AuthContext, orgId: string, userId: string, ip: string) {
      // Anyone may leave an org; removing somebody else takes an admin.
      const callerRole = requireOrgRole(auth, orgId, userId === auth.userId ? 'viewer' : 'admin')
      await db.transaction(async (tx) => {
        const owners = await repository.lockOwners(orgId, tx)
        const membership = await repository.findMembership(orgId, userId, tx)
        if (!membership) throw problems.notFound('Member not found.', 'MEMBER_NOT_FOUND')
        // Checked before the owner rules: the personal org's person (its sole owner, usually) must
        // hear the real reason, not "make someone else an owner first", which would not help.
        const org = await repository.findOrg(orgId, tx)
        if (org?.personalFor === userId) {
          throw problems.conflict('Nobody can leave their personal organization.', 'PERSONAL_ORG')
        }
        if (membership.role === 'owner' && userId !== auth.userId && callerRole !== 'owner') {
          throw problems.forbidden('Only an owner can remove an owner.', 'INSUFFICIENT_ROLE')
        }
        if (membership.role === 'owner' && owners.length <= 1) {
          throw problems.conflict('The last owner cannot be removed; make someone else an owner first.', 'LAST_OWNER')
        }
        await repository.deleteMembership(orgId, userId, tx)
        await audit({ orgId, action: 'member.removed', ...actor(auth), targetType: 'user', targetId: userId, ip }, tx)
      })
      changed(userId)
    },

    async listAudit(auth: AuthContext, orgId: string, limit: number, cursor: string | undefined) {
      requireScope(auth, 'audit:read')
      requireOrgRole(auth, orgId, 'admin')
      const rows = await repository.listAudit(orgId, limit + 1, cursorParam(cursor))
      return toPage(rows, limit, (row) => ({ k: '', id: row.id }))
    },
  }
}

export type OrgsModuleService = ReturnType<typeof createOrgsService>
