import { ConfigError, loadConfig } from '../config.js'
import { openDatabase } from './client.js'
import { runMigrations } from './migrate.js'

// `npm run migrate`: applies pending migrations to the configured database and exits.
try {
  const config = loadConfig()
  const database = await openDatabase(config)
  try {
    await runMigrations(database)
    console.log(`Migrations applied (${database.engine}).`)
  } finally {
    await database.close()
  }
} catch (error) {
  console.error(error instanceof ConfigError || error instanceof Error ? error.message : String(error))
  process.exitCode = 1
}
