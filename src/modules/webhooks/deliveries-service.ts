import { randomUUID } from 'node:crypto'
import type { FastifyBaseLogger } from 'fastify'
import { Counter, type Registry } from 'prom-client'
import type { Database, Executor } from '../../db/client.js'
import { timestampCursorParam, toPage } from '../../lib/cursor.js'
import { newId } from '../../lib/ids.js'
import { HttpProblem, problems } from '../../lib/problem.js'
import { parseRetryAfter } from '../../lib/retry-after.js'
import { TargetRefusedError, type TargetGuard } from '../../lib/ssrf-guard.js'
import type { Jobs } from '../../plugins/jobs.js'
import type { AuthContext } from '../auth/authorization.js'
import { ALL_EVENTS } from '../events/catalogue.js'
import type { CommittedEvent, Outbox } from '../events/events-service.js'
import type { DeliveriesRepository, DueDelivery } from './deliveries-repository.js'
import type { EndpointRow } from './endpoints-repository.js'
import type { EndpointsService } from './endpoints-service.js'
import { signDelivery } from './signing.js'

/** Jobs `{endpointId}` that wake a worker to deliver what is due to one endpoint. */
export const DELIVER_QUEUE = 'webhooks.deliver'

/** The first bytes of a receiver's answer kept in the delivery log. */
export const RESPONSE_BODY_LOG_BYTES = 1024

/** Outbox events fanned out per transaction. */
const FAN_OUT_BATCH = 200
/** Due deliveries read per query while draining an endpoint. */
const DRAIN_BATCH = 20

export interface DeliverySettings {
  /** Delay before each attempt, counted from the failure before it; `[0]` is the first attempt. */
  scheduleMs: number[]
  timeoutMs: number
  disableAfterFailingMs: number
}

/** What one HTTP attempt produced. */
interface AttemptOutcome {
  statusCode: number | null
  responseBody: string | null
  error: string | null
  /** From `Retry-After`, when the receiver sent one with a 429 or 5xx. */
  retryAfterMs: number | null
  latencyMs: number
}

type Verdict = 'succeeded' | 'retry' | 'gone'

function verdictOf(outcome: AttemptOutcome): Verdict {
  const status = outcome.statusCode
  if (status !== null && status >= 200 && status < 300) return 'succeeded'
  if (status === 410) return 'gone'
  return 'retry'
}

/**
 * Whether the receiver is struggling (no answer, 429, 5xx): it is then left alone until the failed
 * delivery's retry instead of being sent the rest of the backlog right away.
 */
function receiverStruggles(outcome: AttemptOutcome): boolean {
  const status = outcome.statusCode
  return status === null || status === 429 || status >= 500
}

/**
 * How long a drain holds an endpoint before it must have renewed its lease: its budget (two
 * timeouts), the attempt begun last (one more) and a margin for the database (one more, at least
 * 2 s). Also the job's expiry, after which a dead worker's job is retried.
 */
export function leaseDuration(timeoutMs: number): number {
  return Math.max(4 * timeoutMs, 3 * timeoutMs + 2000)
}

/** A struggling receiver (no answer, 5xx, 429) is left alone until its failed delivery's retry, at most this long. */
const STRUGGLING_PAUSE_CAP_MS = 5 * 60 * 1000

/** ±10% so that deliveries failing together do not all come back at the same instant. */
function withJitter(ms: number): number {
  return Math.round(ms * (0.9 + Math.random() * 0.2))
}

/** Why no response arrived, in terms the endpoint's owner can act on (never our internals). */
function describeFailure(error: unknown): string {
  if (error instanceof TargetRefusedError) return `target refused: ${error.message}`
  const { name, code } = (error ?? {}) as { name?: string; code?: string }
  if (name === 'TimeoutError' || name === 'AbortError') return 'timed out'
  switch (code) {
    case 'UND_ERR_CONNECT_TIMEOUT':
    case 'UND_ERR_HEADERS_TIMEOUT':
    case 'UND_ERR_BODY_TIMEOUT':
      return 'timed out'
    case 'ECONNREFUSED':
      return 'connection refused'
    case 'ECONNRESET':
    case 'UND_ERR_SOCKET':
      return 'connection reset'
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
      return 'host name could not be resolved'
    default:
      return code?.startsWith('ERR_TLS') || code?.includes('CERT')
        ? `TLS handshake failed (${code})`
        : 'connection failed'
  }
}

