import type { SealedColumn } from '../../db/reseal.js'
import { signingKeys } from '../../db/schema/index.js'
import { randomUUID } from 'node:crypto'
import {
  createRemoteJWKSet,
  decodeJwt,
  exportJWK,
  generateKeyPair,
  importJWK,
  type JWK,
  type JWTPayload,
  type JWTVerifyGetKey,
  jwtVerify,
  SignJWT,
} from 'jose'
import { LRUCache } from 'lru-cache'
import type { CryptoBox } from '../../lib/crypto-box.js'
import type { AuthRepository } from './auth-repository.js'

export const ACCESS_TOKEN_TTL_SECONDS = 15 * 60
/** RFC 8725: accept a little clock skew between issuer and verifier, never more than a minute. */
export const CLOCK_TOLERANCE_SECONDS = 60
const ALGORITHM = 'EdDSA'
/** What asymmetric algorithms an external identity provider may use; never HS*, never none. */
const EXTERNAL_ALGORITHMS = ['RS256', 'RS384', 'RS512', 'PS256', 'ES256', 'ES384', 'EdDSA']
/** How often a running instance looks for keys added by `npm run keys:rotate` elsewhere. */
const KEY_REFRESH_MS = 5 * 60_000
/** When a token names an unknown kid, reload keys at most this often (a stranger cannot force DB reads). */
const UNKNOWN_KID_RELOAD_MS = 30_000

type KeyLike = Awaited<ReturnType<typeof importJWK>>

interface LoadedKey {
  kid: string
  publicJwk: JWK
  publicKey: KeyLike
  privateKey: KeyLike | null
  createdAt: Date
  retiredAt: Date | null
}

export interface VerifiedToken {
  issuer: 'self' | 'external'
  subject: string
  expiresAt: number
  /** External tokens: claims used for provisioning. */
  email?: string
  name?: string
}

export class TokenError extends Error {}

export interface TokenServiceOptions {
  repository: AuthRepository
  cryptoBox: CryptoBox
  issuer: string
  audience: string
  external?: { jwksUrl: string; issuer: string; audience: string }
}

/**
 * Access tokens: EdDSA (Ed25519) JWTs signed with keys kept encrypted in the database, published
 * as a JWKS, rotated with `npm run keys:rotate`. Verification pins the algorithm, issuer,
 * audience, `typ` and expiry, and refuses kids it does not own. Verified tokens are cached until
 * they expire, so a signature is checked once per token, not once per request.
 */
/** What a sealed private key is bound to: its key id. */
export const signingKeyAad = (kid: string) => `signing-key:${kid}`

/** The signing keys' private halves, for re-sealing under a new instance key. */
export const sealedSigningKeys: SealedColumn = {
  name: 'signing keys',
  table: signingKeys,
  id: signingKeys.kid,
  column: signingKeys.privateJwkSealed,
  key: 'privateJwkSealed',
  aad: signingKeyAad,
}

