import { createHmac, randomUUID } from 'node:crypto'
import { eq } from 'drizzle-orm'
import type { FastifyInstance } from 'fastify'
import { exportJWK, generateKeyPair, type JWK, SignJWT } from 'jose'
import t from 'tap'
import { signingKeys, users } from '../../src/db/schema/index.js'
import { buildTestApp } from '../helper.js'
import { assertInvalidToken, b64url, decodeParts, me, PASSWORD, signup, type TokenResponse } from './support.js'

const PUBLIC_URL = 'https://api.backplane.test'
const ISSUER = PUBLIC_URL
const AUDIENCE = `${PUBLIC_URL}/api`

type PrivateKey = Awaited<ReturnType<typeof generateKeyPair>>['privateKey']

interface TestKey {
  kid: string
  privateKey: PrivateKey
  privateJwk: JWK
  publicJwk: JWK
}

async function makeKey(): Promise<TestKey> {
  const { publicKey, privateKey } = await generateKeyPair('EdDSA', { crv: 'Ed25519', extractable: true })
  const kid = `test-${randomUUID()}`
  return {
    kid,
    privateKey,
    privateJwk: await exportJWK(privateKey),
    publicJwk: { ...(await exportJWK(publicKey)), kid, alg: 'EdDSA', use: 'sig' },
  }
}

const now = () => Math.floor(Date.now() / 1000)

/**
 * Signs an EdDSA JWT with `key`. Claims and header fields default to what the server itself issues;
 * a value of `undefined` leaves that claim or header field out.
 */
async function signWith(
  key: TestKey,
  claims: Record<string, unknown> = {},
  header: Record<string, unknown> = {},
): Promise<string> {
  const payload = Object.fromEntries(
    Object.entries({
      iss: ISSUER,
      aud: AUDIENCE,
      sub: alice.user.id,
      jti: randomUUID(),
      iat: now(),
      exp: now() + 900,
      ...claims,
    }).filter(([, value]) => value !== undefined),
  )
  const protectedHeader = Object.fromEntries(
    Object.entries({ alg: 'EdDSA', kid: key.kid, typ: 'at+jwt', ...header }).filter(([, value]) => value !== undefined),
  )
  return new SignJWT(payload).setProtectedHeader(protectedHeader as { alg: string }).sign(key.privateKey)
}

let app: FastifyInstance
let alice: TokenResponse
let bob: TokenResponse
/** A key registered in the server's `signing_keys` table, sealed exactly like the server's own. */
let ownKey: TestKey
/** A key the server has never seen. */
let strangerKey: TestKey

t.before(async () => {
  app = await buildTestApp(t, { env: { PUBLIC_URL } })
  ownKey = await makeKey()
  strangerKey = await makeKey()
  await app.db.insert(signingKeys).values({
    kid: ownKey.kid,
    alg: 'EdDSA',
    publicJwk: ownKey.publicJwk,
    privateJwkSealed: app.cryptoBox.seal(JSON.stringify(ownKey.privateJwk), `signing-key:${ownKey.kid}`),
    // Older than the server's own key, so the server keeps signing with its own.
    createdAt: new Date(Date.now() - 3600_000),
  })
  alice = await signup(app, 'Alice')
  bob = await signup(app, 'Bob')
  // The first token naming the new kid makes the server reload its keys (at most once per 30 s),
  // so present one now, before any test spends that reload on an unknown kid.
  const verified = await app.tokenService.verify(await signWith(ownKey))
  if (verified.subject !== alice.user.id) throw new Error('the registered test key was not picked up')
})

