import { dictionary } from '@zxcvbn-ts/language-common'
import { eq } from 'drizzle-orm'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { Redis } from 'ioredis'
import t from 'tap'
import { users } from '../../src/db/schema/index.js'
import { buildTestApp, LogCapture, redisForTest } from '../helper.js'
import {
  account,
  assertProblem,
  bearer,
  createApiKey,
  me,
  type TokenResponse,
  uniqueAddress,
  uniqueEmail,
  uniquePassword,
} from './support.js'

// One app for the whole file, logging at the most verbose level into a capture, so that the
// secret-leak check at the end also covers every request the other tests made.
const logs = new LogCapture()
const app = await buildTestApp(t, { logs, env: { LOG_LEVEL: 'trace' } })

function signupRequest(
  target: FastifyInstance,
  payload: Record<string, unknown>,
  address = uniqueAddress(),
): Promise<LightMyRequestResponse> {
  return target.inject({ method: 'POST', url: '/api/v1/auth/signup', remoteAddress: address, payload })
}

function loginRequest(
  target: FastifyInstance,
  email: string,
  password: string,
  address: string,
): Promise<LightMyRequestResponse> {
  return target.inject({
    method: 'POST',
    url: '/api/v1/auth/login',
    remoteAddress: address,
    payload: { email, password },
  })
}

async function storedUser(email: string) {
  return app.db.select().from(users).where(eq(users.email, email))
}

const median = (values: number[]) => {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.floor(sorted.length / 2)] as number
}

t.test('signup answers 201 with tokens and creates a personal org owned by the user', async (t) => {
  const email = uniqueEmail('signup')
  const password = uniquePassword()
  const response = await signupRequest(app, { email, password, name: 'Sam Signup' })
  t.equal(response.statusCode, 201)
  t.match(response.headers['content-type'], /^application\/json/)
  const body = response.json() as TokenResponse
  t.same(Object.keys(body).sort(), ['accessToken', 'expiresIn', 'refreshToken', 'tokenType', 'user'])
  t.equal(body.tokenType, 'Bearer')
  t.equal(body.expiresIn, 900)
  t.type(body.accessToken, 'string')
  t.ok(body.accessToken.length > 20, 'an access token')
  t.type(body.refreshToken, 'string')
  t.ok(body.refreshToken.length > 20, 'a refresh token')
  t.not(body.accessToken, body.refreshToken)
  t.match(body.user.id, /^usr_/)
  t.equal(body.user.email, email)
  t.equal(body.user.name, 'Sam Signup')
  t.same(Object.keys(body.user).sort(), ['createdAt', 'email', 'id', 'name'], 'the user carries no hash')

  const whoami = await me(app, body.accessToken)
  t.equal(whoami.statusCode, 200)
  const profile = whoami.json()
  t.equal(profile.user.id, body.user.id)
  t.equal(profile.authenticatedVia, 'access-token')
  t.equal(profile.scopes, null, 'a user session has every scope')
  t.equal(profile.memberships.length, 1, 'exactly one org: the personal one')
  t.match(profile.memberships[0], { personal: true, role: 'owner', orgId: /^org_/ })
})

t.test('emails are normalised: surrounding spaces and case do not make a second account', async (t) => {
  // The exact example: the first signup carries spaces and capitals.
  const first = await signupRequest(app, { email: '  Ann@EXAMPLE.com ', password: uniquePassword() })
  t.equal(first.statusCode, 201, `"  Ann@EXAMPLE.com " is accepted (got ${first.body.slice(0, 200)})`)
  if (first.statusCode === 201) t.equal(first.json().user.email, 'ann@example.com', 'stored trimmed and lower-cased')
  assertProblem(
    t,
    await signupRequest(app, { email: 'ann@example.com', password: uniquePassword() }),
    409,
    'EMAIL_TAKEN',
    'the same mailbox again',
  )
})