export function createTokenService(options: TokenServiceOptions) {
  const { repository, cryptoBox, issuer, audience } = options
  let keys: LoadedKey[] = []
  let loadedAt = 0
  let lastUnknownKidReload = 0
  const verified = new LRUCache<string, VerifiedToken>({ max: 50_000 })
  const remoteJwks = options.external
    ? createRemoteJWKSet(new URL(options.external.jwksUrl), {
        timeoutDuration: 5000,
        cooldownDuration: 30_000,
        cacheMaxAge: 10 * 60_000,
      })
    : null

  const aadFor = signingKeyAad

  async function load(): Promise<void> {
    const rows = await repository.listSigningKeys()
    keys = await Promise.all(
      rows.map(async (row) => {
        const publicJwk = row.publicJwk as JWK
        const privateJwk = row.retiredAt
          ? null
          : (JSON.parse(cryptoBox.open(row.privateJwkSealed, aadFor(row.kid))) as JWK)
        return {
          kid: row.kid,
          publicJwk,
          publicKey: await importJWK(publicJwk, ALGORITHM),
          privateKey: privateJwk ? await importJWK(privateJwk, ALGORITHM) : null,
          createdAt: row.createdAt,
          retiredAt: row.retiredAt,
        }
      }),
    )
    loadedAt = Date.now()
  }

  async function ensureFresh() {
    if (Date.now() - loadedAt > KEY_REFRESH_MS) await load()
    if (!signingKey()) await init()
  }

  /** Loads keys, generating the first one on a new database. */
  async function init() {
    await load()
    if (!signingKey()) await rotate()
  }

  function signingKey(): LoadedKey | undefined {
    return keys.find((key) => key.privateKey && !key.retiredAt)
  }

  /** Generates a new signing key; older keys stop signing but stay published until their tokens expire. */
  async function rotate(): Promise<string> {
    const { publicKey, privateKey } = await generateKeyPair(ALGORITHM, { crv: 'Ed25519', extractable: true })
    const kid = randomUUID()
    const publicJwk = { ...(await exportJWK(publicKey)), kid, alg: ALGORITHM, use: 'sig' }
    const privateJwk = await exportJWK(privateKey)
    await repository.insertSigningKey({
      kid,
      alg: ALGORITHM,
      publicJwk,
      privateJwkSealed: cryptoBox.seal(JSON.stringify(privateJwk), aadFor(kid)),
    })
    await repository.retireSigningKeys(kid, new Date())
    await load()
    return kid
  }

  const resolveOwnKey: JWTVerifyGetKey = async (header) => {
    const find = () => keys.find((key) => key.kid === header.kid)
    let key = find()
    if (!key && header.kid && Date.now() - lastUnknownKidReload > UNKNOWN_KID_RELOAD_MS) {
      lastUnknownKidReload = Date.now()
      await load()
      key = find()
    }
    if (!key) throw new TokenError('unknown key id')
    return key.publicKey
  }

  return {
    init,

    rotate,

    async issueAccessToken(userId: string): Promise<{ token: string; expiresIn: number }> {
      await ensureFresh()
      const key = signingKey()
      if (!key?.privateKey) throw new Error('no signing key')
      const token = await new SignJWT({})
        .setProtectedHeader({ alg: ALGORITHM, kid: key.kid, typ: 'at+jwt' })
        .setIssuer(issuer)
        .setAudience(audience)
        .setSubject(userId)
        .setJti(randomUUID())
        .setIssuedAt()
        .setExpirationTime(`${ACCESS_TOKEN_TTL_SECONDS}s`)
        .sign(key.privateKey)
      return { token, expiresIn: ACCESS_TOKEN_TTL_SECONDS }
    },

    /** Public keys still needed to verify unexpired tokens. */
    async jwks(): Promise<{ keys: JWK[] }> {
      await ensureFresh()
      const horizon = Date.now() - (ACCESS_TOKEN_TTL_SECONDS + CLOCK_TOLERANCE_SECONDS) * 1000
      return {
        keys: keys.filter((key) => !key.retiredAt || key.retiredAt.getTime() > horizon).map((key) => key.publicJwk),
      }
    },

    /** Verifies a bearer JWT from this server or the configured identity provider. */
    async verify(token: string): Promise<VerifiedToken> {
      const cached = verified.get(token)
      if (cached) {
        if (cached.expiresAt + CLOCK_TOLERANCE_SECONDS > Date.now() / 1000) return cached
        verified.delete(token)
      }
      let claimedIssuer: string | undefined
      try {
        claimedIssuer = decodeJwt(token).iss
      } catch {
        throw new TokenError('malformed token')
      }
      let payload: JWTPayload
      let result: VerifiedToken
      if (remoteJwks && options.external && claimedIssuer === options.external.issuer) {
        try {
          ;({ payload } = await jwtVerify(token, remoteJwks, {
            algorithms: EXTERNAL_ALGORITHMS,
            issuer: options.external.issuer,
            audience: options.external.audience,
            clockTolerance: CLOCK_TOLERANCE_SECONDS,
            requiredClaims: ['sub', 'exp'],
          }))
        } catch (error) {
          throw new TokenError(error instanceof Error ? error.message : 'invalid token')
        }
        // jose checks only that `sub` is present; an identity key must be a real string (OIDC: <= 255).
        if (typeof payload.sub !== 'string' || payload.sub.length === 0 || payload.sub.length > 255) {
          throw new TokenError('the sub claim must be a non-empty string of at most 255 characters')
        }
        result = {
          issuer: 'external',
          subject: payload.sub as string,
          expiresAt: payload.exp as number,
          ...(typeof payload.email === 'string' ? { email: payload.email } : {}),
          ...(typeof payload.name === 'string' ? { name: payload.name } : {}),
        }
      } else {
        try {
          ;({ payload } = await jwtVerify(token, resolveOwnKey, {
            algorithms: [ALGORITHM],
            issuer,
            audience,
            typ: 'at+jwt',
            clockTolerance: CLOCK_TOLERANCE_SECONDS,
            requiredClaims: ['sub', 'exp', 'iat', 'jti'],
          }))
        } catch (error) {
          throw new TokenError(error instanceof Error ? error.message : 'invalid token')
        }
        result = { issuer: 'self', subject: payload.sub as string, expiresAt: payload.exp as number }
      }
      const ttl = (result.expiresAt + CLOCK_TOLERANCE_SECONDS) * 1000 - Date.now()
      if (ttl > 0) verified.set(token, result, { ttl })
      return result
    },
  }
}

export type TokenService = ReturnType<typeof createTokenService>
