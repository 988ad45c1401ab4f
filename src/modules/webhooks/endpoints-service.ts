import type { SealedColumn } from '../../db/reseal.js'
import { webhookEndpoints } from '../../db/schema/index.js'
import { randomBytes } from 'node:crypto'
import type { Database } from '../../db/client.js'
import type { CryptoBox } from '../../lib/crypto-box.js'
import { timestampCursorParam, toPage } from '../../lib/cursor.js'
import { newId } from '../../lib/ids.js'
import { HttpProblem, problems } from '../../lib/problem.js'
import { TargetRefusedError, type TargetGuard } from '../../lib/ssrf-guard.js'
import { type AuthContext, orgOrDefault, requireOrgRole, requireScope } from '../auth/authorization.js'
import { ALL_EVENTS } from '../events/catalogue.js'
import type { OrgsModuleService } from '../orgs/orgs-service.js'
import type { EndpointRow, EndpointsRepository } from './endpoints-repository.js'

/** Stored URLs are at most this long, measured after normalisation. */
export const MAX_URL_LENGTH = 2048

/** After a rotation the previous secret keeps signing this long, so receivers can switch over. */
export const SECRET_OVERLAP_MS = 24 * 60 * 60 * 1000

/** Standard Webhooks secrets: `whsec_` + base64 of random bytes (32, above the minimum of 24). */
export function generateSecret(): string {
  return `whsec_${randomBytes(32).toString('base64')}`
}

export interface EndpointInput {
  url: string
  events: string[]
  description?: string | undefined
  enabled?: boolean | undefined
}

/** The representation clients see: never a secret. */
export function presentEndpoint(row: EndpointRow, now = new Date()) {
  const overlapping = row.previousSecretExpiresAt !== null && row.previousSecretExpiresAt > now
  return {
    id: row.id,
    orgId: row.orgId,
    url: row.url,
    events: row.events,
    description: row.description,
    enabled: row.enabled,
    disabledReason: row.disabledReason,
    previousSecretExpiresAt: overlapping ? row.previousSecretExpiresAt : null,
    createdAt: row.createdAt,
    updatedAt: row.updatedAt,
  }
}

/** What an endpoint's sealed signing secret is bound to: the endpoint. */
export const endpointSecretAad = (endpointId: string) => `webhook-endpoint:${endpointId}`

/** Endpoint signing secrets (current and, while rotating, previous), for re-sealing under a new instance key. */
export const sealedEndpointSecrets: SealedColumn[] = [
  {
    name: 'webhook endpoint secrets',
    table: webhookEndpoints,
    id: webhookEndpoints.id,
    column: webhookEndpoints.secretSealed,
    key: 'secretSealed',
    aad: endpointSecretAad,
  },
  {
    name: 'previous webhook endpoint secrets',
    table: webhookEndpoints,
    id: webhookEndpoints.id,
    column: webhookEndpoints.previousSecretSealed,
    key: 'previousSecretSealed',
    aad: endpointSecretAad,
  },
]

