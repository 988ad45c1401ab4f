import Anthropic from '@anthropic-ai/sdk'
import type { FastifyBaseLogger } from 'fastify'
import { LRUCache } from 'lru-cache'
import OpenAI from 'openai'
import type { Config } from '../../config.js'
import type { CryptoBox } from '../../lib/crypto-box.js'
import { createGroupCommit } from '../../lib/group-commit.js'
import { problems } from '../../lib/problem.js'
import { type ServicePolicy, upstreamProblem } from '../../lib/resilience.js'
import { type AuthContext, requireOrgRole } from '../auth/authorization.js'
import type { ProviderKey, ProviderName } from '../chat/providers.js'
import { type CredentialRow, type CredentialsRepository, credentialAad } from './credentials-repository.js'

/** The services an org may bring its own key for. */
export const BYOK_SERVICES = ['openai', 'anthropic'] as const satisfies readonly ProviderName[]

export interface StoredCredential {
  service: ProviderName
  lastFour: string
  setAt: string
}

/** An org's own keys, opened, with a version that changes whenever one is set or removed. */
export interface OrgKeys {
  keys: Partial<Record<ProviderName, ProviderKey>>
  version: string
}

const NONE: OrgKeys = { keys: {}, version: '' }

export function createCredentialsService(deps: {
  repository: CredentialsRepository
  cryptoBox: CryptoBox
  config: Pick<Config, 'OPENAI_BASE_URL' | 'ANTHROPIC_BASE_URL'>
  policy(service: ProviderName): ServicePolicy
  log: FastifyBaseLogger
}) {
  const { repository, cryptoBox, log } = deps
  // Keys change rarely; an instance that did not make the change sees it within the lifetime.
  const cache = new LRUCache<string, OrgKeys>({ max: 50_000, ttl: 30_000 })
  // Bumped by every change made here: a lookup that started before one must not cache what it read.
  let changes = 0
  // Orgs asked about at the same moment share one statement (a burst of chats, one per org).
  const lookups = createGroupCommit({
    write: async (orgIds: string[]) => {
      const rows = await repository.forOrgs([...new Set(orgIds)])
      return orgIds.map((orgId) => open(rows.filter((row) => row.orgId === orgId)))
    },
    maxBatch: 200,
    writers: 2,
  })

  function open(rows: CredentialRow[]): OrgKeys {
    if (rows.length === 0) return NONE
    const keys: Partial<Record<ProviderName, ProviderKey>> = {}
    for (const row of rows) {
      try {
        const apiKey = cryptoBox.open(row.sealedKey, credentialAad(row.orgId, row.service))
        keys[row.service as ProviderName] = { apiKey, owner: row.orgId }
      } catch (error) {
        // Sealed under a key this instance no longer holds: the org falls back to the server's key.
        log.error({ orgId: row.orgId, service: row.service, err: error }, 'an org credential cannot be opened')
      }
    }
    return { keys, version: rows.map((row) => `${row.service}@${row.setAt.getTime()}`).join(',') }
  }

  /** A cheap authenticated call: the key works, or the org is told now rather than at its next chat. */
  async function validate(service: ProviderName, orgId: string, apiKey: string): Promise<void> {
    try {
      await deps
        .policy(service)
        .call(
          { operation: 'credentials.validate', idempotent: true, maxRetries: 1, credential: orgId },
          async (signal) => {
            if (service === 'openai') {
              const client = new OpenAI({
                apiKey,
                maxRetries: 0,
                ...(deps.config.OPENAI_BASE_URL ? { baseURL: deps.config.OPENAI_BASE_URL } : {}),
              })
              await client.models.list({ signal })
            } else {
              const client = new Anthropic({
                apiKey,
                maxRetries: 0,
                ...(deps.config.ANTHROPIC_BASE_URL ? { baseURL: deps.config.ANTHROPIC_BASE_URL } : {}),
              })
              await client.models.list({}, { signal })
            }
          },
        )
    } catch (error) {
      const status = (error as { status?: unknown }).status
      if (status === 401 || status === 403) {
        throw problems.unprocessable(`${service} does not accept this key.`, 'INVALID_CREDENTIAL')
      }
      throw upstreamProblem(error, {
        unavailable: `${service} cannot check the key at the moment; try again shortly.`,
        refused: `${service} refused to check the key.`,
      })
    }
  }

  const present = (row: CredentialRow): StoredCredential => ({
    service: row.service as ProviderName,
    lastFour: row.lastFour,
    setAt: row.setAt.toISOString(),
  })

  return {
    /** The org's own keys (none: the server's are used). */
    async keysFor(orgId: string): Promise<OrgKeys> {
      const cached = cache.get(orgId)
      if (cached) return cached
      const before = changes
      const found = await lookups.submit(orgId)
      if (changes === before) cache.set(orgId, found)
      return found
    },

    async list(auth: AuthContext, orgId: string): Promise<StoredCredential[]> {
      requireOrgRole(auth, orgId, 'admin')
      return (await repository.forOrgs([orgId])).map(present)
    },

    async set(auth: AuthContext, orgId: string, service: ProviderName, apiKey: string): Promise<StoredCredential> {
      requireOrgRole(auth, orgId, 'admin')
      const key = apiKey.trim()
      await validate(service, orgId, key)
      const row = await repository.upsert({
        orgId,
        service,
        sealedKey: cryptoBox.seal(key, credentialAad(orgId, service)),
        lastFour: key.slice(-4),
        setBy: auth.userId,
      })
      changes++
      cache.delete(orgId)
      log.info({ orgId, service, userId: auth.userId }, 'org credential set')
      return present(row)
    },

    async remove(auth: AuthContext, orgId: string, service: ProviderName): Promise<void> {
      requireOrgRole(auth, orgId, 'admin')
      if (!(await repository.remove(orgId, service))) {
        throw problems.notFound(`The organization has no ${service} key of its own.`, 'CREDENTIAL_NOT_FOUND')
      }
      changes++
      cache.delete(orgId)
      log.info({ orgId, service, userId: auth.userId }, 'org credential removed')
    },
  }
}

export type CredentialsService = ReturnType<typeof createCredentialsService>

/**
 * Re-seals every stored org credential under the current instance key (after ENCRYPTION_KEY
 * changed, with the old key kept as retired while this runs). Returns how many were re-sealed.
 */
export async function resealCredentials(repository: CredentialsRepository, cryptoBox: CryptoBox): Promise<number> {
  let resealed = 0
  for (const row of await repository.all()) {
    const aad = credentialAad(row.orgId, row.service)
    if (row.sealedKey.split('.')[1] === cryptoBox.currentKeyId) continue
    await repository.reseal(row, cryptoBox.seal(cryptoBox.open(row.sealedKey, aad), aad))
    resealed++
  }
  return resealed
}
