import { createHmac, randomUUID } from 'node:crypto'
import { and, eq } from 'drizzle-orm'
import type { FastifyInstance } from 'fastify'
import t from 'tap'
import { externalIdentities, memberships, orgs, users } from '../../src/db/schema/index.js'
import { type FakeIdp, startFakeIdp } from '../fakes/jwks-server.js'
import { buildTestApp } from '../helper.js'
import { assertInvalidToken, b64url, me, signup } from './support.js'

const AUDIENCE = 'backplane-test'

let app: FastifyInstance
/** The identity provider the server trusts. */
let idp: FakeIdp
/** Another provider, with its own key and issuer, that the server does not trust. */
let stranger: FakeIdp

t.before(async () => {
  idp = await startFakeIdp({ alg: 'RS256', defaultAudience: AUDIENCE })
  stranger = await startFakeIdp({ alg: 'ES256', defaultAudience: AUDIENCE })
  t.teardown(() => idp.close())
  t.teardown(() => stranger.close())
  app = await buildTestApp(t, {
    env: {
      AUTH_EXTERNAL_JWKS_URL: idp.jwksUrl,
      AUTH_EXTERNAL_ISSUER: idp.issuer,
      AUTH_EXTERNAL_AUDIENCE: AUDIENCE,
    },
  })
})

async function identitiesOf(subject: string) {
  return app.db
    .select()
    .from(externalIdentities)
    .where(and(eq(externalIdentities.issuer, idp.issuer), eq(externalIdentities.subject, subject)))
}

async function personalOrgsOf(userId: string) {
  return app.db.select().from(orgs).where(eq(orgs.personalFor, userId))
}

t.test('a token of the configured provider is accepted; its user is provisioned on first sight', async (t) => {
  const subject = `sub-${randomUUID()}`
  const email = `Ext.User+${randomUUID().slice(0, 8)}@Example.COM`
  t.equal((await identitiesOf(subject)).length, 0, 'unknown before the first request')

  const response = await me(app, await idp.mint({ sub: subject, email, name: 'Ext User' }))
  t.equal(response.statusCode, 200)
  const body = response.json()
  t.equal(body.authenticatedVia, 'external-token')
  t.equal(body.scopes, null)
  t.match(body.user.id, /^usr_/)
  t.equal(body.user.email, email.toLowerCase(), 'the email claim, normalised')
  t.equal(body.user.name, 'Ext User')
  t.equal(body.memberships.length, 1, 'one membership')
  t.equal(body.memberships[0].personal, true, 'in a personal org')
  t.equal(body.memberships[0].role, 'owner', 'as its owner')

  const identities = await identitiesOf(subject)
  t.equal(identities.length, 1)
  t.equal(identities[0]?.userId, body.user.id)
  const [user] = await app.db.select().from(users).where(eq(users.id, body.user.id))
  t.equal(user?.passwordHash, null, 'no password: this account signs in through the provider only')

  const orgId = body.memberships[0].orgId
  const audit = await app.inject({
    method: 'GET',
    url: `/api/v1/orgs/${orgId}/audit-log`,
    headers: { authorization: `Bearer ${await idp.mint({ sub: subject, email })}` },
  })
  t.equal(audit.statusCode, 200)
  t.ok(
    (audit.json().data as { action: string }[]).some((entry) => entry.action === 'auth.external_provisioned'),
    'the provisioning is audited',
  )
})

t.test('the same (issuer, subject) maps to the same user, whatever else the token says', async (t) => {
  const subject = `sub-${randomUUID()}`
  const email = `repeat-${randomUUID()}@example.com`
  const first = (await me(app, await idp.mint({ sub: subject, email, name: 'Repeat' }))).json()
  const again = (await me(app, await idp.mint({ sub: subject, email, name: 'Repeat' }))).json()
  const renamed = await me(app, await idp.mint({ sub: subject, email: `changed-${randomUUID()}@example.com` }))
  const noEmail = await me(app, await idp.mint({ sub: subject, email: undefined, name: undefined }))
  t.equal(again.user.id, first.user.id)
  t.equal(renamed.statusCode, 200)
  t.equal(renamed.json().user.id, first.user.id, 'a changed email claim does not create another account')
  t.equal(noEmail.json().user.id, first.user.id, 'nor does a token without an email claim')
  t.equal((await identitiesOf(subject)).length, 1, 'one identity row')
  t.equal((await app.db.select().from(users).where(eq(users.email, email))).length, 1, 'one user')
  t.equal((await personalOrgsOf(first.user.id)).length, 1, 'one personal org')
  t.equal((await app.db.select().from(memberships).where(eq(memberships.userId, first.user.id))).length, 1)
})

