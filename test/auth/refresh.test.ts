import { eq } from 'drizzle-orm'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import t from 'tap'
import { refreshTokens } from '../../src/db/schema/index.js'
import { sha256 } from '../../src/modules/auth/auth-service.js'
import { buildTestApp } from '../helper.js'
import { me, PASSWORD, signup, type Test, type TokenResponse, uniqueAddress } from './support.js'

let app: FastifyInstance
/** Every refresh token any response handed out, to check none is stored in clear. */
const seenRefreshTokens: string[] = []

t.before(async () => {
  app = await buildTestApp(t)
})

async function newSession(name = 'Refresher'): Promise<TokenResponse> {
  const session = await signup(app, name)
  seenRefreshTokens.push(session.refreshToken)
  return session
}

async function refresh(refreshToken: unknown): Promise<LightMyRequestResponse> {
  const response = await app.inject({
    method: 'POST',
    url: '/api/v1/auth/refresh',
    remoteAddress: uniqueAddress(),
    payload: { refreshToken },
  })
  if (response.statusCode === 200) seenRefreshTokens.push(response.json().refreshToken)
  return response
}

async function rowOf(refreshToken: string) {
  const [row] = await app.db
    .select()
    .from(refreshTokens)
    .where(eq(refreshTokens.tokenHash, sha256(refreshToken)))
  if (!row) throw new Error('no refresh token row')
  return row
}

function assertInvalidRefresh(t: Test, response: LightMyRequestResponse, message?: string) {
  t.equal(response.statusCode, 401, message ?? 'refused with 401')
  t.match(response.headers['content-type'], /^application\/problem\+json(;|$)/)
  t.equal(response.json().code, 'INVALID_REFRESH_TOKEN')
}

async function personalOrgId(accessToken: string): Promise<string> {
  const memberships = (await me(app, accessToken)).json().memberships as { orgId: string; personal: boolean }[]
  const personal = memberships.find((membership) => membership.personal)
  if (!personal) throw new Error('no personal org')
  return personal.orgId
}

t.test('refresh rotates: new access and refresh tokens, same family, the old token spent', async (t) => {
  const session = await newSession()
  const response = await refresh(session.refreshToken)
  t.equal(response.statusCode, 200)
  t.match(response.headers['content-type'], /^application\/json/)
  const body = response.json() as TokenResponse
  t.equal(body.tokenType, 'Bearer')
  t.equal(body.expiresIn, 900)
  t.equal(body.user.id, session.user.id)
  t.equal(body.user.email, session.user.email)
  t.not(body.refreshToken, session.refreshToken, 'a new refresh token')
  t.not(body.accessToken, session.accessToken, 'a new access token')
  t.match(body.refreshToken, /^bprt_[A-Za-z0-9_-]{43}$/, 'opaque, 256 random bits')

  const who = await me(app, body.accessToken)
  t.equal(who.statusCode, 200, 'the new access token works')
  t.equal(who.json().user.id, session.user.id)

  const oldRow = await rowOf(session.refreshToken)
  const newRow = await rowOf(body.refreshToken)
  t.ok(oldRow.rotatedAt, 'the presented token is marked rotated')
  t.equal(oldRow.revokedAt, null)
  t.equal(newRow.familyId, oldRow.familyId, 'the new token continues the family')
  t.equal(newRow.rotatedAt, null)
  t.equal(newRow.userId, session.user.id)
  const days = (newRow.expiresAt.getTime() - Date.now()) / 86_400_000
  t.ok(days > 29.9 && days <= 30, `the refresh token lives 30 days (${days.toFixed(2)})`)

  const again = await refresh(body.refreshToken)
  t.equal(again.statusCode, 200, 'the new refresh token can itself be rotated')
})