/** Reads at most `limit` bytes of a body; a longer one is cut off, not read to its end. */
async function readPrefix(body: AsyncIterable<Buffer> & { destroy(): unknown }, limit: number): Promise<string> {
  const chunks: Buffer[] = []
  let length = 0
  for await (const chunk of body) {
    chunks.push(chunk)
    length += chunk.length
    if (length >= limit) {
      body.destroy()
      break
    }
  }
  // PostgreSQL text cannot hold NUL; a cut multi-byte character decodes as U+FFFD.
  return Buffer.concat(chunks, Math.min(length, limit)).toString('utf8').replaceAll('\u0000', '\uFFFD')
}

export function createDeliveriesService(deps: {
  db: Database
  repository: DeliveriesRepository
  endpoints: Pick<EndpointsService, 'signingSecrets' | 'manageable'>
  guard: TargetGuard
  jobs: Jobs
  outbox: Outbox
  log: FastifyBaseLogger
  metrics: Registry
  settings: DeliverySettings
}) {
  const { db, repository, endpoints, guard, jobs, outbox, log, settings } = deps
  const { scheduleMs, timeoutMs } = settings
  const longestDelayMs = Math.max(...scheduleMs)
  // A drain hands over to a fresh job after this long, so no job outlives its expiry; its lease
  // covers the last attempt begun before that, and its database writes.
  const drainBudgetMs = 2 * timeoutMs
  const leaseMs = leaseDuration(timeoutMs)
  let closing = false

  const attemptsTotal = new Counter({
    name: 'webhook_delivery_attempts_total',
    help: 'Outbound webhook delivery attempts by result: succeeded, retry (failed, tried again or given up), gone (410)',
    labelNames: ['result'] as const,
    registers: [deps.metrics],
  })

  async function wake(endpointIds: string[], tx?: Executor) {
    if (endpointIds.length === 0) return
    await jobs.sendMany(
      DELIVER_QUEUE,
      endpointIds.map((endpointId) => ({ endpointId })),
      tx ? { tx } : {},
    )
  }

  /** Turns committed events into deliveries to every enabled endpoint subscribed to them. */
  async function fanOut(events: CommittedEvent[], tx: Executor): Promise<string[]> {
    const targets = await repository.enabledEndpoints([...new Set(events.map((event) => event.orgId))], tx)
    const messages = []
    const deliveries = []
    for (const event of events) {
      const occurredAt = Date.parse(event.timestamp)
      const subscribed = targets.filter(
        (endpoint) =>
          endpoint.orgId === event.orgId &&
          (endpoint.events.includes(ALL_EVENTS) || endpoint.events.includes(event.type)) &&
          // An endpoint receives what happened since it was registered, even when dispatch lags.
          endpoint.createdAt.getTime() <= occurredAt,
      )
      if (subscribed.length === 0) continue
      const { id, type, timestamp, orgId, data } = event
      messages.push({ id, orgId, eventType: type, body: JSON.stringify({ id, type, timestamp, orgId, data }) })
      for (const endpoint of subscribed) deliveries.push({ id: newId('whd'), messageId: id, endpointId: endpoint.id })
    }
    await repository.enqueue(messages, deliveries, tx)
    const woken = [...new Set(deliveries.map((delivery) => delivery.endpointId))]
    await wake(woken, tx)
    return woken
  }

  async function post(endpoint: EndpointRow, delivery: DueDelivery, attemptedAt: Date): Promise<AttemptOutcome> {
    const headers = {
      'content-type': 'application/json',
      'user-agent': 'Backplane-Webhooks/1',
      ...signDelivery(
        { id: delivery.messageId, timestamp: attemptedAt, body: delivery.body },
        endpoints.signingSecrets(endpoint, attemptedAt),
      ),
    }
    const started = performance.now()
    const latency = () => Math.round(performance.now() - started)
    try {
      const response = await guard.request(endpoint.url, {
        method: 'POST',
        headers,
        body: delivery.body,
        signal: AbortSignal.timeout(timeoutMs),
      })
      const responseBody = await readPrefix(response.body, RESPONSE_BODY_LOG_BYTES)
      const status = response.statusCode
      const retryAfterMs = status === 429 || status >= 500 ? parseRetryAfter(response.headers['retry-after']) : null
      const error = status >= 300 && status < 400 ? 'redirect not followed' : null
      return { statusCode: status, responseBody, error, retryAfterMs, latencyMs: latency() }
    } catch (error) {
      return {
        statusCode: null,
        responseBody: null,
        error: describeFailure(error),
        retryAfterMs: null,
        latencyMs: latency(),
      }
    }
  }

  async function disableEndpoint(endpointId: string, reason: 'gone' | 'failing', tx: Executor) {
    const disabled = await repository.disable(endpointId, reason, tx)
    if (!disabled) return
    // Nothing more goes out to it: what waited is failed, visible, and can be retried by hand.
    await repository.failPending(endpointId, tx)
    await outbox.record(
      {
        type: 'webhook.endpoint.disabled',
        orgId: disabled.orgId,
        subject: { type: 'webhook_endpoint', id: disabled.id },
        data: { endpointId: disabled.id, url: disabled.url, reason, disabledAt: disabled.updatedAt.toISOString() },
      },
      tx,
    )
    log.warn({ endpointId, reason }, 'webhook endpoint disabled')
  }

  /**
   * One attempt of one delivery, then its outcome recorded: the log entry, the next attempt (a job
   * that wakes the endpoint then), the endpoint's failing streak. Returns when the next attempt to
   * this endpoint may be made, when the receiver asked to be left alone, and whether it stays enabled.
   */
  async function attempt(endpoint: EndpointRow, delivery: DueDelivery) {
    const attemptedAt = new Date()
    const outcome = await post(endpoint, delivery, attemptedAt)
    const verdict = verdictOf(outcome)
    const number = delivery.attempts + 1
    const step = delivery.scheduleStep + 1
    // This worker alone delivers to the endpoint (the lease), so its view of the streak is current.
    const failingSince = verdict === 'succeeded' ? null : (endpoint.failingSince ?? attemptedAt)
    const disableReason =
      verdict === 'gone'
        ? 'gone'
        : failingSince && attemptedAt.getTime() - failingSince.getTime() >= settings.disableAfterFailingMs
          ? 'failing'
          : null
    let nextAttemptAt: Date | null = null
    if (verdict === 'retry' && !disableReason && step < scheduleMs.length) {
      const scheduled = withJitter(scheduleMs[step] as number)
      const asked = outcome.retryAfterMs === null ? 0 : Math.min(outcome.retryAfterMs, longestDelayMs)
      nextAttemptAt = new Date(Date.now() + Math.max(scheduled, asked))
    }
    const status = verdict === 'succeeded' ? 'succeeded' : nextAttemptAt ? 'pending' : 'failed'
    const settlement = { status, scheduleStep: step, nextAttemptAt } as const
    const entry = {
      id: newId('wha'),
      deliveryId: delivery.id,
      endpointId: endpoint.id,
      attempt: number,
      attemptedAt,
      succeeded: verdict === 'succeeded',
      statusCode: outcome.statusCode,
      latencyMs: outcome.latencyMs,
      responseBody: outcome.responseBody,
      error: outcome.error,
    }
    if (verdict === 'succeeded' && !endpoint.failingSince) {
      // The common case is one statement: no streak to end, nothing to schedule.
      await repository.settle(settlement, entry)
    } else {
      await db.transaction(async (tx) => {
        // False when another run of this delivery (its worker died after sending) recorded it already.
        if (!(await repository.settle(settlement, entry, tx))) return
        if (verdict === 'succeeded') return repository.endpointRecovered(endpoint.id, tx)
        await repository.endpointFailed(endpoint.id, attemptedAt, tx)
        if (disableReason) await disableEndpoint(endpoint.id, disableReason, tx)
        else if (nextAttemptAt) {
          await jobs.send(DELIVER_QUEUE, { endpointId: endpoint.id }, { tx, startAfter: nextAttemptAt })
        }
      })
    }
    attemptsTotal.inc({ result: verdict })
    const struggling = verdict === 'retry' && receiverStruggles(outcome)
    let pausedUntil: Date | null = null
    if (nextAttemptAt && outcome.retryAfterMs !== null) pausedUntil = nextAttemptAt
    else if (nextAttemptAt && struggling) {
      pausedUntil = new Date(Math.min(nextAttemptAt.getTime(), Date.now() + STRUGGLING_PAUSE_CAP_MS))
    }
    return { stillEnabled: disableReason === null, failingSince, struggling, pausedUntil }
  }

  return {
    fanOut,

    /**
     * Fans out every committed event not yet handed on. Concurrent dispatchers (other processes)
     * take other events; the order of an endpoint's deliveries is the order they were committed in.
     */
    async dispatch(): Promise<number> {
      let total = 0
      const woken = new Set<string>()
      for (;;) {
        let batchWoken: string[] = []
        const count = await outbox.dispatch(async (events, tx) => {
          batchWoken = await fanOut(events, tx)
        }, FAN_OUT_BATCH)
        for (const id of batchWoken) woken.add(id)
        total += count
        if (count < FAN_OUT_BATCH) break
      }
      if (woken.size > 0) jobs.poke(DELIVER_QUEUE)
      return total
    },

    /**
     * Delivers what is due to one endpoint, in order, as the only worker doing so (a lease on the
     * endpoint). A worker that finds the lease taken does nothing: the holder looks again after
     * releasing it, and a holder that died leaves a lease that runs out, after which its job is
     * retried and the sweep wakes the endpoint.
     */
    async drain(endpointId: string): Promise<void> {
      const token = randomUUID()
      let endpoint = await repository.acquireLease(endpointId, token, leaseMs)
      if (!endpoint) return
      const deadline = Date.now() + drainBudgetMs
      let pausedUntil: Date | null = null
      // Why this drain ended early; a paused endpoint is woken by its failed delivery's retry job.
      let stop: 'paused' | 'struggling' | 'disabled' | 'budget' | 'closing' | 'lost' | null = null
      try {
        drain: for (;;) {
          const due = await repository.due(endpointId, DRAIN_BATCH)
          if (due.length === 0) break
          for (const delivery of due) {
            if (closing) {
              stop = 'closing'
              break drain
            }
            const result = await attempt(endpoint, delivery)
            endpoint = { ...endpoint, failingSince: result.failingSince }
            if (!result.stillEnabled) stop = 'disabled'
            else if (result.pausedUntil) {
              pausedUntil = result.pausedUntil
              stop = 'paused'
            } else if (result.struggling) stop = 'struggling'
            else if (Date.now() >= deadline) stop = 'budget'
            if (stop) break drain
          }
          // Extends the lease and picks up changes made meanwhile (a new URL, a rotated secret, disabling).
          const renewed = await repository.renewLease(endpointId, token, leaseMs)
          if (!renewed) {
            stop = 'lost'
            break
          }
          endpoint = renewed
          if (!endpoint.enabled) {
            stop = 'disabled'
            break
          }
        }
      } finally {
        if (stop !== 'lost') await repository.releaseLease(endpointId, token, pausedUntil)
      }
      if (stop === 'budget') {
        await wake([endpointId])
        jobs.poke(DELIVER_QUEUE)
      } else if (stop === null && (await repository.hasDue(endpointId))) {
        // Deliveries that became due while the lease was held had their wake-up find it taken.
        await wake([endpointId])
        jobs.poke(DELIVER_QUEUE)
      }
    },

    /** No drain starts another attempt: the process is shutting down. */
    stopDelivering() {
      closing = true
    },

    /** Wakes endpoints with due deliveries and no worker; covers lost wake-ups and dead workers. */
    async sweep(): Promise<number> {
      const neglected = await repository.neglectedEndpoints(500)
      await wake(neglected)
      if (neglected.length > 0) jobs.poke(DELIVER_QUEUE)
      return neglected.length
    },

    async wake(endpointId: string) {
      await wake([endpointId])
      jobs.poke(DELIVER_QUEUE)
    },

    /** The delivery log of an endpoint the caller administers, newest attempt first. */
    async log(auth: AuthContext, endpointId: string, query: { limit?: number; cursor?: string | undefined }) {
      await endpoints.manageable(auth, endpointId, 'webhooks:read')
      const limit = query.limit ?? 20
      const before = timestampCursorParam(query.cursor, endpointId)
      const rows = await repository.attempts(endpointId, limit + 1, before)
      const { data, nextCursor } = toPage(rows, limit, (row) => ({
        k: row.sortKey,
        id: row.attempt.id,
        scope: endpointId,
      }))
      return {
        data: data.map(({ attempt: entry, deliveryStatus, eventId, eventType }) => ({
          id: entry.id,
          deliveryId: entry.deliveryId,
          eventId,
          eventType,
          attempt: entry.attempt,
          attemptedAt: entry.attemptedAt,
          succeeded: entry.succeeded,
          statusCode: entry.statusCode,
          latencyMs: entry.latencyMs,
          responseBody: entry.responseBody,
          error: entry.error,
          nextRetryAt: entry.nextRetryAt,
          deliveryStatus,
        })),
        nextCursor,
      }
    },

    /** Sends `webhook.test` to this endpoint only, through the same queue as every delivery. */
    async test(auth: AuthContext, endpointId: string) {
      const endpoint = await endpoints.manageable(auth, endpointId, 'webhooks:write')
      if (!endpoint.enabled) {
        throw new HttpProblem(409, 'WEBHOOK_ENDPOINT_DISABLED', 'Enable the endpoint before sending it events.')
      }
      const event = {
        id: newId('evt'),
        type: 'webhook.test',
        timestamp: new Date().toISOString(),
        orgId: endpoint.orgId,
        data: { endpointId, message: 'This is a test event sent from Backplane.' },
      }
      const deliveryId = newId('whd')
      await db.transaction(async (tx) => {
        await repository.enqueue(
          [{ id: event.id, orgId: event.orgId, eventType: event.type, body: JSON.stringify(event) }],
          [{ id: deliveryId, messageId: event.id, endpointId }],
          tx,
        )
        await wake([endpointId], tx)
      })
      jobs.poke(DELIVER_QUEUE)
      return { eventId: event.id, deliveryId }
    },

    /** A failed delivery sent again, with the retry schedule started over. */
    async retry(auth: AuthContext, endpointId: string, deliveryId: string) {
      const endpoint = await endpoints.manageable(auth, endpointId, 'webhooks:write')
      if (!endpoint.enabled) {
        throw new HttpProblem(409, 'WEBHOOK_ENDPOINT_DISABLED', 'Enable the endpoint before retrying its deliveries.')
      }
      const eventId = await db.transaction(async (tx) => {
        const previous = await repository.retry(endpointId, deliveryId, tx)
        if (previous === null) throw problems.notFound('Delivery not found.', 'WEBHOOK_DELIVERY_NOT_FOUND')
        if (previous.status !== 'failed') {
          throw new HttpProblem(
            409,
            'WEBHOOK_DELIVERY_NOT_FAILED',
            `The delivery is ${previous.status}; only failed deliveries are retried by hand.`,
          )
        }
        await wake([endpointId], tx)
        return previous.messageId
      })
      jobs.poke(DELIVER_QUEUE)
      return { deliveryId, eventId, status: 'pending' as const }
    },
  }
}

export type DeliveriesService = ReturnType<typeof createDeliveriesService>
