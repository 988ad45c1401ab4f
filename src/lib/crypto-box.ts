import { createCipheriv, createDecipheriv, createHash, randomBytes } from 'node:crypto'

/** A sealed value that does not open: malformed, sealed with a key this box lacks, or tampered with. */
export class SealedValueError extends Error {
  override name = 'SealedValueError'
}

/**
 * Authenticated encryption of secrets at rest (AES-256-GCM). Each sealed value names the key that
 * sealed it, so a keyring holding the current key and retired ones can open old values while new
 * ones are sealed with the current key: that is what makes key rotation possible.
 *
 * Format: `v1.<keyId>.<iv>.<ciphertext>.<tag>` (base64url parts). `aad` binds a value to its
 * purpose (e.g. "signing-key:<kid>") so a sealed value copied to another column does not open.
 */
export class CryptoBox {
  private readonly keys = new Map<string, Buffer>()
  readonly currentKeyId: string

  constructor(currentKey: Buffer, retiredKeys: Buffer[] = []) {
    for (const key of [currentKey, ...retiredKeys]) {
      if (key.length !== 32) throw new Error('encryption keys must be 32 bytes')
      this.keys.set(CryptoBox.keyId(key), key)
    }
    this.currentKeyId = CryptoBox.keyId(currentKey)
  }

  /** A short public fingerprint of a key; never reveals the key. */
  static keyId(key: Buffer): string {
    return createHash('sha256').update('backplane-key-id').update(key).digest('base64url').slice(0, 8)
  }

  seal(plaintext: string, aad: string): string {
    const key = this.keys.get(this.currentKeyId) as Buffer
    const iv = randomBytes(12)
    const cipher = createCipheriv('aes-256-gcm', key, iv)
    cipher.setAAD(Buffer.from(aad))
    const ciphertext = Buffer.concat([cipher.update(plaintext, 'utf8'), cipher.final()])
    return ['v1', this.currentKeyId, iv, ciphertext, cipher.getAuthTag()]
      .map((part) => (typeof part === 'string' ? part : part.toString('base64url')))
      .join('.')
  }

  open(sealed: string, aad: string): string {
    const [version, keyId, iv, ciphertext, tag] = sealed.split('.')
    if (version !== 'v1' || !keyId || iv === undefined || ciphertext === undefined || tag === undefined) {
      throw new SealedValueError('not a sealed value')
    }
    const key = this.keys.get(keyId)
    if (!key) throw new SealedValueError(`sealed with an unknown key (${keyId})`)
    try {
      const decipher = createDecipheriv('aes-256-gcm', key, Buffer.from(iv, 'base64url'))
      decipher.setAAD(Buffer.from(aad))
      decipher.setAuthTag(Buffer.from(tag, 'base64url'))
      return Buffer.concat([decipher.update(Buffer.from(ciphertext, 'base64url')), decipher.final()]).toString('utf8')
    } catch {
      throw new SealedValueError(`does not open with key ${keyId}: altered, or sealed for another purpose`)
    }
  }
}