t.test('an account is found whatever the casing (and spacing) of its email', async (t) => {
  const password = uniquePassword()
  const created = await signupRequest(app, { email: 'Carol.Case@Example.COM', password })
  t.equal(created.statusCode, 201)
  t.equal(created.json().user.email, 'carol.case@example.com')
  for (const variant of ['carol.case@example.com', 'CAROL.CASE@EXAMPLE.COM']) {
    assertProblem(t, await signupRequest(app, { email: variant, password }), 409, 'EMAIL_TAKEN', variant)
  }
  t.equal((await storedUser('carol.case@example.com')).length, 1, 'one row')

  const address = uniqueAddress()
  for (const variant of ['carol.case@example.com', 'CAROL.CASE@EXAMPLE.COM', 'Carol.Case@Example.COM']) {
    const login = await loginRequest(app, variant, password, address)
    t.equal(login.statusCode, 200, `login as ${variant}`)
    t.equal(login.json().user.id, created.json().user.id, `${variant} is the same user`)
  }
  const spaced = await loginRequest(app, '  CAROL.case@example.com ', password, address)
  t.equal(spaced.statusCode, 200, `login with surrounding spaces (got ${spaced.body.slice(0, 200)})`)
})

t.test('password rules: 8 to 1024 characters, counted as characters, not a common password', async (t) => {
  const expectWeak = async (password: string, label: string) => {
    const response = await signupRequest(app, { email: uniqueEmail('weak'), password })
    assertProblem(t, response, 400, 'WEAK_PASSWORD', label)
    t.match(response.json().errors, [{ path: '/body/password' }], `${label}: names the field`)
  }
  const expectAccepted = async (password: string, label: string) => {
    const email = uniqueEmail('ok')
    const response = await signupRequest(app, { email, password })
    t.equal(response.statusCode, 201, `${label}: accepted`)
    const login = await loginRequest(app, email, password, uniqueAddress())
    t.equal(login.statusCode, 200, `${label}: the same password signs in`)
  }

  await expectWeak('abcdefg', '7 characters')
  // 7 emoji are 14 UTF-16 code units; the rule counts characters.
  await expectWeak('🦊🐻🐼🐨🐯🦁🐮', '7 emoji')
  await expectWeak('x'.repeat(1025), '1025 characters')
  await expectWeak('🦊'.repeat(1025), '1025 emoji')
  await expectAccepted('🦊🐻🐼🐨🐯🦁🐮🐷', '8 emoji')
  await expectAccepted(`${'Zq9'.repeat(341)}x`, '1024 characters')
  await expectAccepted('🦊'.repeat(1024), '1024 emoji (2048 UTF-16 code units)')
  await expectAccepted('Crème brûlée, пароль, 密码 🍮', 'accented, Cyrillic, CJK and emoji')

  // Composed and decomposed forms of the same text are the same password.
  const email = uniqueEmail('nfc')
  const composed = 'Ünïcödé crème brûlée'.normalize('NFC')
  t.equal((await signupRequest(app, { email, password: composed })).statusCode, 201)
  const decomposed = composed.normalize('NFD')
  t.not(decomposed, composed)
  t.equal((await loginRequest(app, email, decomposed, uniqueAddress())).statusCode, 200, 'NFD form signs in')

  const common = dictionary['passwords-common']
  for (const password of ['password123', 'qwertyuiop']) {
    t.ok(common.includes(password), `${password} is in the common-passwords list`)
    await expectWeak(password, `common password ${password}`)
  }
  await expectWeak('QwertyUIOP', 'a common password in other case')
})

t.test('unknown fields are rejected, and no account is created', async (t) => {
  const email = uniqueEmail('extra')
  const password = uniquePassword()
  const response = await signupRequest(app, { email, password, role: 'admin' })
  assertProblem(t, response, 400, 'VALIDATION_FAILED', 'signup with role')
  t.same(response.json().errors, [{ path: '/body/role', message: 'is not allowed' }])
  t.equal((await storedUser(email)).length, 0, 'no account')

  const created = await account(app)
  const login = await app.inject({
    method: 'POST',
    url: '/api/v1/auth/login',
    remoteAddress: uniqueAddress(),
    payload: { email: created.email, password: created.password, remember: true },
  })
  assertProblem(t, login, 400, 'VALIDATION_FAILED', 'login with an unknown field')
  t.match(login.json().errors, [{ path: '/body/remember' }])
})

