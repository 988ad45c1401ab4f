import type { CryptoBox } from '../lib/crypto-box.js'
import { sealedSigningKeys } from '../modules/auth/token-service.js'
import { createCredentialsRepository } from '../modules/integrations/credentials-repository.js'
import { resealCredentials } from '../modules/integrations/credentials-service.js'
import { sealedEndpointSecrets } from '../modules/webhooks/endpoints-service.js'
import type { Database } from './client.js'
import { resealColumn } from './reseal.js'

/**
 * Re-seals every secret stored at rest under the current instance key: signing keys, webhook
 * endpoint secrets, org credentials. Values sealed under a key the box does not hold fail the
 * run (nothing after them is lost: each value is replaced on its own). Returns counts by kind.
 */
export async function rotateEncryption(db: Database, cryptoBox: CryptoBox): Promise<Record<string, number>> {
  const counts: Record<string, number> = {}
  for (const spec of [sealedSigningKeys, ...sealedEndpointSecrets]) {
    counts[spec.name] = await resealColumn(db, cryptoBox, spec)
  }
  counts['org credentials'] = await resealCredentials(createCredentialsRepository(db), cryptoBox)
  return counts
}
