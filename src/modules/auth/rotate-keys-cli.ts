import { ConfigError, loadConfig } from '../../config.js'
import { openDatabase } from '../../db/client.js'
import { runMigrations } from '../../db/migrate.js'
import { CryptoBox } from '../../lib/crypto-box.js'
import { accessTokenAudience } from '../../plugins/auth.js'
import { resolveEncryptionKey } from '../../plugins/crypto.js'
import { createAuthRepository } from './auth-repository.js'
import { createTokenService } from './token-service.js'

// `npm run keys:rotate`: adds a new access-token signing key. New tokens are signed with it at
// once by this process and within minutes by running instances; older public keys stay in the
// JWKS until every token they signed has expired.
try {
  const config = loadConfig()
  const database = await openDatabase(config)
  try {
    if (database.engine === 'pglite' || config.MIGRATE_ON_START) await runMigrations(database)
    const tokens = createTokenService({
      repository: createAuthRepository(database.db),
      cryptoBox: new CryptoBox(resolveEncryptionKey(config)),
      issuer: config.PUBLIC_URL,
      audience: accessTokenAudience(config),
    })
    await tokens.init()
    const kid = await tokens.rotate()
    console.log(`New signing key ${kid} is active; previous keys stay published until their tokens expire.`)
  } finally {
    await database.close()
  }
} catch (error) {
  console.error(error instanceof ConfigError || error instanceof Error ? error.message : String(error))
  process.exitCode = 1
}