t.test('wrong password and unknown email are indistinguishable, in body and in time', async (t) => {
  const victim = await account(app)
  const address = uniqueAddress()
  const unknown = uniqueEmail('nobody')
  const wrong = () => loginRequest(app, victim.email, 'not the password at all', address)
  const missing = () => loginRequest(app, unknown, 'not the password at all', address)

  const shape = (response: LightMyRequestResponse) => {
    const { requestId, ...rest } = response.json()
    t.type(requestId, 'string')
    return {
      status: response.statusCode,
      contentType: response.headers['content-type'],
      wwwAuthenticate: response.headers['www-authenticate'],
      body: rest,
    }
  }
  // First calls also warm up the decoy hash and the database.
  const a = await wrong()
  const b = await missing()
  assertProblem(t, a, 401, 'INVALID_CREDENTIALS', 'wrong password')
  assertProblem(t, b, 401, 'INVALID_CREDENTIALS', 'unknown email')
  t.same(shape(a), shape(b), 'identical status, headers and body (but the request id)')
  t.same(Object.keys(a.json()).sort(), ['code', 'detail', 'requestId', 'status', 'title', 'type'])

  const wrongTimes: number[] = []
  const missingTimes: number[] = []
  for (let i = 0; i < 5; i++) {
    for (const [attempt, times] of [
      [wrong, wrongTimes],
      [missing, missingTimes],
    ] as const) {
      const started = process.hrtime.bigint()
      const response = await attempt()
      times.push(Number(process.hrtime.bigint() - started) / 1e6)
      t.equal(response.statusCode, 401)
    }
  }
  const ratio = median(wrongTimes) / median(missingTimes)
  t.comment(
    `median wrong password ${median(wrongTimes).toFixed(1)} ms, unknown email ${median(missingTimes).toFixed(1)} ms`,
  )
  t.ok(ratio > 0.5 && ratio < 2, `timing ratio ${ratio.toFixed(2)} is between 0.5 and 2`)
  // Both must do real scrypt work; a fast path for unknown accounts would be far below this.
  t.ok(median(missingTimes) > 5, 'an unknown email still costs a password verification')
})

t.test('passwords are stored as scrypt hashes', async (t) => {
  const created = await account(app)
  const [row] = await storedUser(created.email)
  const hash = row?.passwordHash ?? ''
  t.match(hash, /^scrypt\$32768\$8\$1\$[\w-]+\$[\w-]+$/, 'scrypt with N=32768, r=8, p=1')
  t.not(hash, created.password)
  t.notOk(hash.includes(created.password), 'the hash does not contain the password')
  const other = await account(app, { password: created.password })
  const [otherRow] = await storedUser(other.email)
  t.not(otherRow?.passwordHash, hash, 'salted: the same password hashes differently')
})

t.test('ten failed logins lock the account; other accounts are unaffected', async (t) => {
  const victim = await account(app)
  const bystander = await account(app)
  const address = uniqueAddress()
  for (let i = 1; i <= 10; i++) {
    const response = await loginRequest(app, victim.email, `wrong ${i}`, address)
    t.equal(response.statusCode, 401, `failure ${i} answers 401`)
  }
  const locked = await loginRequest(app, victim.email, victim.password, address)
  assertProblem(t, locked, 429, 'TOO_MANY_LOGIN_ATTEMPTS', 'the 11th attempt, with the right password')
  const retryAfter = Number(locked.headers['retry-after'])
  t.ok(Number.isInteger(retryAfter) && retryAfter >= 1 && retryAfter <= 15 * 60, `retry-after ${retryAfter} s`)
  t.notOk('accessToken' in locked.json(), 'no tokens')
  assertProblem(t, await loginRequest(app, victim.email, 'wrong again', address), 429, 'TOO_MANY_LOGIN_ATTEMPTS')
  assertProblem(
    t,
    await loginRequest(app, victim.email.toUpperCase(), victim.password, uniqueAddress()),
    429,
    'TOO_MANY_LOGIN_ATTEMPTS',
    'another casing, another address: the same account',
  )

  const other = await loginRequest(app, bystander.email, bystander.password, address)
  t.equal(other.statusCode, 200, 'another account signs in from the same address')
})

