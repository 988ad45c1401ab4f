import { randomInt, randomUUID } from 'node:crypto'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import type t from 'tap'

/** The test object tap passes to a subtest. */
export type Test = Parameters<Parameters<typeof t.test>[0]>[0]

export const PASSWORD = 'correct horse battery staple 42'

export interface TokenResponse {
  user: { id: string; email: string; name: string | null; createdAt: string }
  accessToken: string
  refreshToken: string
  tokenType: string
  expiresIn: number
}

/**
 * A client address no other request of the run has used, so the per-IP budgets of the credential
 * endpoints (signup: 10 a minute) never interfere between tests.
 */
export function uniqueAddress(): string {
  return `10.${randomInt(256)}.${randomInt(256)}.${randomInt(1, 255)}`
}

export async function signup(app: FastifyInstance, name = 'Test User'): Promise<TokenResponse> {
  const response = await app.inject({
    method: 'POST',
    url: '/api/v1/auth/signup',
    remoteAddress: uniqueAddress(),
    payload: { email: `user-${randomUUID()}@example.com`, password: PASSWORD, name },
  })
  if (response.statusCode !== 201) throw new Error(`signup answered ${response.statusCode}: ${response.body}`)
  return response.json()
}

export function me(app: FastifyInstance, credential: string) {
  return app.inject({ method: 'GET', url: '/api/v1/auth/me', headers: { authorization: `Bearer ${credential}` } })
}

/** The refusal every bad bearer credential gets: 401 problem+json, code INVALID_TOKEN. */
export function assertInvalidToken(t: Test, response: LightMyRequestResponse, message?: string) {
  t.equal(response.statusCode, 401, message ?? 'refused with 401')
  t.match(response.headers['content-type'], /^application\/problem\+json(;|$)/, 'problem+json')
  t.equal(response.headers['www-authenticate'], 'Bearer', 'WWW-Authenticate: Bearer')
  const body = response.json()
  t.equal(body.status, 401)
  t.equal(body.code, 'INVALID_TOKEN', 'code INVALID_TOKEN')
  t.equal(typeof body.requestId, 'string')
}

export const b64url = (value: unknown) =>
  Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)).toString('base64url')

/** The decoded (unverified) parts of a compact JWS. */
export function decodeParts(token: string): { header: Record<string, unknown>; payload: Record<string, unknown> } {
  const [header, payload] = token.split('.')
  return {
    header: JSON.parse(Buffer.from(header ?? '', 'base64url').toString('utf8')),
    payload: JSON.parse(Buffer.from(payload ?? '', 'base64url').toString('utf8')),
  }
}

// ---------------------------------------------------------------------------------------------------
// Accounts, orgs, memberships and API keys (used by accounts, orgs and api-keys tests).

export type Role = 'owner' | 'admin' | 'member' | 'viewer'

/** A signed-up user with everything a test needs to act as them. */
export interface Account extends TokenResponse {
  userId: string
  email: string
  password: string
  personalOrgId: string
  /** The client address the account signed up from. */
  address: string
  /** `{ authorization: 'Bearer <access token>' }` */
  headers: { authorization: string }
}

export const bearer = (credential: string) => ({ authorization: `Bearer ${credential}` })

/** A strong password nobody else uses. */
export const uniquePassword = () => `pw ${randomUUID()}`

export const uniqueEmail = (label = 'user') => `${label}-${randomUUID()}@example.com`

/** Signs a user up (from a fresh client address unless given) and looks up their personal org. */
export async function account(
  app: FastifyInstance,
  options: { email?: string; password?: string; name?: string; address?: string } = {},
): Promise<Account> {
  const email = options.email ?? uniqueEmail()
  const password = options.password ?? uniquePassword()
  const address = options.address ?? uniqueAddress()
  const response = await app.inject({
    method: 'POST',
    url: '/api/v1/auth/signup',
    remoteAddress: address,
    payload: { email, password, ...(options.name ? { name: options.name } : {}) },
  })
  if (response.statusCode !== 201) throw new Error(`signup answered ${response.statusCode}: ${response.body}`)
  const tokens: TokenResponse = response.json()
  const whoami = await me(app, tokens.accessToken)
  const personal = (whoami.json().memberships as { orgId: string; personal: boolean }[]).find((m) => m.personal)
  if (!personal) throw new Error(`no personal org after signup: ${whoami.body}`)
  return {
    ...tokens,
    userId: tokens.user.id,
    email: tokens.user.email,
    password,
    personalOrgId: personal.orgId,
    address,
    headers: bearer(tokens.accessToken),
  }
}

