import { parseArgs } from 'node:util'
import { ConfigError, loadConfig } from '../../config.js'
import { openDatabase } from '../../db/client.js'
import { runMigrations } from '../../db/migrate.js'
import { createAuthRepository } from './auth-repository.js'
import { normalizeEmail } from './auth-service.js'

// `npm run admin:grant -- <email>` makes an existing account a platform administrator (inbound
// webhook events and replays); `--revoke` takes the flag away. Takes effect on the next request.
const usage = 'Usage: npm run admin:grant -- [--revoke] <email>'
try {
  const { values, positionals } = parseArgs({
    options: { revoke: { type: 'boolean', default: false } },
    allowPositionals: true,
  })
  const [email, ...extra] = positionals
  if (!email || extra.length > 0) throw new Error(usage)
  const config = loadConfig()
  const database = await openDatabase(config)
  try {
    if (database.engine === 'pglite' || config.MIGRATE_ON_START) await runMigrations(database)
    const granted = !values.revoke
    const normalized = normalizeEmail(email)
    if (!(await createAuthRepository(database.db).setPlatformAdmin(normalized, granted))) {
      throw new Error(`No account has the email ${normalized}; sign up first.`)
    }
    console.log(
      granted
        ? `${normalized} is now a platform administrator.`
        : `${normalized} is no longer a platform administrator.`,
    )
  } finally {
    await database.close()
  }
} catch (error) {
  console.error(error instanceof ConfigError || error instanceof Error ? error.message : String(error))
  process.exitCode = 1
}
