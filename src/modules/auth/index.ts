import type { FastifyInstance } from 'fastify'
import { authRoutes, jwksRoutes } from './auth-routes.js'

/** Accounts, tokens and API keys under /api/v1, and the JWKS at the root. */
export async function authModule(app: FastifyInstance) {
  await app.register(jwksRoutes)
  await app.register(authRoutes, { prefix: '/api/v1' })
}