/** Creates an organization owned by `owner`; returns its id. */
export async function createOrg(app: FastifyInstance, owner: Pick<Account, 'headers'>, name = 'Acme'): Promise<string> {
  const response = await app.inject({ method: 'POST', url: '/api/v1/orgs', headers: owner.headers, payload: { name } })
  if (response.statusCode !== 201) throw new Error(`create org answered ${response.statusCode}: ${response.body}`)
  return response.json().id
}

/** Adds `member` to the org with `role`, acting as `actor` (an owner or admin). */
export async function addMember(
  app: FastifyInstance,
  actor: Pick<Account, 'headers'>,
  orgId: string,
  member: Pick<Account, 'email'>,
  role: Role,
) {
  const response = await app.inject({
    method: 'POST',
    url: `/api/v1/orgs/${orgId}/members`,
    headers: actor.headers,
    payload: { email: member.email, role },
  })
  if (response.statusCode !== 201) throw new Error(`add member answered ${response.statusCode}: ${response.body}`)
}

export interface CreatedApiKey {
  id: string
  name: string
  orgId: string
  prefix: string
  scopes: string[]
  createdBy: string
  createdAt: string
  expiresAt: string | null
  lastUsedAt: string | null
  key: string
}

/** Creates an API key as `creator`; throws unless the server answers 201. */
export async function createApiKey(
  app: FastifyInstance,
  creator: Pick<Account, 'headers'>,
  orgId: string,
  scopes: string[],
  extra: { name?: string; expiresAt?: string } = {},
): Promise<CreatedApiKey> {
  const response = await app.inject({
    method: 'POST',
    url: '/api/v1/api-keys',
    remoteAddress: uniqueAddress(),
    headers: creator.headers,
    payload: {
      name: extra.name ?? 'test key',
      orgId,
      scopes,
      ...(extra.expiresAt ? { expiresAt: extra.expiresAt } : {}),
    },
  })
  if (response.statusCode !== 201) throw new Error(`create API key answered ${response.statusCode}: ${response.body}`)
  return response.json()
}

/** A refusal in RFC 9457 form with the given status and stable code. */
export function assertProblem(t: Test, response: LightMyRequestResponse, status: number, code: string, message = '') {
  const label = message ? `${message}: ` : ''
  t.equal(response.statusCode, status, `${label}status ${status}`)
  t.match(response.headers['content-type'], /^application\/problem\+json(;|$)/, `${label}problem+json`)
  let body: Record<string, unknown> = {}
  try {
    body = response.json()
  } catch {
    t.fail(`${label}body is not JSON: ${response.body}`)
  }
  t.equal(body.status, status, `${label}body.status ${status}`)
  t.equal(body.code, code, `${label}code ${code}`)
}

/**
 * Follows `nextCursor` from the first page to the last; fails the test on a page that repeats a
 * cursor or after `maxPages`, so a cursor that never advances cannot loop forever.
 */
export async function walkPages<T>(
  t: Test,
  fetchPage: (cursor: string | null) => Promise<LightMyRequestResponse>,
  maxPages = 100,
): Promise<{ items: T[]; pages: T[][] }> {
  const pages: T[][] = []
  const seen = new Set<string>()
  let cursor: string | null = null
  for (let page = 0; page < maxPages; page++) {
    const response = await fetchPage(cursor)
    if (response.statusCode !== 200) {
      t.fail(`page ${page} answered ${response.statusCode}: ${response.body}`)
      return { items: pages.flat(), pages }
    }
    const body = response.json() as { data: T[]; nextCursor: string | null }
    pages.push(body.data)
    if (body.nextCursor === null) return { items: pages.flat(), pages }
    if (seen.has(body.nextCursor)) {
      t.fail('a cursor repeated')
      return { items: pages.flat(), pages }
    }
    seen.add(body.nextCursor)
    cursor = body.nextCursor
  }
  t.fail(`pagination did not end within ${maxPages} pages`)
  return { items: pages.flat(), pages }
}

export type Method = 'GET' | 'POST' | 'PATCH' | 'DELETE'

/**
 * Calls `/api/v1<url>` as `who`, from a fresh client address unless one is given, so that no
 * per-address budget is shared between tests.
 */
export function callAs(
  app: FastifyInstance,
  who: Pick<Account, 'headers'>,
  method: Method,
  url: string,
  payload?: Record<string, unknown>,
  remoteAddress?: string,
): Promise<LightMyRequestResponse> {
  return app.inject({
    method,
    url: `/api/v1${url}`,
    headers: who.headers,
    ...(payload ? { payload } : {}),
    remoteAddress: remoteAddress ?? uniqueAddress(),
  })
}