t.test('concurrent first requests of one identity provision it once', async (t) => {
  for (const withEmail of [true, false]) {
    const subject = `sub-${randomUUID()}`
    const email = `race-${randomUUID()}@example.com`
    const tokens = await Promise.all(
      Array.from({ length: 6 }, () => idp.mint({ sub: subject, email: withEmail ? email : undefined })),
    )
    const responses = await Promise.all(tokens.map((token) => me(app, token)))
    const label = withEmail ? 'with an email claim' : 'without an email claim'
    t.same(
      responses.map((response) => response.statusCode),
      Array(6).fill(200),
      `every racing request succeeds (${label})`,
    )
    const ids = new Set(responses.map((response) => response.json().user.id))
    t.equal(ids.size, 1, `one user id (${label})`)
    const [userId] = [...ids] as [string]
    t.equal((await identitiesOf(subject)).length, 1, `one identity row (${label})`)
    t.equal((await personalOrgsOf(userId)).length, 1, `one personal org (${label})`)
    if (withEmail) t.equal((await app.db.select().from(users).where(eq(users.email, email))).length, 1, 'one user')
    t.equal(
      responses.every((response) => response.json().memberships.length === 1),
      true,
      'every response shows exactly the one personal membership',
    )
  }
})

t.test('two subjects claiming the same email get separate accounts', async (t) => {
  const email = `shared-${randomUUID()}@example.com`
  const first = await me(app, await idp.mint({ sub: `sub-${randomUUID()}`, email, name: 'First' }))
  const second = await me(app, await idp.mint({ sub: `sub-${randomUUID()}`, email, name: 'Second' }))
  t.equal(first.statusCode, 200)
  t.equal(second.statusCode, 200)
  t.not(second.json().user.id, first.json().user.id, 'an email claim alone never opens an existing account')
  const firstOrg = first.json().memberships[0].orgId
  t.notOk(
    (second.json().memberships as { orgId: string }[]).some((membership) => membership.orgId === firstOrg),
    "the second subject is not in the first one's org",
  )
  t.equal(second.json().memberships.length, 1)
  t.equal((await personalOrgsOf(first.json().user.id)).length, 1, 'the first account still has one personal org')
})

t.test('an external identity is never attached to a password account with the same email', async (t) => {
  const local = await signup(app, 'Local')
  const response = await me(app, await idp.mint({ sub: `sub-${randomUUID()}`, email: local.user.email }))
  t.equal(response.statusCode, 200)
  t.not(response.json().user.id, local.user.id, 'a separate account')
  t.match(response.json().user.email, /@external\.invalid$/, 'with a placeholder address that cannot collide')
  const localMe = (await me(app, local.accessToken)).json()
  t.equal(localMe.user.email, local.user.email, 'the password account is untouched')
  t.equal(localMe.memberships.length, 1)
  t.equal(localMe.authenticatedVia, 'access-token', "the server's own tokens still work alongside the provider")
})

t.test('a token of another issuer is refused', async (t) => {
  assertInvalidToken(t, await me(app, await stranger.mint({ email: 'x@example.com' })), 'its own issuer and key')
  assertInvalidToken(
    t,
    await me(app, await stranger.mint({ iss: idp.issuer }, { kid: idp.kid })),
    "the trusted issuer's name and kid, signed with another key",
  )
  assertInvalidToken(
    t,
    await me(app, await stranger.mint({ iss: idp.issuer })),
    "the trusted issuer's name, with a kid it does not publish",
  )
  assertInvalidToken(t, await me(app, await idp.mint({ iss: `${idp.issuer}/` })), 'an issuer that merely looks alike')
})

