import closeWithGrace from 'close-with-grace'
import { buildApp } from './app.js'
import { ConfigError, loadConfig } from './config.js'

/**
 * Runs queued jobs without serving HTTP: the same app (so the same modules define the same
 * handlers), built with WORKERS on and never listening. Scale these separately from the API
 * processes, which then run with WORKERS=false. Needs PostgreSQL: the embedded database belongs
 * to the one process that opened it.
 */
let config: ReturnType<typeof loadConfig>
try {
  config = { ...loadConfig(), WORKERS: true }
} catch (error) {
  console.error(error instanceof ConfigError ? error.message : `Invalid configuration: ${String(error)}`)
  process.exit(1)
}

let app: Awaited<ReturnType<typeof buildApp>>
try {
  app = await buildApp(config)
  await app.ready()
} catch (error) {
  console.error(
    error instanceof ConfigError
      ? error.message
      : `Start-up failed: ${error instanceof Error ? error.message : String(error)}`,
  )
  process.exit(1)
}

// On SIGTERM/SIGINT running jobs get SHUTDOWN_TIMEOUT_MS to finish; the rest are retried later.
closeWithGrace({ delay: config.SHUTDOWN_TIMEOUT_MS + 1000, logger: app.log }, async ({ signal, err }) => {
  if (err) app.log.error({ err }, 'worker stopping after an unexpected error')
  else app.log.info({ signal }, 'worker stopping')
  await app.close()
})

app.log.info('worker started')
