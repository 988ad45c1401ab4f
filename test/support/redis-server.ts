import { type ChildProcess, execFileSync, spawn } from 'node:child_process'
import { Redis } from 'ioredis'
import { freePort } from './postgres-cluster.js'

export interface RedisServer {
  url: string
  stop(): Promise<void>
}

export function hasRedisServer(): boolean {
  try {
    execFileSync('redis-server', ['--version'], { stdio: 'ignore' })
    return true
  } catch {
    return false
  }
}

/** A throwaway, non-persistent redis-server on a free loopback port. */
export async function startRedis(): Promise<RedisServer> {
  const port = await freePort()
  const server: ChildProcess = spawn(
    'redis-server',
    ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
    { stdio: 'ignore' },
  )
  const url = `redis://127.0.0.1:${port}`
  const deadline = Date.now() + 10_000
  for (;;) {
    const client = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null })
    try {
      await client.connect()
      await client.ping()
      client.disconnect()
      break
    } catch (error) {
      client.disconnect()
      if (Date.now() > deadline) throw error
      await new Promise((resolve) => setTimeout(resolve, 100))
    }
  }
  return {
    url,
    async stop() {
      if (server.exitCode !== null) return
      const exited = new Promise((resolve) => server.once('exit', resolve))
      server.kill('SIGTERM')
      await exited
    },
  }
}