t.test('a token the server issued is accepted and has the expected shape', async (t) => {
  const response = await me(app, alice.accessToken)
  t.equal(response.statusCode, 200)
  const body = response.json()
  t.equal(body.user.id, alice.user.id)
  t.equal(body.authenticatedVia, 'access-token')
  t.equal(body.scopes, null)
  t.equal(body.memberships.length, 1)
  t.equal(body.memberships[0].personal, true)
  t.equal(body.memberships[0].role, 'owner')

  t.equal(alice.tokenType, 'Bearer')
  t.equal(alice.expiresIn, 900)
  const { header, payload } = decodeParts(alice.accessToken)
  t.equal(header.alg, 'EdDSA')
  t.equal(header.typ, 'at+jwt')
  t.type(header.kid, 'string')
  t.notOk('jwk' in header || 'jku' in header || 'x5u' in header, 'no key material or key URLs in the header')
  t.equal(payload.iss, ISSUER)
  t.equal(payload.aud, AUDIENCE)
  t.not(payload.aud, payload.iss, 'the audience is not the issuer URL')
  t.equal(payload.sub, alice.user.id)
  t.type(payload.jti, 'string')
  t.equal((payload.exp as number) - (payload.iat as number), 900)
  t.notOk('email' in payload || 'password' in payload, 'no personal data in the token')
})

t.test('a well-formed token signed with a registered key is accepted (control for the matrix)', async (t) => {
  const response = await me(app, await signWith(ownKey))
  t.equal(response.statusCode, 200)
  t.equal(response.json().user.id, alice.user.id)
})

t.test('alg "none" is refused, whatever its spelling', async (t) => {
  const { header, payload } = decodeParts(alice.accessToken)
  const signature = alice.accessToken.split('.')[2]
  for (const alg of ['none', 'None', 'NONE', 'nOnE']) {
    const forged = { ...payload, sub: bob.user.id, jti: randomUUID() }
    const unsigned = `${b64url({ ...header, alg })}.${b64url(forged)}`
    assertInvalidToken(t, await me(app, `${unsigned}.`), `alg ${alg}, empty signature`)
    assertInvalidToken(t, await me(app, `${unsigned}.${signature}`), `alg ${alg}, a real signature of another token`)
  }
  // And with the header of a real token kept intact but no signature at all.
  const [h, p] = alice.accessToken.split('.')
  assertInvalidToken(t, await me(app, `${h}.${p}.`), 'valid header and payload, signature stripped')
})

t.test('HS256 signed with the public key as the HMAC secret is refused (key confusion)', async (t) => {
  const jwks = (await app.inject({ method: 'GET', url: '/.well-known/jwks.json' })).json() as { keys: JWK[] }
  const kid = decodeParts(alice.accessToken).header.kid
  const jwk = jwks.keys.find((key) => key.kid === kid)
  if (!jwk?.x) throw new Error('the server key is not in the JWKS')
  const secrets: [string, Buffer][] = [
    ['raw public key bytes', Buffer.from(jwk.x, 'base64url')],
    ['the x value as text', Buffer.from(jwk.x)],
    ['the JWK as JSON', Buffer.from(JSON.stringify(jwk))],
    ['the JWKS as JSON', Buffer.from(JSON.stringify(jwks))],
  ]
  for (const [label, secret] of secrets) {
    for (const alg of ['HS256', 'HS512']) {
      const header = b64url({ alg, kid, typ: 'at+jwt' })
      const payload = b64url({
        iss: ISSUER,
        aud: AUDIENCE,
        sub: bob.user.id,
        jti: randomUUID(),
        iat: now(),
        exp: now() + 900,
      })
      const hash = alg === 'HS256' ? 'sha256' : 'sha512'
      const mac = createHmac(hash, secret).update(`${header}.${payload}`).digest('base64url')
      assertInvalidToken(t, await me(app, `${header}.${payload}.${mac}`), `${alg} with ${label}`)
    }
  }
})

t.test('claims the server does not issue are refused: issuer, audience, typ', async (t) => {
  const cases: [string, Record<string, unknown>, Record<string, unknown>][] = [
    ['wrong iss', { iss: 'https://evil.example.net' }, {}],
    ['iss with a trailing slash', { iss: `${ISSUER}/` }, {}],
    ['missing iss', { iss: undefined }, {}],
    ['wrong aud', { aud: 'https://other-api.example.com' }, {}],
    ['aud = the issuer URL', { aud: ISSUER }, {}],
    ['aud list without this API', { aud: ['https://a.example.com', 'https://b.example.com'] }, {}],
    ['missing aud', { aud: undefined }, {}],
    ['typ JWT', {}, { typ: 'JWT' }],
    ['typ id_token-like', {}, { typ: 'id+jwt' }],
    ['missing typ', {}, { typ: undefined }],
  ]
  for (const [label, claims, header] of cases) {
    assertInvalidToken(t, await me(app, await signWith(ownKey, claims, header)), label)
  }
  // An audience list that includes this API is fine (RFC 7519 4.1.3).
  const listed = await me(app, await signWith(ownKey, { aud: ['https://a.example.com', AUDIENCE] }))
  t.equal(listed.statusCode, 200, 'aud list including this API is accepted')
})

