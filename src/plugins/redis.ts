import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { Redis } from 'ioredis'
import type { Config } from '../config.js'

declare module 'fastify' {
  interface FastifyInstance {
    /** Shared Redis connection when REDIS_URL is set; null on a single instance. */
    redis: Redis | null
  }
}

async function redisPlugin(app: FastifyInstance, options: { config: Config; redis?: Redis | null }) {
  let redis = options.redis ?? null
  if (redis === null && options.config.REDIS_URL) {
    redis = new Redis(options.config.REDIS_URL, {
      // Fail fast: callers (rate limits, fan-out) degrade rather than queue behind a dead Redis.
      connectTimeout: 2000,
      maxRetriesPerRequest: 1,
      enableOfflineQueue: true,
    })
    redis.on('error', (error) => app.log.warn({ err: error }, 'redis connection error'))
  }
  app.decorate('redis', redis)
  app.addHook('onClose', async () => {
    if (!redis || redis.status === 'end') return
    await redis.quit().catch(() => redis?.disconnect())
  })
}

export default fp(redisPlugin, { name: 'redis', fastify: '5.x' })
