import { randomBytes, type ScryptOptions, scrypt, timingSafeEqual } from 'node:crypto'
import { dictionary } from '@zxcvbn-ts/language-common'

/**
 * scrypt parameters: N = 2^15, r = 8, p = 1 (32 MiB and roughly 50-100 ms per hash on a small
 * server core), the OWASP Password Storage Cheat Sheet's minimum for scrypt. Stored with every hash
 * (`scrypt$N$r$p$salt$hash`) so they can be raised later without invalidating existing hashes.
 */
const PARAMS = { N: 2 ** 15, r: 8, p: 1 }
const KEY_LENGTH = 32
const SALT_LENGTH = 16

function scryptAsync(password: string, salt: Buffer, options: ScryptOptions): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    // maxmem must exceed 128 * N * r bytes, or Node refuses the parameters.
    scrypt(password.normalize('NFKC'), salt, KEY_LENGTH, { ...options, maxmem: 128 * 1024 * 1024 }, (error, key) =>
      error ? reject(error) : resolve(key),
    )
  })
}

export async function hashPassword(password: string): Promise<string> {
  const salt = randomBytes(SALT_LENGTH)
  const key = await scryptAsync(password, salt, PARAMS)
  return ['scrypt', PARAMS.N, PARAMS.r, PARAMS.p, salt.toString('base64url'), key.toString('base64url')].join('$')
}

export async function verifyPassword(password: string, stored: string): Promise<boolean> {
  const [scheme, n, r, p, salt, expected] = stored.split('$')
  if (scheme !== 'scrypt' || !salt || !expected) return false
  const expectedKey = Buffer.from(expected, 'base64url')
  const key = await scryptAsync(password, Buffer.from(salt, 'base64url'), { N: Number(n), r: Number(r), p: Number(p) })
  return key.length === expectedKey.length && timingSafeEqual(key, expectedKey)
}

/**
 * A hash of a random password, verified against when the account does not exist, so that an
 * unknown email costs the same scrypt work as a wrong password (no account enumeration by timing).
 */
let decoyHash: Promise<string> | undefined
export function decoyPasswordHash(): Promise<string> {
  decoyHash ??= hashPassword(randomBytes(16).toString('hex'))
  return decoyHash
}

const commonPasswords = new Set(dictionary['passwords-common'])

/** NIST SP 800-63B: length limits and a blocklist of commonly used passwords, no composition rules. */
export function passwordProblem(password: string): string | null {
  const length = [...password].length
  if (length < 8) return 'must be at least 8 characters'
  if (length > 1024) return 'must be at most 1024 characters'
  if (commonPasswords.has(password.toLowerCase())) return 'is too common; choose a less predictable password'
  return null
}
