import { createHash, randomBytes } from 'node:crypto'
import type { Database } from '../../db/client.js'
import { cursorParam, toPage } from '../../lib/cursor.js'
import { newId } from '../../lib/ids.js'
import { decoyPasswordHash, hashPassword, passwordProblem, verifyPassword } from '../../lib/password.js'
import { HttpProblem, problems } from '../../lib/problem.js'
import type { OrgsService } from '../orgs/orgs-service.js'
import { isUniqueViolation } from '../../db/results.js'
import type { ApiKeyRow, AuthRepository, UserRow } from './auth-repository.js'
import { type AuthContext, type Role, requireOrgRole, type Scope } from './authorization.js'
import type { LoginThrottle } from './login-throttle.js'
import type { TokenService } from './token-service.js'

export const REFRESH_TOKEN_TTL_MS = 30 * 24 * 3600 * 1000
/**
 * Two requests racing to refresh the same token (a SPA in two tabs, a retried request) both get
 * new tokens in the same family when the second arrives within this window after the first
 * rotation; later reuse is treated as theft (RFC 9700 section 4.14) and revokes the family.
 */
export const REFRESH_REUSE_GRACE_MS = 10_000

const REFRESH_PREFIX = 'bprt_'
const API_KEY_PREFIX = 'bpk_'

export const sha256 = (value: string) => createHash('sha256').update(value).digest('base64url')

/** Emails compare as the mailbox people mean: Unicode-normalised, trimmed, case-insensitive. */
export function normalizeEmail(email: string): string {
  return email.normalize('NFKC').trim().toLowerCase()
}

export function looksLikeApiKey(token: string) {
  return token.startsWith(API_KEY_PREFIX)
}

export interface PublicUser {
  id: string
  email: string
  name: string | null
  createdAt: Date
}

export const publicUser = (user: UserRow): PublicUser => ({
  id: user.id,
  email: user.email,
  name: user.name,
  createdAt: user.createdAt,
})

export const publicApiKey = (row: ApiKeyRow) => ({
  id: row.id,
  name: row.name,
  orgId: row.orgId,
  prefix: row.prefix,
  scopes: row.scopes as Scope[],
  createdBy: row.createdBy,
  createdAt: row.createdAt,
  expiresAt: row.expiresAt,
  lastUsedAt: row.lastUsedAt,
})

const invalidCredentials = () => problems.unauthorized('Email or password is incorrect.', 'INVALID_CREDENTIALS')
const invalidRefresh = () => problems.unauthorized('The refresh token is invalid or expired.', 'INVALID_REFRESH_TOKEN')

