import closeWithGrace from 'close-with-grace'
import { buildApp } from './app.js'
import { ConfigError, loadConfig } from './config.js'

let config: ReturnType<typeof loadConfig>
try {
  config = loadConfig()
} catch (error) {
  // One line naming the variable; nothing is listening yet.
  console.error(error instanceof ConfigError ? error.message : `Invalid configuration: ${String(error)}`)
  process.exit(1)
}

let app: Awaited<ReturnType<typeof buildApp>>
try {
  app = await buildApp(config)
} catch (error) {
  console.error(
    error instanceof ConfigError
      ? error.message
      : `Start-up failed: ${error instanceof Error ? error.message : String(error)}`,
  )
  process.exit(1)
}

// On SIGTERM/SIGINT: stop accepting, answer 503 on kept-alive connections, let in-flight requests
// finish for SHUTDOWN_TIMEOUT_MS, close the database, exit 0. A second signal or the timeout exits 1.
closeWithGrace({ delay: config.SHUTDOWN_TIMEOUT_MS, logger: app.log }, async ({ signal, err }) => {
  if (err) app.log.error({ err }, 'shutting down after an unexpected error')
  else app.log.info({ signal }, 'shutting down')
  await app.close()
})

try {
  await app.listen({ host: config.HOST, port: config.PORT })
} catch (error) {
  app.log.fatal({ err: error }, 'could not listen')
  await app.close().catch(() => {})
  process.exit(1)
}