t.test('reuse of a rotated token after the grace period: 401, the family revoked, audited', async (t) => {
  const session = await newSession('Victim')
  const orgId = await personalOrgId(session.accessToken)
  // Another sign-in of the same user: a separate family that must survive.
  const otherLogin = await app.inject({
    method: 'POST',
    url: '/api/v1/auth/login',
    remoteAddress: uniqueAddress(),
    payload: { email: session.user.email, password: PASSWORD },
  })
  t.equal(otherLogin.statusCode, 200)
  const other = otherLogin.json() as TokenResponse

  const first = await refresh(session.refreshToken)
  t.equal(first.statusCode, 200)
  const second = await refresh(first.json().refreshToken)
  t.equal(second.statusCode, 200)
  const newest = second.json() as TokenResponse

  // The legitimate client rotated long ago; now the stolen original is replayed.
  await app.db
    .update(refreshTokens)
    .set({ rotatedAt: new Date(Date.now() - 60_000) })
    .where(eq(refreshTokens.tokenHash, sha256(session.refreshToken)))
  assertInvalidRefresh(t, await refresh(session.refreshToken), 'the replayed token is refused')
  assertInvalidRefresh(t, await refresh(newest.refreshToken), 'the newest token of the family is revoked too')
  assertInvalidRefresh(t, await refresh(first.json().refreshToken), 'and every other one')

  const familyId = (await rowOf(session.refreshToken)).familyId
  const family = await app.db.select().from(refreshTokens).where(eq(refreshTokens.familyId, familyId))
  t.equal(family.length, 3)
  t.ok(
    family.every((row) => row.revokedAt !== null),
    'every token of the family is revoked',
  )

  t.equal((await refresh(other.refreshToken)).statusCode, 200, 'another sign-in of the same user is unaffected')

  const audit = await app.inject({
    method: 'GET',
    url: `/api/v1/orgs/${orgId}/audit-log`,
    headers: { authorization: `Bearer ${session.accessToken}` },
  })
  t.equal(audit.statusCode, 200)
  const entries = audit.json().data as { action: string; actorUserId: string; metadata: Record<string, unknown> }[]
  const detected = entries.filter((entry) => entry.action === 'auth.refresh_reuse_detected')
  t.equal(detected.length, 1, 'one reuse-detected entry')
  t.equal(detected[0]?.actorUserId, session.user.id)
  t.same(detected[0]?.metadata, { familyId })
  t.notMatch(audit.body, session.refreshToken, 'the audit log holds no token')
})

t.test('two concurrent refreshes of the same token both succeed, in the same family', async (t) => {
  const session = await newSession('Two Tabs')
  const [a, b] = await Promise.all([refresh(session.refreshToken), refresh(session.refreshToken)])
  t.equal(a?.statusCode, 200, 'the first tab')
  t.equal(b?.statusCode, 200, 'the second tab')
  const tabA = a?.json() as TokenResponse
  const tabB = b?.json() as TokenResponse
  t.not(tabA.refreshToken, tabB.refreshToken, 'each gets its own refresh token')

  t.equal((await me(app, tabA.accessToken)).statusCode, 200)
  t.equal((await me(app, tabB.accessToken)).statusCode, 200)

  const original = await rowOf(session.refreshToken)
  const rowA = await rowOf(tabA.refreshToken)
  const rowB = await rowOf(tabB.refreshToken)
  t.equal(rowA.familyId, original.familyId)
  t.equal(rowB.familyId, original.familyId)
  t.equal(rowA.revokedAt, null)
  t.equal(rowB.revokedAt, null)

  t.equal((await refresh(tabA.refreshToken)).statusCode, 200, "tab A's refresh token works")
  t.equal((await refresh(tabB.refreshToken)).statusCode, 200, "tab B's refresh token works")
})

