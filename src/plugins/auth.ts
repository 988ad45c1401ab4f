import type { FastifyInstance, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { type Config, ConfigError } from '../config.js'
import { SealedValueError } from '../lib/crypto-box.js'
import { createAuthRepository } from '../modules/auth/auth-repository.js'
import { type AuthService, createAuthService, looksLikeApiKey } from '../modules/auth/auth-service.js'
import type { AuthContext, Scope } from '../modules/auth/authorization.js'
import { createLoginThrottle } from '../modules/auth/login-throttle.js'
import { createMembershipCache } from '../modules/auth/membership-cache.js'
import { createTokenService, TokenError, type TokenService } from '../modules/auth/token-service.js'
import { createOrgsRepository } from '../modules/orgs/orgs-repository.js'
import { createOrgsService, type OrgsModuleService } from '../modules/orgs/orgs-service.js'

declare module 'fastify' {
  interface FastifyInstance {
    authService: AuthService
    tokenService: TokenService
    orgsService: OrgsModuleService
  }
  interface FastifyRequest {
    /** Why a presented credential was refused; reported only if the route needs a caller. */
    authFailure: string | null
  }
}

/** The audience of access tokens: this API, distinct from the issuer URL itself. */
export const accessTokenAudience = (config: Config) => `${config.PUBLIC_URL}/api`

/**
 * Who is calling. Every request with `Authorization: Bearer ...` is resolved once, here, to
 * `request.auth` (user or API key, roles per org, scopes, how authenticated); routes then ask
 * `requireAuth`, `requireOrgRole`, `requireScope`. A refused credential does not fail public routes.
 */
async function authPlugin(app: FastifyInstance, { config }: { config: Config }) {
  const orgsRepository = createOrgsRepository(app.db)
  const memberships = await createMembershipCache({
    load: async (userId) => {
      const rows = await orgsRepository.membershipsOf(userId)
      return {
        roles: new Map(rows.map((membership) => [membership.orgId, membership.role])),
        orgs: rows.map(({ orgId, orgName, personal }) => ({ orgId, orgName, personal })),
      }
    },
    ttlMs: config.MEMBERSHIP_CACHE_TTL_MS,
    database: app.database,
    log: app.log,
  })
  app.addHook('onClose', async () => memberships.close())
  const orgsService = createOrgsService({
    db: app.db,
    repository: orgsRepository,
    onMembershipChange: (userId) => memberships.invalidate(userId),
    limits: app.billing,
  })
  app.billing.registerUsage('members', (orgId, tx) => orgsRepository.countMembers(orgId, tx))
  const tokenService = createTokenService({
    repository: createAuthRepository(app.db),
    cryptoBox: app.cryptoBox,
    issuer: config.PUBLIC_URL,
    audience: accessTokenAudience(config),
    ...(config.AUTH_EXTERNAL_JWKS_URL && config.AUTH_EXTERNAL_ISSUER && config.AUTH_EXTERNAL_AUDIENCE
      ? {
          external: {
            jwksUrl: config.AUTH_EXTERNAL_JWKS_URL,
            issuer: config.AUTH_EXTERNAL_ISSUER,
            audience: config.AUTH_EXTERNAL_AUDIENCE,
          },
        }
      : {}),
  })
  // Keys load lazily if the database is unreachable now; readiness reports the outage meanwhile.
  // A stored key that does not open is a misconfiguration no retry can fix: refuse to start rather
  // than answer every login with a 500.
  await tokenService.init().catch((error: unknown) => {
    if (error instanceof SealedValueError) {
      throw new ConfigError(
        'ENCRYPTION_KEY',
        `does not open the stored token signing keys (${error.message}); when rotating it, set ENCRYPTION_KEY_RETIRED to the previous key`,
      )
    }
    app.log.warn({ err: error }, 'signing keys not loaded yet')
  })
  const authService = createAuthService({
    db: app.db,
    repository: createAuthRepository(app.db),
    tokens: tokenService,
    orgs: orgsService,
    throttle: createLoginThrottle(app.redis),
  })
  app.decorate('authService', authService)
  app.decorate('tokenService', tokenService)
  app.decorate('orgsService', orgsService)
  app.decorateRequest('auth', null)
  app.decorateRequest('authFailure', null)

  async function authenticate(request: FastifyRequest, credential: string): Promise<AuthContext> {
    if (looksLikeApiKey(credential)) {
      const key = await authService.findLiveApiKey(credential)
      if (!key) throw new TokenError('unknown, revoked or expired API key')
      const creator = await memberships.get(key.createdBy)
      const creatorRole = creator.roles.get(key.orgId)
      // A key is never more than its creator is now: leaving the org disables it.
      if (!creatorRole) throw new TokenError('the creator of this API key left its organization')
      return {
        via: 'api-key',
        userId: key.createdBy,
        apiKey: { id: key.id, orgId: key.orgId },
        scopes: new Set(key.scopes as Scope[]),
        roles: new Map([[key.orgId, creatorRole]]),
        orgs: creator.orgs.filter((org) => org.orgId === key.orgId),
      }
    }
    const verified = await tokenService.verify(credential)
    const userId =
      verified.issuer === 'self'
        ? verified.subject
        : await authService.provisionExternal({
            issuer: config.AUTH_EXTERNAL_ISSUER as string,
            subject: verified.subject,
            ...(verified.email ? { email: verified.email } : {}),
            ...(verified.name ? { name: verified.name } : {}),
          })
    const { roles, orgs } = await memberships.get(userId)
    if (verified.issuer === 'self' && roles.size === 0) {
      // Every account has a personal org; none means the account is gone.
      throw new TokenError('unknown account')
    }
    request.log.trace({ via: verified.issuer }, 'authenticated')
    return {
      via: verified.issuer === 'self' ? 'access-token' : 'external-token',
      userId,
      apiKey: null,
      scopes: null,
      roles,
      orgs,
    }
  }

  async function resolveCaller(request: FastifyRequest, header: string) {
    const match = /^Bearer +([\x21-\x7e]+) *$/i.exec(header)
    if (!match?.[1]) {
      request.authFailure = 'The Authorization header must be "Bearer <token>".'
      return
    }
    try {
      request.auth = await authenticate(request, match[1])
      request.userId = request.auth.userId
    } catch (error) {
      if (!(error instanceof TokenError)) throw error
      request.log.debug({ reason: error.message }, 'credential refused')
      request.authFailure = 'The access token or API key is invalid or expired.'
    }
  }

  // Callback style so that requests without credentials pay no promise on the hot path.
  app.addHook('onRequest', (request, _reply, done) => {
    const header = request.headers.authorization
    if (!header) return done()
    resolveCaller(request, header).then(() => done(), done)
  })
}

export default fp(authPlugin, { name: 'auth', fastify: '5.x', dependencies: ['db', 'crypto', 'redis', 'billing'] })