export function createEndpointsService(deps: {
  db: Database
  repository: EndpointsRepository
  cryptoBox: CryptoBox
  guard: TargetGuard
  orgs: Pick<OrgsModuleService, 'audit'>
  /** Called after an endpoint was enabled by hand, so what waited for it is delivered now. */
  onEnabled?: (endpointId: string) => Promise<void>
}) {
  const { db, repository, cryptoBox, guard, orgs } = deps
  // Binds a sealed secret to its endpoint: copied to another row it does not open.
  const aad = endpointSecretAad

  /** Refuses URLs that could reach our own network (SSRF); the same check runs again at connect time. */
  async function checkUrl(url: string): Promise<string> {
    let href: string
    try {
      href = (await guard.checkUrl(url)).href
    } catch (error) {
      if (!(error instanceof TargetRefusedError)) throw error
      throw new HttpProblem(400, 'INVALID_WEBHOOK_URL', `The endpoint URL is refused: ${error.message}.`, {
        errors: [{ path: '/body/url', message: error.message }],
      })
    }
    // Normalising percent-encodes, so the stored form can be longer than the input the schema bounded.
    if (href.length > MAX_URL_LENGTH) {
      throw new HttpProblem(
        400,
        'INVALID_WEBHOOK_URL',
        `The endpoint URL is longer than ${MAX_URL_LENGTH} characters.`,
        {
          errors: [{ path: '/body/url', message: `longer than ${MAX_URL_LENGTH} characters once normalised` }],
        },
      )
    }
    return href
  }

  function checkEvents(events: string[]): string[] {
    if (events.includes(ALL_EVENTS) && events.length > 1) {
      throw problems.badRequest('INVALID_EVENTS', 'Subscribe to "*" alone, or to a list of event types.', [
        { path: '/body/events', message: '"*" cannot be combined with event types' },
      ])
    }
    return events
  }

  /** An endpoint of one of the caller's orgs, managed by admins; others' endpoints do not exist (404). */
  async function manageable(auth: AuthContext, id: string, scope: 'webhooks:read' | 'webhooks:write') {
    requireScope(auth, scope)
    const endpoint = await repository.find(id, [...auth.roles.keys()])
    if (!endpoint) throw problems.notFound('Webhook endpoint not found.', 'WEBHOOK_ENDPOINT_NOT_FOUND')
    requireOrgRole(auth, endpoint.orgId, 'admin')
    return endpoint
  }

  function audit(
    action: string,
    endpoint: EndpointRow,
    auth: AuthContext,
    ip: string,
    tx: Parameters<typeof orgs.audit>[1],
  ) {
    return orgs.audit(
      {
        orgId: endpoint.orgId,
        action,
        actorUserId: auth.userId,
        actorKeyId: auth.apiKey?.id ?? null,
        targetType: 'webhook_endpoint',
        targetId: endpoint.id,
        ip,
        metadata: { url: endpoint.url },
      },
      tx,
    )
  }

  return {
    manageable,

    async create(auth: AuthContext, input: EndpointInput & { orgId?: string | undefined }, ip: string) {
      requireScope(auth, 'webhooks:write')
      const orgId = orgOrDefault(auth, input.orgId)
      requireOrgRole(auth, orgId, 'admin')
      const url = await checkUrl(input.url)
      const events = checkEvents(input.events)
      const id = newId('whe')
      const secret = generateSecret()
      const endpoint = await db.transaction(async (tx) => {
        const row = await repository.insert(
          {
            id,
            orgId,
            url,
            events,
            description: input.description ?? '',
            enabled: input.enabled ?? true,
            secretSealed: cryptoBox.seal(secret, aad(id)),
            createdBy: auth.userId,
          },
          tx,
        )
        await audit('webhook_endpoint.created', row, auth, ip, tx)
        return row
      })
      return { ...presentEndpoint(endpoint), secret }
    },

    async list(auth: AuthContext, query: { orgId?: string | undefined; limit?: number; cursor?: string | undefined }) {
      requireScope(auth, 'webhooks:read')
      const orgId = orgOrDefault(auth, query.orgId)
      requireOrgRole(auth, orgId, 'admin')
      const limit = query.limit ?? 20
      const after = timestampCursorParam(query.cursor, orgId)
      const rows = await repository.list(orgId, limit + 1, after)
      const { data, nextCursor } = toPage(rows, limit, (row) => ({ k: row.sortKey, id: row.endpoint.id, scope: orgId }))
      const now = new Date()
      return { data: data.map((row) => presentEndpoint(row.endpoint, now)), nextCursor }
    },

    async get(auth: AuthContext, id: string) {
      return presentEndpoint(await manageable(auth, id, 'webhooks:read'))
    },

    async update(auth: AuthContext, id: string, patch: Partial<EndpointInput>, ip: string) {
      await manageable(auth, id, 'webhooks:write')
      const url = patch.url === undefined ? undefined : await checkUrl(patch.url)
      const events = patch.events === undefined ? undefined : checkEvents(patch.events)
      const updated = await db.transaction(async (tx) => {
        const current = await repository.lock(id, tx)
        if (!current) throw problems.notFound('Webhook endpoint not found.', 'WEBHOOK_ENDPOINT_NOT_FOUND')
        const row = await repository.update(
          id,
          {
            ...(url !== undefined ? { url } : {}),
            ...(events !== undefined ? { events } : {}),
            ...(patch.description !== undefined ? { description: patch.description } : {}),
            ...(patch.enabled !== undefined ? { enabled: patch.enabled } : {}),
            // Enabling by hand clears why the server disabled it; disabling again keeps the reason.
            ...(patch.enabled === true ? { disabledReason: null } : {}),
          },
          tx,
        )
        if (patch.enabled === true || (url !== undefined && url !== current.url)) {
          await repository.resetDeliveryState(id, tx)
        }
        await audit('webhook_endpoint.updated', row, auth, ip, tx)
        return row
      })
      if (patch.enabled === true) {
        // Committed already: a failed wake-up is made good by the next sweep, not reported as an error.
        await deps.onEnabled?.(id).catch(() => {})
      }
      return presentEndpoint(updated)
    },

    async remove(auth: AuthContext, id: string, ip: string) {
      const endpoint = await manageable(auth, id, 'webhooks:write')
      await db.transaction(async (tx) => {
        await repository.delete(id, tx)
        await audit('webhook_endpoint.deleted', endpoint, auth, ip, tx)
      })
    },

    /** A new secret; the current one becomes the previous and keeps signing for SECRET_OVERLAP_MS. */
    async rotateSecret(auth: AuthContext, id: string, ip: string) {
      await manageable(auth, id, 'webhooks:write')
      const secret = generateSecret()
      const updated = await db.transaction(async (tx) => {
        const current = await repository.lock(id, tx)
        if (!current) throw problems.notFound('Webhook endpoint not found.', 'WEBHOOK_ENDPOINT_NOT_FOUND')
        const row = await repository.update(
          id,
          {
            secretSealed: cryptoBox.seal(secret, aad(id)),
            previousSecretSealed: current.secretSealed,
            previousSecretExpiresAt: new Date(Date.now() + SECRET_OVERLAP_MS),
          },
          tx,
        )
        await audit('webhook_endpoint.secret_rotated', row, auth, ip, tx)
        return row
      })
      return { ...presentEndpoint(updated), secret }
    },

    /** The secrets that sign a delivery now: the current one, and the previous one while it overlaps. */
    signingSecrets(endpoint: EndpointRow, now = new Date()): string[] {
      const secrets = [cryptoBox.open(endpoint.secretSealed, aad(endpoint.id))]
      if (endpoint.previousSecretSealed && endpoint.previousSecretExpiresAt && endpoint.previousSecretExpiresAt > now) {
        secrets.push(cryptoBox.open(endpoint.previousSecretSealed, aad(endpoint.id)))
      }
      return secrets
    },
  }
}

export type EndpointsService = ReturnType<typeof createEndpointsService>