t.test('expiry: refused beyond the 60 s leeway, accepted within it; nbf in the future refused', async (t) => {
  assertInvalidToken(
    t,
    await me(app, await signWith(ownKey, { iat: now() - 1020, exp: now() - 120 })),
    'expired 120 s ago',
  )
  assertInvalidToken(
    t,
    await me(app, await signWith(ownKey, { iat: now() - 7200, exp: now() - 3600 })),
    'expired 1 h ago',
  )
  const withinLeeway = await me(app, await signWith(ownKey, { iat: now() - 930, exp: now() - 30 }))
  t.equal(withinLeeway.statusCode, 200, 'expired 30 s ago: within the clock-skew leeway')
  assertInvalidToken(t, await me(app, await signWith(ownKey, { nbf: now() + 600 })), 'not valid before 10 min from now')
})

t.test('tokens missing a required claim are refused', async (t) => {
  for (const claim of ['sub', 'exp', 'iat', 'jti']) {
    assertInvalidToken(t, await me(app, await signWith(ownKey, { [claim]: undefined })), `missing ${claim}`)
  }
  assertInvalidToken(t, await me(app, await signWith(ownKey, { exp: 'tomorrow' })), 'non-numeric exp')
})

t.test('an unknown kid, no kid, or an embedded key is refused', async (t) => {
  assertInvalidToken(t, await me(app, await signWith(strangerKey)), 'a key the server never registered')
  assertInvalidToken(
    t,
    await me(app, await signWith(ownKey, {}, { kid: undefined })),
    'no kid (even if the key is known)',
  )
  const serverKid = decodeParts(alice.accessToken).header.kid
  assertInvalidToken(
    t,
    await me(app, await signWith(strangerKey, {}, { kid: serverKid })),
    "a stranger's signature under the server's kid",
  )
  const { kid: _kid, ...strangerPublic } = strangerKey.publicJwk
  assertInvalidToken(
    t,
    await me(app, await signWith(strangerKey, {}, { kid: undefined, jwk: strangerPublic })),
    'a key embedded in the jwk header',
  )
  assertInvalidToken(
    t,
    await me(app, await signWith(strangerKey, {}, { kid: serverKid, jwk: strangerPublic })),
    "an embedded key under the server's kid",
  )
  assertInvalidToken(
    t,
    await me(app, await signWith(strangerKey, {}, { jku: 'https://evil.example.net/jwks.json' })),
    'a jku header pointing elsewhere',
  )
})

t.test('a tampered token is refused', async (t) => {
  // Alice's token was verified (and cached) above; the tampered copies are different strings.
  const [h, p, s] = alice.accessToken.split('.') as [string, string, string]
  const payload = decodeParts(alice.accessToken).payload
  assertInvalidToken(t, await me(app, `${h}.${b64url({ ...payload, sub: bob.user.id })}.${s}`), 'sub changed')
  assertInvalidToken(t, await me(app, `${h}.${b64url({ ...payload, exp: now() + 86400 })}.${s}`), 'exp extended')
  const flipped = s.slice(0, 10) + (s[10] === 'A' ? 'B' : 'A') + s.slice(11)
  assertInvalidToken(t, await me(app, `${h}.${p}.${flipped}`), 'signature altered')
  assertInvalidToken(t, await me(app, `${h}.${p}`), 'signature part missing')
  const { header } = decodeParts(alice.accessToken)
  assertInvalidToken(t, await me(app, `${b64url({ ...header, typ: 'JWT' })}.${p}.${s}`), 'header changed')
  t.equal((await me(app, alice.accessToken)).statusCode, 200, 'the original still works')
})