t.test('concurrent wrong-password logins cannot exceed the limit', async (t) => {
  const victim = await account(app)
  const address = uniqueAddress()
  const responses = await Promise.all(
    Array.from({ length: 20 }, (_, i) => loginRequest(app, victim.email, `wrong ${i}`, address)),
  )
  const statuses = responses.map((response) => response.statusCode)
  t.equal(statuses.filter((status) => status === 401).length, 10, 'exactly 10 answer 401')
  t.equal(statuses.filter((status) => status === 429).length, 10, 'exactly 10 answer 429')
  for (const response of responses.filter((r) => r.statusCode === 429)) {
    t.equal(response.json().code, 'TOO_MANY_LOGIN_ATTEMPTS')
  }
})

t.test('a successful login resets the account counter', async (t) => {
  const user = await account(app)
  const address = uniqueAddress()
  for (let i = 1; i <= 9; i++) {
    t.equal((await loginRequest(app, user.email, `wrong ${i}`, address)).statusCode, 401, `failure ${i}`)
  }
  t.equal((await loginRequest(app, user.email, user.password, address)).statusCode, 200, 'the 10th attempt succeeds')
  for (let i = 1; i <= 10; i++) {
    t.equal((await loginRequest(app, user.email, `wrong again ${i}`, address)).statusCode, 401, `new failure ${i}`)
  }
  assertProblem(t, await loginRequest(app, user.email, user.password, address), 429, 'TOO_MANY_LOGIN_ATTEMPTS')
})

t.test('per-address budgets: login 30 a minute, signup 10 a minute', async (t) => {
  const address = uniqueAddress()
  for (let i = 1; i <= 30; i++) {
    // A different unknown email each time, so the per-account limit is never reached.
    const response = await loginRequest(app, uniqueEmail('spray'), 'guess guess guess', address)
    if (response.statusCode !== 401) t.fail(`login ${i} answered ${response.statusCode}`)
  }
  const limited = await loginRequest(app, uniqueEmail('spray'), 'guess guess guess', address)
  assertProblem(t, limited, 429, 'RATE_LIMITED', 'the 31st login from one address')
  t.ok(Number(limited.headers['retry-after']) >= 1, 'retry-after')
  t.equal(
    (await loginRequest(app, uniqueEmail('spray'), 'guess guess guess', uniqueAddress())).statusCode,
    401,
    'another address is not limited',
  )

  const signupAddress = uniqueAddress()
  for (let i = 1; i <= 10; i++) {
    const response = await signupRequest(
      app,
      { email: uniqueEmail('burst'), password: uniquePassword() },
      signupAddress,
    )
    t.equal(response.statusCode, 201, `signup ${i}`)
  }
  const email = uniqueEmail('burst')
  assertProblem(
    t,
    await signupRequest(app, { email, password: uniquePassword() }, signupAddress),
    429,
    'RATE_LIMITED',
    'the 11th signup from one address',
  )
  t.equal((await storedUser(email)).length, 0, 'the refused signup created nothing')
  const elsewhere = await signupRequest(app, { email, password: uniquePassword() }, uniqueAddress())
  t.equal(elsewhere.statusCode, 201, 'another address signs up')
})

t.test('instances sharing Redis share the per-account counter', async (t) => {
  const redisUrl = await redisForTest(t)
  // A database of its own on the test Redis, flushed, so stale counters cannot interfere and
  // other test files using database 0 are not disturbed.
  const url = new URL(redisUrl)
  url.pathname = '/7'
  const flusher = new Redis(url.toString(), { maxRetriesPerRequest: 1 })
  await flusher.flushdb()
  await flusher.quit()

  const first = await buildTestApp(t, { env: { REDIS_URL: url.toString() } })
  const second = await buildTestApp(t, { env: { REDIS_URL: url.toString() } })
  t.ok(first.redis && second.redis, 'both instances use Redis')
  const user = await account(first)
  const address = uniqueAddress()
  for (let i = 1; i <= 5; i++) {
    t.equal((await loginRequest(first, user.email, `wrong ${i}`, address)).statusCode, 401, `failure ${i} on A`)
  }
  for (let i = 6; i <= 10; i++) {
    t.equal((await loginRequest(second, user.email, `wrong ${i}`, address)).statusCode, 401, `failure ${i} on B`)
  }
  // A alone has seen 5 failures; only a shared counter refuses the right password now.
  assertProblem(
    t,
    await loginRequest(first, user.email, user.password, address),
    429,
    'TOO_MANY_LOGIN_ATTEMPTS',
    'A counts the failures made on B',
  )
  assertProblem(t, await loginRequest(second, user.email, 'wrong 11', address), 429, 'TOO_MANY_LOGIN_ATTEMPTS', 'B too')
})