export function createAuthService(deps: {
  db: Database
  repository: AuthRepository
  tokens: TokenService
  orgs: OrgsService
  throttle: LoginThrottle
}) {
  const { db, repository, tokens, orgs, throttle } = deps

  async function issueTokens(user: UserRow, familyId: string = newId('rtk')) {
    const refreshToken = `${REFRESH_PREFIX}${randomBytes(32).toString('base64url')}`
    await repository.insertRefreshToken({
      id: newId('rtk'),
      familyId,
      userId: user.id,
      tokenHash: sha256(refreshToken),
      expiresAt: new Date(Date.now() + REFRESH_TOKEN_TTL_MS),
    })
    const access = await tokens.issueAccessToken(user.id)
    return {
      user: publicUser(user),
      accessToken: access.token,
      refreshToken,
      tokenType: 'Bearer' as const,
      expiresIn: access.expiresIn,
    }
  }

  async function personalOrgId(userId: string) {
    const memberships = await orgs.membershipsOf(userId)
    return memberships.find((membership) => membership.personal)?.orgId ?? null
  }

  return {
    async signup(input: { email: string; password: string; name?: string | undefined }, ip: string) {
      const problem = passwordProblem(input.password)
      if (problem) {
        throw problems.badRequest('WEAK_PASSWORD', `The password ${problem}.`, [
          { path: '/body/password', message: problem },
        ])
      }
      const email = normalizeEmail(input.email)
      const passwordHash = await hashPassword(input.password)
      let user: UserRow
      try {
        user = await db.transaction(async (tx) => {
          const created = await repository.insertUser(
            { id: newId('usr'), email, name: input.name ?? null, passwordHash },
            tx,
          )
          const org = await orgs.createPersonalOrg(created.id, input.name ?? email, tx)
          await orgs.audit({ orgId: org.id, action: 'auth.signup', actorUserId: created.id, ip }, tx)
          return created
        })
      } catch (error) {
        if (isUniqueViolation(error)) {
          throw problems.conflict('An account with this email already exists.', 'EMAIL_TAKEN')
        }
        throw error
      }
      return issueTokens(user)
    },

    async login(input: { email: string; password: string }, ip: string) {
      const email = normalizeEmail(input.email)
      // Counted before the password is checked, so concurrent guesses cannot slip past the limit.
      const attempt = await throttle.consume(email)
      if (!attempt.allowed) {
        throw new HttpProblem(429, 'TOO_MANY_LOGIN_ATTEMPTS', 'Too many failed sign-in attempts; try again later.', {
          headers: { 'retry-after': String(attempt.retryAfterSeconds) },
        })
      }
      const user = await repository.findUserByEmail(email)
      // Unknown accounts cost the same scrypt work as known ones: timing does not reveal accounts.
      const ok = await verifyPassword(input.password, user?.passwordHash ?? (await decoyPasswordHash()))
      if (!user?.passwordHash || !ok) {
        const orgId = user ? await personalOrgId(user.id) : null
        if (orgId) await orgs.audit({ orgId, action: 'auth.login_failed', actorUserId: user?.id ?? null, ip })
        throw invalidCredentials()
      }
      await throttle.reset(email)
      const orgId = await personalOrgId(user.id)
      if (orgId) await orgs.audit({ orgId, action: 'auth.login', actorUserId: user.id, ip })
      return issueTokens(user)
    },

    async refresh(refreshToken: string, ip: string) {
      if (!refreshToken.startsWith(REFRESH_PREFIX)) throw invalidRefresh()
      const now = new Date()
      const outcome = await db.transaction(async (tx) => {
        const row = await repository.lockRefreshToken(sha256(refreshToken), tx)
        if (!row || row.revokedAt || row.expiresAt <= now) return { kind: 'invalid' as const }
        if (row.rotatedAt && now.getTime() - row.rotatedAt.getTime() > REFRESH_REUSE_GRACE_MS) {
          await repository.revokeFamily(row.familyId, now, tx)
          return { kind: 'reuse' as const, userId: row.userId, familyId: row.familyId }
        }
        if (!row.rotatedAt) await repository.markRotated(row.id, now, tx)
        return { kind: 'rotate' as const, userId: row.userId, familyId: row.familyId }
      })
      if (outcome.kind === 'invalid') throw invalidRefresh()
      if (outcome.kind === 'reuse') {
        const orgId = await personalOrgId(outcome.userId)
        await orgs.audit({
          orgId,
          action: 'auth.refresh_reuse_detected',
          actorUserId: outcome.userId,
          ip,
          metadata: { familyId: outcome.familyId },
        })
        throw invalidRefresh()
      }
      const user = await repository.findUserById(outcome.userId)
      if (!user) throw invalidRefresh()
      return issueTokens(user, outcome.familyId)
    },

    async logout(refreshToken: string) {
      if (!refreshToken.startsWith(REFRESH_PREFIX)) return
      const row = await repository.findRefreshToken(sha256(refreshToken))
      if (row) await repository.revokeFamily(row.familyId, new Date())
    },

    async me(auth: AuthContext) {
      const user = await repository.findUserById(auth.userId)
      // The credential was valid for an account that no longer exists (deleted a moment ago):
      // refused as the auth layer refuses any token of an unknown account.
      if (!user) throw problems.unauthorized('The access token or API key is invalid or expired.', 'INVALID_TOKEN')
      return {
        user: publicUser(user),
        memberships: auth.orgs.flatMap(({ orgId, orgName, personal }) => {
          const role = auth.roles.get(orgId)
          return role ? [{ orgId, orgName, personal, role }] : []
        }),
        authenticatedVia: auth.via,
        scopes: auth.scopes ? [...auth.scopes] : null,
      }
    },

    /** Read on every use, so revoking the flag takes effect at once. */
    isPlatformAdmin: (userId: string) => repository.isPlatformAdmin(userId),

    setPlatformAdmin: (email: string, granted: boolean) => repository.setPlatformAdmin(normalizeEmail(email), granted),

    async userIdByEmail(email: string) {
      return (await repository.findUserByEmail(normalizeEmail(email)))?.id ?? null
    },

    /** First sight of an external identity creates the user and their personal org. */
    async provisionExternal(identity: { issuer: string; subject: string; email?: string; name?: string }) {
      const existing = await repository.findExternalIdentity(identity.issuer, identity.subject)
      if (existing) return existing.userId
      try {
        return await db.transaction(async (tx) => {
          // Without a verified email claim the account gets a placeholder address that cannot collide.
          const email = identity.email
            ? normalizeEmail(identity.email)
            : `${sha256(`${identity.issuer} ${identity.subject}`)}@external.invalid`
          let user = await repository.findUserByEmail(email, tx)
          if (user) {
            // Never attach an identity to an existing account (a password account, or another
            // subject's) merely because the emails match: an email claim is no proof of ownership.
            user = await repository.insertUser(
              {
                id: newId('usr'),
                email: `${sha256(`${identity.issuer} ${identity.subject}`)}@external.invalid`,
                name: identity.name ?? null,
              },
              tx,
            )
          } else {
            user = await repository.insertUser({ id: newId('usr'), email, name: identity.name ?? null }, tx)
          }
          await repository.insertExternalIdentity(
            { issuer: identity.issuer, subject: identity.subject, userId: user.id },
            tx,
          )
          const org = await orgs.createPersonalOrg(user.id, identity.name ?? email, tx)
          await orgs.audit({ orgId: org.id, action: 'auth.external_provisioned', actorUserId: user.id }, tx)
          return user.id
        })
      } catch (error) {
        // Two first requests raced; the other one provisioned the user.
        if (isUniqueViolation(error)) {
          const winner = await repository.findExternalIdentity(identity.issuer, identity.subject)
          if (winner) return winner.userId
        }
        throw error
      }
    },

    async createApiKey(
      auth: AuthContext,
      input: { name: string; orgId: string; scopes: Scope[]; expiresAt?: string | undefined },
      ip: string,
    ) {
      requireOrgRole(auth, input.orgId, 'viewer')
      const expiresAt = input.expiresAt ? new Date(input.expiresAt) : null
      if (expiresAt && expiresAt.getTime() <= Date.now()) {
        throw problems.badRequest('INVALID_EXPIRY', 'expiresAt must be in the future.', [
          { path: '/body/expiresAt', message: 'must be in the future' },
        ])
      }
      const key = `${API_KEY_PREFIX}${randomBytes(32).toString('base64url')}`
      const row = await db.transaction(async (tx) => {
        const created = await repository.insertApiKey(
          {
            id: newId('key'),
            orgId: input.orgId,
            createdBy: auth.userId,
            name: input.name,
            prefix: key.slice(0, API_KEY_PREFIX.length + 6),
            keyHash: sha256(key),
            scopes: [...new Set(input.scopes)],
            expiresAt,
          },
          tx,
        )
        await orgs.audit(
          {
            orgId: input.orgId,
            action: 'api_key.created',
            actorUserId: auth.userId,
            targetType: 'api_key',
            targetId: created.id,
            ip,
            metadata: { scopes: created.scopes },
          },
          tx,
        )
        return created
      })
      return { ...publicApiKey(row), key }
    },

    async listApiKeys(auth: AuthContext, orgId: string, limit: number, cursor: string | undefined) {
      const role = requireOrgRole(auth, orgId, 'viewer')
      // Admins see every key of the org; everybody else sees the keys they created.
      const filter = role === 'owner' || role === 'admin' ? { orgId } : { orgId, createdBy: auth.userId }
      const rows = await repository.listApiKeys(filter, limit + 1, cursorParam(cursor))
      const { data, nextCursor } = toPage(rows, limit, (row) => ({ k: '', id: row.id }))
      return { data: data.map(publicApiKey), nextCursor }
    },

    async revokeApiKey(auth: AuthContext, id: string, ip: string) {
      const row = await repository.findApiKey(id)
      const role: Role | undefined = row ? auth.roles.get(row.orgId) : undefined
      if (!row || row.revokedAt || !role) throw problems.notFound('API key not found.', 'API_KEY_NOT_FOUND')
      if (row.createdBy !== auth.userId && role !== 'owner' && role !== 'admin') {
        throw problems.forbidden('Only its creator or an org admin can revoke this key.', 'INSUFFICIENT_ROLE')
      }
      await db.transaction(async (tx) => {
        await repository.revokeApiKey(id, new Date(), tx)
        await orgs.audit(
          {
            orgId: row.orgId,
            action: 'api_key.revoked',
            actorUserId: auth.userId,
            targetType: 'api_key',
            targetId: id,
            ip,
          },
          tx,
        )
      })
    },

    /** Resolves a bearer API key to its row, or null when unknown, revoked or expired. */
    async findLiveApiKey(key: string) {
      const row = await repository.findApiKeyByHash(sha256(key))
      if (!row || row.revokedAt || (row.expiresAt && row.expiresAt.getTime() <= Date.now())) return null
      void repository.touchApiKey(row.id, new Date()).catch(() => {})
      return row
    },
  }
}

export type AuthService = ReturnType<typeof createAuthService>
