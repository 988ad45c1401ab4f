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
      // An offline queue would hold every command until a reconnect attempt fails, which under the
      // default backoff adds seconds to each rate-limited request while Redis is down.
      connectTimeout: 2000,
      maxRetriesPerRequest: 1,
      enableOfflineQueue: false,
    })
    redis.on('error', (error) => app.log.warn({ err: error }, 'redis connection error'))
  }
  if (redis && ['connecting', 'connect', 'reconnecting'].includes(redis.status)) {
    // Without an offline queue, commands sent before the connection is ready fail; wait for it (a
    // down Redis answers with an error at once, or within connectTimeout) so start-up is not racy.
    const connection = redis
    await new Promise<void>((resolve) => {
      const done = () => {
        clearTimeout(timer)
        connection.off('ready', done).off('error', done).off('end', done)
        resolve()
      }
      const timer = setTimeout(done, 2500)
      connection.once('ready', done).once('error', done).once('end', done)
    })
  }
  app.decorate('redis', redis)
  app.addHook('onClose', async () => {
    if (!redis || redis.status === 'end') return
    await redis.quit().catch(() => redis?.disconnect())
  })
}

export default fp(redisPlugin, { name: 'redis', fastify: '5.x' })
