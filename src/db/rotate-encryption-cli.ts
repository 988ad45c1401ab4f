import { ConfigError, loadConfig } from '../config.js'
import { CryptoBox } from '../lib/crypto-box.js'
import { resolveEncryptionKey, retiredEncryptionKeys } from '../plugins/crypto.js'
import { openDatabase } from './client.js'
import { runMigrations } from './migrate.js'
import { rotateEncryption } from './rotate-encryption.js'

// `npm run keys:rotate-encryption`: after ENCRYPTION_KEY was changed to a new key and the old one
// moved to ENCRYPTION_KEY_RETIRED (on every instance), re-seals every stored secret under the new
// key; then ENCRYPTION_KEY_RETIRED can be removed.
try {
  const config = loadConfig()
  const database = await openDatabase(config)
  try {
    if (database.engine === 'pglite' || config.MIGRATE_ON_START) await runMigrations(database)
    const cryptoBox = new CryptoBox(resolveEncryptionKey(config), retiredEncryptionKeys(config))
    const counts = await rotateEncryption(database.db, cryptoBox)
    const summary = Object.entries(counts)
      .map(([kind, count]) => `${count} ${kind}`)
      .join(', ')
    console.log(`Re-sealed under key ${cryptoBox.currentKeyId}: ${summary}.`)
  } finally {
    await database.close()
  }
} catch (error) {
  console.error(error instanceof ConfigError || error instanceof Error ? error.message : String(error))
  process.exitCode = 1
}