t.test('malformed credentials are refused, but do not break public routes', async (t) => {
  for (const credential of ['abc', 'a.b.c', 'a.b.c.d.e', '..', `${'x'.repeat(2000)}.y.z`]) {
    assertInvalidToken(t, await me(app, credential), `garbage "${credential.slice(0, 12)}"`)
  }
  const basic = await app.inject({
    method: 'GET',
    url: '/api/v1/auth/me',
    headers: { authorization: `Basic ${Buffer.from('a:b').toString('base64')}` },
  })
  assertInvalidToken(t, basic, 'a Basic authorization header')
  const anonymous = await app.inject({ method: 'GET', url: '/api/v1/auth/me' })
  t.equal(anonymous.statusCode, 401)
  t.equal(anonymous.json().code, 'UNAUTHORIZED', 'no credential at all: UNAUTHORIZED, not INVALID_TOKEN')
  const health = await app.inject({ method: 'GET', url: '/health', headers: { authorization: 'Bearer garbage' } })
  t.equal(health.statusCode, 200, 'a public route ignores a refused credential')
})

t.test('a refresh token is not a bearer credential', async (t) => {
  assertInvalidToken(t, await me(app, alice.refreshToken))
  // Still perfectly good for what it is for.
  const refreshed = await app.inject({
    method: 'POST',
    url: '/api/v1/auth/refresh',
    payload: { refreshToken: alice.refreshToken },
  })
  t.equal(refreshed.statusCode, 200)
})

t.test('API keys: a live key authenticates, a revoked or unknown one is refused', async (t) => {
  const orgId = (await me(app, bob.accessToken)).json().memberships[0].orgId
  const created = await app.inject({
    method: 'POST',
    url: '/api/v1/api-keys',
    headers: { authorization: `Bearer ${bob.accessToken}` },
    payload: { name: 'ci', orgId, scopes: ['projects:read'] },
  })
  t.equal(created.statusCode, 201)
  const { id, key } = created.json()
  t.match(key, /^bpk_/)

  const live = await me(app, key)
  t.equal(live.statusCode, 200)
  t.equal(live.json().authenticatedVia, 'api-key')
  t.same(live.json().scopes, ['projects:read'])
  t.equal(live.json().user.id, bob.user.id)

  const revoked = await app.inject({
    method: 'DELETE',
    url: `/api/v1/api-keys/${id}`,
    headers: { authorization: `Bearer ${bob.accessToken}` },
  })
  t.equal(revoked.statusCode, 204)
  assertInvalidToken(t, await me(app, key), 'the revoked key')
  assertInvalidToken(t, await me(app, `${key.slice(0, -2)}xx`), 'a key that was never issued')
  assertInvalidToken(t, await me(app, 'bpk_'), 'the bare prefix')
})

t.test('tokens of a deleted or nonexistent account are refused', async (t) => {
  const carol = await signup(app, 'Carol')
  t.equal((await me(app, carol.accessToken)).statusCode, 200, 'works (and is now cached) while the account exists')
  await app.db.delete(users).where(eq(users.id, carol.user.id))
  assertInvalidToken(t, await me(app, carol.accessToken), 'the cached token of the deleted account')
  assertInvalidToken(
    t,
    await me(app, await signWith(ownKey, { sub: carol.user.id })),
    'a fresh token for the deleted account',
  )
  assertInvalidToken(t, await me(app, await signWith(ownKey, { sub: 'usr_doesnotexist' })), 'an account never created')
})

t.test('GET /.well-known/jwks.json publishes Ed25519 public keys only, cacheable', async (t) => {
  const response = await app.inject({ method: 'GET', url: '/.well-known/jwks.json' })
  t.equal(response.statusCode, 200)
  t.match(response.headers['content-type'], /^application\/json/)
  t.match(response.headers['cache-control'], /\bpublic\b/)
  t.match(response.headers['cache-control'], /\bmax-age=\d+/)
  const { keys } = response.json() as { keys: JWK[] }
  t.ok(keys.length >= 1)
  const kids = keys.map((key) => key.kid)
  t.ok(kids.includes(decodeParts(alice.accessToken).header.kid as string), 'the signing key is published')
  t.equal(new Set(kids).size, kids.length, 'kids are unique')
  for (const key of keys) {
    t.equal(key.kty, 'OKP')
    t.equal(key.crv, 'Ed25519')
    t.equal(key.alg, 'EdDSA')
    t.equal(key.use, 'sig')
    t.type(key.kid, 'string')
    t.equal(Buffer.from(key.x ?? '', 'base64url').length, 32, 'a 32-byte Ed25519 public key')
    for (const secret of ['d', 'p', 'q', 'dp', 'dq', 'qi', 'k']) t.notOk(secret in key, `no "${secret}"`)
  }
  t.notMatch(response.body, /"d"\s*:/, 'no private member anywhere in the document')
})

