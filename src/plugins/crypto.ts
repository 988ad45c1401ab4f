import { randomBytes } from 'node:crypto'
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join, resolve } from 'node:path'
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { type Config, ConfigError } from '../config.js'
import { CryptoBox } from '../lib/crypto-box.js'

declare module 'fastify' {
  interface FastifyInstance {
    /** Seals and opens secrets stored at rest (signing keys, third-party credentials). */
    cryptoBox: CryptoBox
  }
}

/**
 * The instance encryption key: ENCRYPTION_KEY when set. The embedded database may instead keep a
 * generated key in DATA_DIR (mode 0600, next to the data it protects, so `npm start` needs no
 * setup); a throwaway database gets a throwaway key. A shared PostgreSQL needs ENCRYPTION_KEY, the
 * same on every instance, or each instance would seal with a key the others cannot open.
 */
export function resolveEncryptionKey(config: Config): Buffer {
  if (config.ENCRYPTION_KEY) return Buffer.from(config.ENCRYPTION_KEY, 'base64')
  if (config.DATABASE_URL === 'memory://') return randomBytes(32)
  if (config.DATABASE_URL) {
    throw new ConfigError('ENCRYPTION_KEY', 'is required with a PostgreSQL DATABASE_URL (openssl rand -base64 32)')
  }
  const dir = resolve(config.DATA_DIR)
  const file = join(dir, 'encryption.key')
  if (!existsSync(file)) {
    mkdirSync(dir, { recursive: true })
    writeFileSync(file, `${randomBytes(32).toString('base64')}\n`, { mode: 0o600, flag: 'wx' })
  }
  chmodSync(file, 0o600)
  const key = Buffer.from(readFileSync(file, 'utf8').trim(), 'base64')
  if (key.length !== 32) throw new ConfigError('ENCRYPTION_KEY', `(generated in ${file}) is not 32 bytes of base64`)
  return key
}

/** Keys that sealed values before the current one; they open what is not re-sealed yet. */
export function retiredEncryptionKeys(config: Pick<Config, 'ENCRYPTION_KEY_RETIRED'>): Buffer[] {
  return (config.ENCRYPTION_KEY_RETIRED ?? '')
    .split(',')
    .filter(Boolean)
    .map((key) => Buffer.from(key, 'base64'))
}

async function cryptoPlugin(app: FastifyInstance, { config }: { config: Config }) {
  app.decorate('cryptoBox', new CryptoBox(resolveEncryptionKey(config), retiredEncryptionKeys(config)))
}

export default fp(cryptoPlugin, { name: 'crypto', fastify: '5.x' })
