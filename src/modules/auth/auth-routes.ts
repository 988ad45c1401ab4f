import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'
import { ProblemResponse } from '../../lib/problem.js'
import {
  CreateApiKeyBody,
  IdParams,
  ListApiKeysQuery,
  LoginBody,
  RefreshBody,
  SignupBody,
  trimEmailField,
} from './auth-schemas.js'
import { requireAuth, requireUserSession } from './authorization.js'

const ref = (id: string) => Type.Unsafe(Type.Ref(id))
const bearer = [{ bearer: [] }]

/** Per-IP budgets for credential endpoints, far below the global limit: guessing must be slow. */
const perIp = (max: number) => ({ rateLimit: { max, timeWindow: 60_000 } })

export const authRoutes: FastifyPluginAsyncTypebox = async (app) => {
  const auth = app.authService

  app.post(
    '/auth/signup',
    {
      config: perIp(10),
      preValidation: trimEmailField,
      schema: {
        operationId: 'signup',
        tags: ['auth'],
        summary: 'Create an account (and its personal organization)',
        body: SignupBody,
        response: {
          201: ref('TokenResponse'),
          400: ProblemResponse,
          409: ProblemResponse,
          413: ProblemResponse,
          415: ProblemResponse,
          429: ProblemResponse,
        },
      },
    },
    async (request, reply) => reply.code(201).send(await auth.signup(request.body, request.ip)),
  )

  app.post(
    '/auth/login',
    {
      config: perIp(30),
      preValidation: trimEmailField,
      schema: {
        operationId: 'login',
        tags: ['auth'],
        summary: 'Exchange email and password for tokens',
        description: 'At most 10 failed attempts per account per 15 minutes, then 429 with Retry-After.',
        body: LoginBody,
        response: { 200: ref('TokenResponse'), 400: ProblemResponse, 401: ProblemResponse, 429: ProblemResponse },
      },
    },
    async (request) => auth.login(request.body, request.ip),
  )

  app.post(
    '/auth/refresh',
    {
      config: perIp(60),
      schema: {
        operationId: 'refreshTokens',
        tags: ['auth'],
        summary: 'Rotate a refresh token',
        description:
          'Returns new tokens; the presented refresh token is spent. Presenting a spent token again (after a short grace period for concurrent requests) revokes every token descended from the same sign-in.',
        body: RefreshBody,
        response: { 200: ref('TokenResponse'), 400: ProblemResponse, 401: ProblemResponse, 429: ProblemResponse },
      },
    },
    async (request) => auth.refresh(request.body.refreshToken, request.ip),
  )

  app.post(
    '/auth/logout',
    {
      config: perIp(60),
      schema: {
        operationId: 'logout',
        tags: ['auth'],
        summary: 'Revoke a refresh token and every token of its sign-in',
        body: RefreshBody,
        response: { 204: Type.Null(), 400: ProblemResponse, 429: ProblemResponse },
      },
    },
    async (request, reply) => {
      await auth.logout(request.body.refreshToken)
      return reply.code(204).send(null)
    },
  )

  app.get(
    '/auth/me',
    {
      schema: {
        operationId: 'getMe',
        tags: ['auth'],
        summary: 'The caller and their organization memberships',
        security: bearer,
        response: { 200: ref('Me'), 401: ProblemResponse, 429: ProblemResponse },
      },
    },
    async (request) => auth.me(requireAuth(request)),
  )

  app.post(
    '/api-keys',
    {
      config: perIp(30),
      schema: {
        operationId: 'createApiKey',
        tags: ['api-keys'],
        summary: 'Create an API key (the key is shown once)',
        description:
          "A key acts only within its organization, with the intersection of its scopes and its creator's current role.",
        security: bearer,
        body: CreateApiKeyBody,
        response: {
          201: ref('CreatedApiKey'),
          400: ProblemResponse,
          401: ProblemResponse,
          403: ProblemResponse,
          404: ProblemResponse,
          429: ProblemResponse,
        },
      },
    },
    async (request, reply) => {
      const created = await auth.createApiKey(requireUserSession(request), request.body, request.ip)
      return reply.code(201).header('location', `/api/v1/api-keys/${created.id}`).send(created)
    },
  )

  app.get(
    '/api-keys',
    {
      schema: {
        operationId: 'listApiKeys',
        tags: ['api-keys'],
        summary: "List an organization's live API keys (admins: all; others: their own)",
        security: bearer,
        querystring: ListApiKeysQuery,
        response: {
          200: ref('ApiKeyList'),
          400: ProblemResponse,
          401: ProblemResponse,
          403: ProblemResponse,
          404: ProblemResponse,
          429: ProblemResponse,
        },
      },
    },
    async (request) => {
      const { orgId, limit = 20, cursor } = request.query
      return auth.listApiKeys(requireUserSession(request), orgId, limit, cursor)
    },
  )

  app.delete(
    '/api-keys/:id',
    {
      schema: {
        operationId: 'revokeApiKey',
        tags: ['api-keys'],
        summary: 'Revoke an API key immediately',
        security: bearer,
        params: IdParams,
        response: {
          204: Type.Null(),
          401: ProblemResponse,
          403: ProblemResponse,
          404: ProblemResponse,
          429: ProblemResponse,
        },
      },
    },
    async (request, reply) => {
      await auth.revokeApiKey(requireUserSession(request), request.params.id, request.ip)
      return reply.code(204).send(null)
    },
  )
}

/** `GET /.well-known/jwks.json`: public keys that verify this server's access tokens. */
export const jwksRoutes: FastifyPluginAsyncTypebox = async (app) => {
  app.get(
    '/.well-known/jwks.json',
    {
      schema: {
        operationId: 'getJwks',
        tags: ['auth'],
        summary: 'JSON Web Key Set of the access-token signing keys',
        response: { 200: ref('Jwks') },
      },
    },
    async (_request, reply) => {
      reply.header('cache-control', 'public, max-age=300')
      return app.tokenService.jwks()
    },
  )
}