t.test('rotation: new kid for new tokens, old tokens still verify, both published, keys sealed', async (t) => {
  const oldKid = decodeParts(alice.accessToken).header.kid as string
  // Issued before the rotation but presented only after it, so it is verified with the retired key.
  const issuedBefore = (await app.tokenService.issueAccessToken(alice.user.id)).token
  t.equal(decodeParts(issuedBefore).header.kid, oldKid)

  const newKid = await app.tokenService.rotate()
  t.not(newKid, oldKid)

  const login = await app.inject({
    method: 'POST',
    url: '/api/v1/auth/login',
    payload: { email: alice.user.email, password: PASSWORD },
  })
  t.equal(login.statusCode, 200)
  const fresh = login.json().accessToken as string
  t.equal(decodeParts(fresh).header.kid, newKid, 'new tokens carry the new kid')
  t.equal((await me(app, fresh)).statusCode, 200, 'a token of the new key verifies')
  t.equal((await me(app, issuedBefore)).statusCode, 200, 'an unexpired token of the retired key still verifies')
  t.equal((await me(app, alice.accessToken)).statusCode, 200, 'so does an already verified one')

  const jwksKids = (
    (await app.inject({ method: 'GET', url: '/.well-known/jwks.json' })).json() as { keys: JWK[] }
  ).keys.map((key) => key.kid)
  t.ok(jwksKids.includes(oldKid), 'the retired key stays published')
  t.ok(jwksKids.includes(newKid), 'the new key is published')

  const rows = await app.db.select().from(signingKeys)
  const byKid = new Map(rows.map((row) => [row.kid, row]))
  t.ok(byKid.get(oldKid)?.retiredAt, 'the old key is retired')
  t.equal(byKid.get(newKid)?.retiredAt, null, 'the new key is active')
  for (const row of [byKid.get(oldKid), byKid.get(newKid)]) {
    if (!row) throw new Error('signing key row missing')
    t.throws(() => JSON.parse(row.privateJwkSealed), `the stored private key of ${row.kid} is not JSON`)
    t.notMatch(row.privateJwkSealed, /"d"|"kty"|Ed25519/, 'no JWK members in clear')
    // Opening it with the instance key proves what it holds, and that the stored text does not contain it.
    const privateJwk = JSON.parse(app.cryptoBox.open(row.privateJwkSealed, `signing-key:${row.kid}`)) as JWK
    t.type(privateJwk.d, 'string')
    t.equal(privateJwk.x, (row.publicJwk as JWK).x, 'the sealed private key belongs to the published public key')
    t.notOk(row.privateJwkSealed.includes(privateJwk.d as string), 'the private d value is not stored in clear')
    t.notOk('d' in (row.publicJwk as JWK), 'the public JWK column holds no private member')
    t.throws(
      () => app.cryptoBox.open(row.privateJwkSealed, 'signing-key:some-other-kid'),
      'a sealed key is bound to its kid',
    )
  }
})

t.test('a token is signature-checked on first sight, then served from the cache until it expires', async (t) => {
  const seen = await signWith(ownKey)
  t.equal((await me(app, seen)).statusCode, 200, 'verified once')
  const unseen = await signWith(ownKey)
  // Remove the key and make the server reload its keyring: it no longer knows this kid.
  await app.db.delete(signingKeys).where(eq(signingKeys.kid, ownKey.kid))
  await app.tokenService.rotate()
  t.equal((await me(app, seen)).statusCode, 200, 'the already verified token is answered from the cache')
  assertInvalidToken(t, await me(app, unseen), 'a token of the removed key not yet seen is checked, and refused')
  const cachedTwice = await app.tokenService.verify(seen)
  t.equal(cachedTwice.subject, alice.user.id)
})