t.test('logout revokes the whole family; other sessions survive; unknown tokens are a no-op', async (t) => {
  const session = await newSession('Leaver')
  const otherLogin = await app.inject({
    method: 'POST',
    url: '/api/v1/auth/login',
    remoteAddress: uniqueAddress(),
    payload: { email: session.user.email, password: PASSWORD },
  })
  const other = otherLogin.json() as TokenResponse
  const rotated = (await refresh(session.refreshToken)).json() as TokenResponse

  const logout = await app.inject({
    method: 'POST',
    url: '/api/v1/auth/logout',
    payload: { refreshToken: rotated.refreshToken },
  })
  t.equal(logout.statusCode, 204)
  t.equal(logout.body, '')
  assertInvalidRefresh(t, await refresh(rotated.refreshToken), 'the token logged out with')
  assertInvalidRefresh(t, await refresh(session.refreshToken), 'its ancestor (within the grace period)')
  const familyId = (await rowOf(session.refreshToken)).familyId
  const family = await app.db.select().from(refreshTokens).where(eq(refreshTokens.familyId, familyId))
  t.ok(
    family.every((row) => row.revokedAt !== null),
    'every token of the family is revoked',
  )
  t.equal((await refresh(other.refreshToken)).statusCode, 200, 'the other sign-in still refreshes')

  for (const refreshToken of ['bprt_unknown', 'garbage', rotated.refreshToken]) {
    const again = await app.inject({ method: 'POST', url: '/api/v1/auth/logout', payload: { refreshToken } })
    t.equal(again.statusCode, 204, 'logout does not reveal whether a token exists')
  }
})

t.test('garbage, foreign and malformed refresh tokens are refused', async (t) => {
  const session = await newSession('Prober')
  const candidates = [
    'garbage',
    'bprt_',
    `bprt_${'A'.repeat(43)}`,
    `${session.refreshToken}x`,
    session.refreshToken.slice(0, -1),
    session.refreshToken.toUpperCase(),
    session.accessToken.length <= 200 ? session.accessToken : session.accessToken.slice(0, 200),
    'bpk_notarefreshtoken',
  ]
  for (const candidate of candidates) {
    assertInvalidRefresh(t, await refresh(candidate), `refused: ${candidate.slice(0, 16)}...`)
  }
  for (const payload of [
    {},
    { refreshToken: '' },
    { refreshToken: 42 },
    { refreshToken: session.refreshToken, x: 1 },
  ]) {
    const response = await app.inject({
      method: 'POST',
      url: '/api/v1/auth/refresh',
      remoteAddress: uniqueAddress(),
      payload,
    })
    t.equal(response.statusCode, 400, `malformed body ${JSON.stringify(payload).slice(0, 40)}: 400`)
    t.match(response.headers['content-type'], /^application\/problem\+json/)
  }
  t.equal((await refresh(session.refreshToken)).statusCode, 200, 'the probing did not spend the real token')
})

t.test('an expired refresh token is refused', async (t) => {
  const session = await newSession('Sleeper')
  await app.db
    .update(refreshTokens)
    .set({ expiresAt: new Date(Date.now() - 1000) })
    .where(eq(refreshTokens.tokenHash, sha256(session.refreshToken)))
  assertInvalidRefresh(t, await refresh(session.refreshToken))
  const row = await rowOf(session.refreshToken)
  t.equal(row.rotatedAt, null, 'an expired token is not rotated')
})

t.test('only hashes of refresh tokens are stored', async (t) => {
  const rows = await app.db.select().from(refreshTokens)
  t.ok(seenRefreshTokens.length >= 10, `checked against ${seenRefreshTokens.length} issued tokens`)
  t.ok(rows.length >= seenRefreshTokens.length)
  const stored = JSON.stringify(rows)
  for (const token of seenRefreshTokens) {
    const secret = token.slice('bprt_'.length)
    t.notOk(stored.includes(secret), 'no column holds the token, or its random part')
    t.ok(
      rows.some((row) => row.tokenHash === sha256(token)),
      'a row holds its hash',
    )
  }
  t.ok(
    rows.every((row) => !row.tokenHash.startsWith('bprt_')),
    'no token_hash looks like a token',
  )
})
