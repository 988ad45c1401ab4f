import type { AddressInfo } from 'node:net'
import { buildApp } from '../../src/app.js'
import { logDestination } from '../../src/lib/log-destination.js'
import { loadConfig } from '../../src/config.js'

/**
 * The real production app, plugin stack and info-level logging included. Log lines are still
 * serialised and written, only to /dev/null, so their cost is measured without flooding the terminal.
 * Runs on a throwaway embedded database unless BENCH_DATABASE_URL names a PostgreSQL one.
 */
const config = loadConfig({
  env: {
    ...process.env,
    DATABASE_URL: process.env.BENCH_DATABASE_URL ?? 'memory://',
    MIGRATE_ON_START: 'true',
    // A fixed key for the benchmark's own database, so token signing keys survive server restarts.
    ENCRYPTION_KEY: Buffer.alloc(32, 3).toString('base64'),
    LOG_LEVEL: process.env.BENCH_LOG_LEVEL ?? 'info',
    // Production unless a scenario needs otherwise (outbound webhooks to a loopback receiver).
    NODE_ENV: process.env.BENCH_NODE_ENV ?? 'production',
  },
  envFile: false,
})
const app = await buildApp(config, { logStream: logDestination('/dev/null') })

process.once('SIGTERM', () => {
  app.close().then(
    () => process.exit(0),
    (error: unknown) => {
      console.error(error)
      process.exit(1)
    },
  )
})

// Node's accept queue holds 511 connections; a burst of thousands at once needs a deeper one
// (BENCH_LISTEN_BACKLOG), or the kernel drops connections and clients retry a second later.
const backlog = process.env.BENCH_LISTEN_BACKLOG ? { backlog: Number(process.env.BENCH_LISTEN_BACKLOG) } : {}
await app.listen({ host: '127.0.0.1', port: config.PORT, ...backlog })
process.stdout.write(`READY ${(app.server.address() as AddressInfo).port}\n`)