t.test('wrong audience, expired, missing subject: refused', async (t) => {
  assertInvalidToken(t, await me(app, await idp.mint({ aud: 'another-app' })), 'another audience')
  assertInvalidToken(t, await me(app, await idp.mint({ aud: undefined })), 'no audience')
  assertInvalidToken(t, await me(app, await idp.mint({ aud: 'http://localhost:3000/api' })), "this API's own audience")
  const now = Math.floor(Date.now() / 1000)
  assertInvalidToken(t, await me(app, await idp.mint({ iat: now - 600, exp: now - 120 })), 'expired 120 s ago')
  assertInvalidToken(t, await me(app, await idp.mint({ exp: undefined })), 'no expiry')
  assertInvalidToken(t, await me(app, await idp.mint({ sub: undefined })), 'no subject')
  for (const sub of ['', 'x'.repeat(256), 42, { id: 'x' }, ['a'], null, true]) {
    const label = `subject ${JSON.stringify(sub).slice(0, 20)}: not a non-empty string of at most 255 characters`
    assertInvalidToken(t, await me(app, await idp.mint({ sub })), label)
  }
  assertInvalidToken(t, await me(app, await idp.mint({ nbf: now + 600 })), 'not yet valid')
  const withinLeeway = await me(app, await idp.mint({ iat: now - 300, exp: now - 30 }))
  t.equal(withinLeeway.statusCode, 200, 'expired 30 s ago: within the clock-skew leeway')
})

t.test("symmetric and unsigned tokens in the provider's name are refused", async (t) => {
  const payload = b64url({
    iss: idp.issuer,
    aud: AUDIENCE,
    sub: `sub-${randomUUID()}`,
    iat: Math.floor(Date.now() / 1000),
    exp: Math.floor(Date.now() / 1000) + 300,
  })
  const secrets: [string, string][] = [
    ['the JWK as JSON', JSON.stringify(idp.publicJwk)],
    ['the modulus', idp.publicJwk.n ?? ''],
    ['an arbitrary secret', 'secret'],
  ]
  for (const [label, secret] of secrets) {
    const header = b64url({ alg: 'HS256', kid: idp.kid, typ: 'JWT' })
    const mac = createHmac('sha256', secret).update(`${header}.${payload}`).digest('base64url')
    assertInvalidToken(t, await me(app, `${header}.${payload}.${mac}`), `HS256 with ${label}`)
  }
  assertInvalidToken(t, await me(app, `${b64url({ alg: 'none', typ: 'JWT' })}.${payload}.`), 'alg none')
  t.equal(
    (await identitiesOf(JSON.parse(Buffer.from(payload, 'base64url').toString()).sub)).length,
    0,
    'nobody provisioned',
  )
})

t.test('the provider being down does not break verification of cached keys, nor the app', async (t) => {
  const subject = `sub-${randomUUID()}`
  t.equal((await me(app, await idp.mint({ sub: subject }))).statusCode, 200)
  const fetchesBefore = idp.jwksRequests
  t.ok(fetchesBefore >= 1, 'the JWKS was fetched')
  for (let i = 0; i < 5; i++) t.equal((await me(app, await idp.mint({ sub: subject }))).statusCode, 200)
  t.equal(idp.jwksRequests, fetchesBefore, 'new tokens of a known key are verified with the cached JWKS')

  await idp.close()
  const afterOutage = await me(app, await idp.mint({ sub: subject }))
  t.equal(afterOutage.statusCode, 200, 'a never-seen token of a cached key still verifies while the provider is down')
  t.equal(afterOutage.json().authenticatedVia, 'external-token')

  const unknownKid = await me(app, await idp.mint({ sub: subject }, { kid: 'rotated-at-the-provider' }))
  assertInvalidToken(t, unknownKid, 'a kid that would need a JWKS fetch is refused, not a server error')
  const health = await app.inject({ method: 'GET', url: '/health' })
  t.equal(health.statusCode, 200, 'the app keeps serving')
  const local = await signup(app, 'Still Here')
  t.equal((await me(app, local.accessToken)).statusCode, 200, 'and its own tokens keep working')
})