t.test('no secret reaches the logs or a response body', async (t) => {
  const bodies: string[] = []
  const record = (response: LightMyRequestResponse) => {
    bodies.push(response.body)
    return response
  }
  const email = uniqueEmail('secrets')
  const password = `Sekrit ${uniquePassword()}`
  const address = uniqueAddress()
  const signedUp = record(await signupRequest(app, { email, password }, address))
  t.equal(signedUp.statusCode, 201)
  const first = signedUp.json() as TokenResponse
  record(await loginRequest(app, email, `${password} but wrong`, address))
  const loggedIn = record(await loginRequest(app, email, password, address))
  t.equal(loggedIn.statusCode, 200)
  const second = loggedIn.json() as TokenResponse
  const refreshed = record(
    await app.inject({
      method: 'POST',
      url: '/api/v1/auth/refresh',
      remoteAddress: address,
      payload: { refreshToken: second.refreshToken },
    }),
  )
  t.equal(refreshed.statusCode, 200)
  const third = refreshed.json() as TokenResponse
  const whoami = record(await me(app, third.accessToken))
  t.equal(whoami.statusCode, 200)
  const orgId = whoami.json().memberships[0].orgId as string
  const created = await createApiKey(app, { headers: bearer(third.accessToken) }, orgId, ['orgs:read'])
  t.match(created.key, /^bpk_/)
  record(await me(app, created.key))
  record(
    await app.inject({
      method: 'GET',
      url: `/api/v1/api-keys?orgId=${orgId}`,
      headers: bearer(third.accessToken),
    }),
  )
  record(await app.inject({ method: 'GET', url: `/api/v1/orgs/${orgId}/members`, headers: bearer(created.key) }))
  record(
    await app.inject({ method: 'GET', url: `/api/v1/orgs/${orgId}/audit-log`, headers: bearer(third.accessToken) }),
  )
  record(
    await app.inject({
      method: 'POST',
      url: '/api/v1/auth/logout',
      remoteAddress: address,
      payload: { refreshToken: third.refreshToken },
    }),
  )

  const [row] = await storedUser(email)
  const hash = row?.passwordHash ?? ''
  t.match(hash, /^scrypt\$/)
  const [, , , , salt, digest] = hash.split('$')

  // The capture is not vacuous: it saw these requests.
  t.ok(
    logs.raw.some((line) => line.includes('/api/v1/auth/refresh')),
    'the log captured the requests',
  )
  const secrets: Record<string, string> = {
    password,
    'password hash': hash,
    'password hash digest': digest ?? hash,
    'password salt': salt ?? hash,
    'API key': created.key,
    'API key secret part': created.key.slice('bpk_'.length),
  }
  for (const [label, tokens] of [
    ['signup', first],
    ['login', second],
    ['refresh', third],
  ] as const) {
    secrets[`${label} refresh token`] = tokens.refreshToken
    secrets[`${label} access token`] = tokens.accessToken
    // The signature alone is enough to misuse a logged token; the header part is public.
    secrets[`${label} access token signature`] = tokens.accessToken.split('.')[2] ?? tokens.accessToken
  }
  const everything = logs.raw.join('\n')
  for (const [label, secret] of Object.entries(secrets)) {
    t.ok(secret.length >= 16, `${label} is a real value`)
    t.notOk(everything.includes(secret), `the ${label} is not in any log line`)
  }
  for (const body of bodies) {
    t.notOk(/password_?hash/i.test(body), 'no password hash field in a response body')
    t.notOk(body.includes(hash), 'no password hash value in a response body')
  }
  t.ok(bodies.length >= 9, 'all responses were checked')
})
