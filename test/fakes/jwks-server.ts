import { randomUUID } from 'node:crypto'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { exportJWK, generateKeyPair, type JWK, SignJWT } from 'jose'

/**
 * A stand-in for an external OpenID Connect identity provider: a local HTTP server that publishes
 * the JWKS of its own key pair at `/.well-known/jwks.json` (and a minimal discovery document), and
 * mints ID/access tokens signed with that key, issued by its own URL.
 */
export interface FakeIdp {
  /** The issuer (`iss`) of its tokens: its own base URL. */
  readonly issuer: string
  readonly jwksUrl: string
  readonly kid: string
  readonly alg: 'RS256' | 'ES256'
  readonly publicJwk: JWK
  /** How many times the JWKS was fetched. */
  readonly jwksRequests: number
  /**
   * Signs a token. Claims default to a fresh, valid token for `defaultAudience`; a claim given as
   * `undefined` is left out. `header` overrides protected header fields (e.g. another kid).
   */
  mint(claims?: Record<string, unknown>, header?: Record<string, unknown>): Promise<string>
  /** Stops serving (open keep-alive connections included); idempotent. */
  close(): Promise<void>
}

export interface FakeIdpOptions {
  alg?: 'RS256' | 'ES256'
  /** The `aud` of minted tokens unless a test gives another. */
  defaultAudience?: string
}

export async function startFakeIdp(options: FakeIdpOptions = {}): Promise<FakeIdp> {
  const alg = options.alg ?? 'RS256'
  const { publicKey, privateKey } = await generateKeyPair(alg, { extractable: true })
  const kid = `fake-${randomUUID()}`
  const publicJwk: JWK = { ...(await exportJWK(publicKey)), kid, alg, use: 'sig' }
  let jwksRequests = 0
  let closed = false

  const server = createServer((request, response) => {
    const path = new URL(request.url ?? '/', 'http://localhost').pathname
    if (request.method === 'GET' && path === '/.well-known/jwks.json') {
      jwksRequests++
      response.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'public, max-age=600' })
      response.end(JSON.stringify({ keys: [publicJwk] }))
      return
    }
    if (request.method === 'GET' && path === '/.well-known/openid-configuration') {
      response.writeHead(200, { 'content-type': 'application/json' })
      response.end(
        JSON.stringify({
          issuer,
          jwks_uri: `${issuer}/.well-known/jwks.json`,
          id_token_signing_alg_values_supported: [alg],
        }),
      )
      return
    }
    response.writeHead(404, { 'content-type': 'application/json' })
    response.end('{"error":"not_found"}')
  })
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => resolve())
  })
  const { port } = server.address() as AddressInfo
  const issuer = `http://127.0.0.1:${port}`

  return {
    issuer,
    jwksUrl: `${issuer}/.well-known/jwks.json`,
    kid,
    alg,
    publicJwk,
    get jwksRequests() {
      return jwksRequests
    },
    async mint(claims = {}, header = {}) {
      const now = Math.floor(Date.now() / 1000)
      const payload = Object.fromEntries(
        Object.entries({
          iss: issuer,
          aud: options.defaultAudience ?? 'backplane-test',
          sub: `user-${randomUUID()}`,
          iat: now,
          exp: now + 300,
          jti: randomUUID(),
          ...claims,
        }).filter(([, value]) => value !== undefined),
      )
      const protectedHeader = Object.fromEntries(
        Object.entries({ alg, kid, typ: 'JWT', ...header }).filter(([, value]) => value !== undefined),
      )
      return new SignJWT(payload).setProtectedHeader(protectedHeader as { alg: string }).sign(privateKey)
    },
    async close() {
      if (closed) return
      closed = true
      server.closeAllConnections()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    },
  }
}
