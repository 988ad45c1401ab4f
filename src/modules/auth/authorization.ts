import type { FastifyRequest } from 'fastify'
import { problems } from '../../lib/problem.js'
import type { Role } from '../orgs/orgs-repository.js'

export type { Role }
export const ROLES: readonly Role[] = ['owner', 'admin', 'member', 'viewer']
const RANK: Record<Role, number> = { owner: 4, admin: 3, member: 2, viewer: 1 }

/** Everything an API key may be granted. Access tokens of users carry every scope implicitly. */
export const SCOPES = [
  'projects:read',
  'projects:write',
  'documents:read',
  'documents:write',
  'chat',
  'usage:read',
  'webhooks:read',
  'webhooks:write',
  'orgs:read',
  'audit:read',
] as const
export type Scope = (typeof SCOPES)[number]

export interface AuthContext {
  /** How the caller proved who they are. */
  via: 'access-token' | 'external-token' | 'api-key'
  userId: string
  /** Set when the caller is an API key, which acts only within its own org. */
  apiKey: { id: string; orgId: string } | null
  /** Null for user tokens (all scopes); the key's scopes for API keys. */
  scopes: ReadonlySet<Scope> | null
  /** Org id -> role. For an API key: only its org, with its creator's current role. */
  roles: ReadonlyMap<string, Role>
  /** The orgs behind `roles`, with names, as loaded for this request (saves /auth/me a query). */
  orgs: readonly { orgId: string; orgName: string; personal: boolean }[]
}

function atLeast(role: Role, minimum: Role): boolean {
  return RANK[role] >= RANK[minimum]
}

/** The authenticated caller, or 401. */
export function requireAuth(request: FastifyRequest): AuthContext {
  if (!request.auth) {
    throw request.authFailure
      ? problems.unauthorized(request.authFailure, 'INVALID_TOKEN')
      : problems.unauthorized('Authentication is required.')
  }
  return request.auth
}

/** A person signed in with a token; API keys cannot manage credentials or memberships. */
export function requireUserSession(request: FastifyRequest): AuthContext {
  const auth = requireAuth(request)
  if (auth.apiKey)
    throw problems.forbidden('API keys cannot use this operation; sign in as a user.', 'USER_SESSION_REQUIRED')
  return auth
}

export function requireScope(auth: AuthContext, scope: Scope): void {
  if (auth.scopes && !auth.scopes.has(scope)) {
    throw problems.forbidden(`This API key lacks the "${scope}" scope.`, 'INSUFFICIENT_SCOPE')
  }
}

/**
 * The org a request acts on when it may name one: the one named, else the caller's personal org
 * (for an API key, its own org). Whether the caller may act there is checked separately.
 */
export function orgOrDefault(auth: AuthContext, orgId: string | undefined): string {
  if (orgId) return orgId
  if (auth.apiKey) return auth.apiKey.orgId
  const personal = auth.orgs.find((org) => org.personal)
  if (!personal) throw problems.notFound('Organization not found.', 'ORG_NOT_FOUND')
  return personal.orgId
}

/**
 * The caller's role in an org, at least `minimum`. Not being a member answers 404, exactly like an
 * org that does not exist, so nobody can probe which org ids exist; being a member with too small
 * a role answers 403.
 */
export function requireOrgRole(auth: AuthContext, orgId: string, minimum: Role): Role {
  const role = auth.roles.get(orgId)
  if (!role) throw problems.notFound('Organization not found.', 'ORG_NOT_FOUND')
  if (!atLeast(role, minimum)) {
    throw problems.forbidden(`This requires the ${minimum} role or higher in the organization.`, 'INSUFFICIENT_ROLE')
  }
  return role
}

declare module 'fastify' {
  interface FastifyRequest {
    /** Who is calling, filled by the auth plugin when a valid bearer credential was presented. */
    auth: AuthContext | null
  }
}

/**
 * An operator of this deployment (the platform-admin flag, granted with `npm run admin:grant`),
 * signed in as a user: API keys act for one org and never carry platform rights.
 */
export async function requirePlatformAdmin(
  request: FastifyRequest,
  isPlatformAdmin: (userId: string) => Promise<boolean>,
): Promise<AuthContext> {
  const auth = requireUserSession(request)
  if (!(await isPlatformAdmin(auth.userId))) {
    throw problems.forbidden('This requires a platform administrator.', 'PLATFORM_ADMIN_REQUIRED')
  }
  return auth
}
