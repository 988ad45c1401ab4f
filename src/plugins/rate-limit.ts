import rateLimit from '@fastify/rate-limit'
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import type { Config } from '../config.js'
import { HttpProblem } from '../lib/problem.js'

/**
 * Global per-client rate limit; routes tighten or relax it with `config.rateLimit`. Counters live in
 * memory on one instance and in Redis when REDIS_URL is set, so all instances share one budget.
 */
async function rateLimitPlugin(app: FastifyInstance, { config }: { config: Config }) {
  await app.register(rateLimit, {
    global: true,
    max: config.RATE_LIMIT_MAX,
    timeWindow: config.RATE_LIMIT_WINDOW_MS,
    ...(app.redis ? { redis: app.redis, nameSpace: 'backplane:rl:' } : {}),
    // A Redis outage must not take the API down with it; requests pass unlimited meanwhile.
    skipOnError: true,
    enableDraftSpec: true,
    keyGenerator: (request) => request.ip,
    errorResponseBuilder: (_request, context) =>
      new HttpProblem(
        429,
        'RATE_LIMITED',
        `Too many requests: the limit is ${context.max} per ${context.after}. Retry after ${Math.ceil(context.ttl / 1000)} s.`,
      ),
  })
}

export default fp(rateLimitPlugin, { name: 'rate-limit', fastify: '5.x', dependencies: ['errors', 'redis'] })
