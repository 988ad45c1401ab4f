import {
  BrokenCircuitError,
  CircuitState,
  circuitBreaker,
  DelegateBackoff,
  handleWhen,
  type IRetryBackoffContext,
  retry,
  SamplingBreaker,
  TaskCancelledError,
  TimeoutStrategy,
  timeout,
} from 'cockatiel'
import type { RateLimiterAbstract, RateLimiterRes } from 'rate-limiter-flexible'
import { HttpProblem, problems } from './problem.js'
import { parseRetryAfter } from './retry-after.js'

/**
 * How one third-party service is called: a token bucket, then a circuit breaker, then a timeout
 * per attempt, all inside a retry policy (cockatiel). The SDKs' own retries are turned off where
 * this policy wraps them, so that every attempt is seen, logged, counted and judged by the breaker.
 */
export interface PolicySettings {
  /** One attempt, until the answer arrives (for a stream: until it starts). */
  timeoutMs: number
  /** Retries after the first attempt, unless a call asks for its own number. */
  maxRetries: number
  /** Exponential backoff with full jitter: attempt n waits random(0, min(max, base * 2^n)). */
  baseDelayMs: number
  maxDelayMs: number
  breaker: {
    /** Share (0-1) of failed attempts in the window that opens the circuit. */
    threshold: number
    /** Attempts the window must hold before the share counts: quiet traffic never trips it. */
    minimumCalls: number
    windowMs: number
    /** How long an open circuit refuses calls before one probe may test the service. */
    halfOpenAfterMs: number
  }
}

export interface CallOptions {
  /** What is being done, for logs and metrics (`chat.stream`, `checkout.create`); bounded names only. */
  operation: string
  /**
   * Whether repeating the request is harmless (reads, requests carrying an idempotency key, model
   * calls before any output). Non-idempotent requests are retried only when they certainly did not
   * reach the service's logic: refused by our own bucket, or answered 429.
   */
  idempotent: boolean
  signal?: AbortSignal | undefined
  maxRetries?: number | undefined
  timeoutMs?: number | undefined
  /**
   * The call resolves with a response whose body is read afterwards: the signal handed to `fn`
   * must stay alive after it resolves (and still follows the caller's signal).
   */
  stream?: boolean | undefined
  /** Whose credential pays for the call (the server's or an org's own key): one bucket each. */
  credential?: string | undefined
  /**
   * Whether the caller aborted because the service was too slow by the caller's own deadline (a
   * model's first token): such an abort counts against the service like a timeout; others do not.
   */
  abortIsTimeout?: ((reason: unknown) => boolean) | undefined
}

/** The caller's signal ended an attempt; `serviceTimedOut` when it did so for the service's slowness. */
class CallerAbort extends Error {
  constructor(readonly serviceTimedOut: boolean) {
    super(serviceTimedOut ? 'the caller timed the service out' : 'the caller gave up')
    this.name = 'CallerAbort'
  }
}

export type AttemptOutcome =
  | 'success'
  | 'client_error'
  | 'rate_limited'
  | 'server_error'
  | 'timeout'
  | 'connection_error'
  | 'circuit_open'
  | 'throttled'
  | 'aborted'

export interface AttemptReport {
  operation: string
  attempt: number
  outcome: AttemptOutcome
  status: number | undefined
  latencyMs: number
}

/** The service cannot be called right now: its circuit is open, our bucket is empty, or it timed out. */
export class ServiceUnavailableError extends Error {
  constructor(
    readonly service: string,
    readonly reason: 'circuit-open' | 'throttled' | 'timeout',
    readonly retryAfterMs?: number,
  ) {
    super(
      reason === 'circuit-open'
        ? `${service} is failing; calls are paused while its circuit is open`
        : reason === 'throttled'
          ? `${service}: this server's request budget is used up for the moment`
          : `${service} did not answer in time`,
    )
    this.name = 'ServiceUnavailableError'
  }
}

/**
 * A third-party failure as the problem a client can act on: 502 UPSTREAM_ERROR when the service
 * refused the request, else 503 UPSTREAM_UNAVAILABLE with when to try again (down, busy, slow,
 * unreachable, or its circuit open).
 */
export function upstreamProblem(error: unknown, messages: { unavailable: string; refused: string }): HttpProblem {
  const unavailable = error instanceof ServiceUnavailableError
  const facts = failureFacts(error)
  const status = unavailable ? undefined : facts.status
  if (status !== undefined && status < 500 && status !== 408 && status !== 429) {
    return new HttpProblem(502, 'UPSTREAM_ERROR', messages.refused)
  }
  const retryAfterMs = unavailable ? error.retryAfterMs : facts.retryAfterMs
  return problems.unavailable(
    messages.unavailable,
    'UPSTREAM_UNAVAILABLE',
    Math.max(1, Math.ceil((retryAfterMs ?? 5000) / 1000)),
  )
}

/** What an SDK error says about the attempt, whichever SDK raised it. */
export interface FailureFacts {
  status: number | undefined
  retryAfterMs: number | undefined
  /** The service's own verdict (`x-should-retry`, `stripe-should-retry`), when it gave one. */
  shouldRetry: boolean | undefined
  /** The request never got an answer: no connection, a reset, a timeout. */
  transport: boolean
}

function header(headers: unknown, name: string): string | undefined {
  if (!headers || typeof headers !== 'object') return undefined
  if (typeof (headers as Headers).get === 'function') return (headers as Headers).get(name) ?? undefined
  const value = (headers as Record<string, unknown>)[name]
  return typeof value === 'string' ? value : undefined
}

/** Retry-After as milliseconds: `retry-after-ms` (OpenAI, Anthropic), else seconds or an HTTP date. */
export function retryAfterMsOf(headers: unknown, now = Date.now()): number | undefined {
  const ms = Number.parseFloat(header(headers, 'retry-after-ms') ?? '')
  if (Number.isFinite(ms) && ms >= 0) return ms
  return parseRetryAfter(header(headers, 'retry-after'), now) ?? undefined
}

const TRANSPORT_CODES = /^(ECONNRESET|ECONNREFUSED|EPIPE|ETIMEDOUT|ENOTFOUND|EAI_AGAIN|UND_ERR_\w+)$/
const TRANSPORT_NAMES = /^(APIConnectionError|APIConnectionTimeoutError|StripeConnectionError|FetchError)$/

export function failureFacts(error: unknown): FailureFacts {
  const e = (error ?? {}) as {
    status?: unknown
    statusCode?: unknown
    headers?: unknown
    code?: unknown
    name?: unknown
    type?: unknown
    cause?: unknown
  }
  const rawStatus = typeof e.status === 'number' ? e.status : e.statusCode
  const status = typeof rawStatus === 'number' ? rawStatus : undefined
  const verdict = header(e.headers, 'x-should-retry') ?? header(e.headers, 'stripe-should-retry')
  const causeCode = (e.cause as { code?: unknown } | undefined)?.code
  const transport =
    status === undefined &&
    (TRANSPORT_NAMES.test(String(e.name)) ||
      TRANSPORT_NAMES.test(String(e.type)) ||
      TRANSPORT_CODES.test(String(e.code)) ||
      TRANSPORT_CODES.test(String(causeCode)) ||
      error instanceof TaskCancelledError)
  return {
    status,
    retryAfterMs: status === undefined ? undefined : retryAfterMsOf(e.headers),
    shouldRetry: verdict === 'true' ? true : verdict === 'false' ? false : undefined,
    transport,
  }
}

/** The service's health is in question: it failed, or never answered. A refusal of our request is not. */
function isServiceFailure(facts: FailureFacts): boolean {
  if (facts.transport) return true
  return facts.status !== undefined && (facts.status === 408 || facts.status >= 500)
}

function outcomeOf(error: unknown, facts: FailureFacts, aborted: boolean): AttemptOutcome {
  if (aborted) return 'aborted'
  if (error instanceof ServiceUnavailableError) {
    return error.reason === 'circuit-open' ? 'circuit_open' : error.reason === 'throttled' ? 'throttled' : 'timeout'
  }
  if (facts.status === 429) return 'rate_limited'
  if (facts.status !== undefined) return facts.status >= 500 || facts.status === 408 ? 'server_error' : 'client_error'
  return facts.transport ? 'connection_error' : 'client_error'
}

/** A rolling count of attempts and failures, for "recent error rate" without a metrics backend. */
class RollingWindow {
  private readonly slots: { at: number; calls: number; failures: number }[]
  constructor(
    private readonly slotMs: number,
    slotCount: number,
  ) {
    this.slots = Array.from({ length: slotCount }, () => ({ at: 0, calls: 0, failures: 0 }))
  }

  record(failed: boolean, now = Date.now()) {
    const start = now - (now % this.slotMs)
    const slot = this.slots[Math.floor(start / this.slotMs) % this.slots.length] as (typeof this.slots)[number]
    if (slot.at !== start) Object.assign(slot, { at: start, calls: 0, failures: 0 })
    slot.calls++
    if (failed) slot.failures++
  }

  totals(now = Date.now()) {
    const horizon = now - this.slotMs * this.slots.length
    let calls = 0
    let failures = 0
    for (const slot of this.slots) {
      if (slot.at <= horizon) continue
      calls += slot.calls
      failures += slot.failures
    }
    return { calls, failures }
  }
}

export type BreakerState = 'closed' | 'open' | 'half-open'

export interface PolicyStatus {
  state: BreakerState
  lastSuccessAt: Date | null
  lastFailureAt: Date | null
  /** Attempts in the last five minutes, and the share of them that failed on the service's side. */
  recentCalls: number
  recentErrorRate: number
}

/** The bucket every attempt draws from: `consume` rejects with a RateLimiterRes when it is empty. */
export type Bucket = Pick<RateLimiterAbstract, 'consume'>

export interface ServicePolicy {
  readonly service: string
  call<T>(options: CallOptions, fn: (signal: AbortSignal) => Promise<T>): Promise<T>
  status(): PolicyStatus
}

export function createServicePolicy(deps: {
  service: string
  settings: PolicySettings
  bucket?: Bucket | undefined
  onAttempt?: (report: AttemptReport) => void
  /** A retry is scheduled: `attempt` failed and the next one starts after `delayMs`. */
  onRetry?: (retry: { operation: string; attempt: number; delayMs: number }) => void
  onStateChange?: (state: BreakerState) => void
  random?: () => number
}): ServicePolicy {
  const { service, settings } = deps
  const random = deps.random ?? Math.random
  const window = new RollingWindow(10_000, 30)
  let lastSuccessAt: Date | null = null
  let lastFailureAt: Date | null = null

  const breaker = circuitBreaker(
    handleWhen((error) =>
      error instanceof CallerAbort
        ? error.serviceTimedOut
        : !(error instanceof ServiceUnavailableError) && isServiceFailure(failureFacts(error)),
    ),
    {
      halfOpenAfter: settings.breaker.halfOpenAfterMs,
      breaker: new SamplingBreaker({
        threshold: settings.breaker.threshold,
        duration: settings.breaker.windowMs,
        // The breaker wants a rate; what operators think in is a number of attempts in the window.
        minimumRps: settings.breaker.minimumCalls / (settings.breaker.windowMs / 1000),
      }),
    },
  )
  const stateName = (state: CircuitState): BreakerState =>
    state === CircuitState.Open || state === CircuitState.Isolated
      ? 'open'
      : state === CircuitState.HalfOpen
        ? 'half-open'
        : 'closed'
  breaker.onStateChange((state) => deps.onStateChange?.(stateName(state)))

  async function draw(credential: string) {
    if (!deps.bucket) return
    try {
      await deps.bucket.consume(`${service}:${credential}`)
    } catch (rejection) {
      const wait = (rejection as RateLimiterRes | undefined)?.msBeforeNext
      // A store failure (Redis down, with no insurance) must not stop calls to the service.
      if (typeof wait !== 'number') return
      throw new ServiceUnavailableError(service, 'throttled', wait)
    }
  }

  return {
    service,

    async call<T>(options: CallOptions, fn: (signal: AbortSignal) => Promise<T>): Promise<T> {
      const callerSignal = options.signal
      const maxRetries = options.maxRetries ?? settings.maxRetries
      const perAttempt = timeout(options.timeoutMs ?? settings.timeoutMs, {
        strategy: TimeoutStrategy.Aggressive,
        abortOnReturn: !options.stream,
      })
      const retryable = (error: Error): boolean => {
        if (callerSignal?.aborted) return false
        if (error instanceof ServiceUnavailableError) {
          // Refused by our own bucket: nothing was sent. A timeout may have been processed.
          return error.reason === 'throttled' || (error.reason === 'timeout' && options.idempotent)
        }
        const facts = failureFacts(error)
        if (facts.shouldRetry !== undefined) return facts.shouldRetry
        if (facts.status === 429) return true
        return options.idempotent && isServiceFailure(facts)
      }
      const delayFor = (context: IRetryBackoffContext<unknown>) => {
        const error = 'error' in context.result ? context.result.error : undefined
        const asked = error instanceof ServiceUnavailableError ? error.retryAfterMs : failureFacts(error).retryAfterMs
        if (asked !== undefined) return asked
        const ceiling = Math.min(settings.maxDelayMs, settings.baseDelayMs * 2 ** (context.attempt - 1))
        return Math.round(random() * ceiling)
      }
      const policy = retry(
        handleWhen((error) => {
          if (!retryable(error)) return false
          // Waiting longer than we would back off anyway means giving up now, with the service's reason.
          const asked = error instanceof ServiceUnavailableError ? error.retryAfterMs : failureFacts(error).retryAfterMs
          return asked === undefined || asked <= settings.maxDelayMs
        }),
        { maxAttempts: maxRetries, backoff: new DelegateBackoff(delayFor) },
      )
      if (deps.onRetry) {
        const onRetry = deps.onRetry
        policy.onRetry(({ delay, attempt }) => onRetry({ operation: options.operation, attempt, delayMs: delay }))
      }

      return policy.execute(async ({ attempt }) => {
        const started = performance.now()
        const report = (outcome: AttemptOutcome, status: number | undefined) =>
          deps.onAttempt?.({
            operation: options.operation,
            attempt: attempt + 1,
            outcome,
            status,
            latencyMs: Math.round((performance.now() - started) * 100) / 100,
          })
        try {
          // A retry's wait is not interrupted by the caller giving up; its attempt must not start.
          if (callerSignal?.aborted) throw callerSignal.reason
          await draw(options.credential ?? 'server')
          const value = await breaker.execute(async () => {
            try {
              return await perAttempt.execute(
                // A stream's body outlives the attempt: its signal must keep following the caller's.
                ({ signal }) => fn(callerSignal && options.stream ? AbortSignal.any([signal, callerSignal]) : signal),
                callerSignal,
              )
            } catch (error) {
              if (!callerSignal?.aborted) throw error
              throw new CallerAbort(options.abortIsTimeout?.(callerSignal.reason) === true)
            }
          }, callerSignal)
          lastSuccessAt = new Date()
          window.record(false)
          report('success', undefined)
          return value
        } catch (raw) {
          // A caller's own deadline for the service (a first token that never came) counts against it.
          const callerTimeout = raw instanceof CallerAbort && raw.serviceTimedOut
          const aborted = callerSignal?.aborted === true && !callerTimeout
          let error = raw
          if (raw instanceof BrokenCircuitError) error = new ServiceUnavailableError(service, 'circuit-open')
          else if (callerTimeout) error = new ServiceUnavailableError(service, 'timeout')
          else if (raw instanceof TaskCancelledError && !aborted)
            error = new ServiceUnavailableError(service, 'timeout')
          const facts = failureFacts(raw)
          const outcome = outcomeOf(error, facts, aborted)
          const serviceSide = outcome === 'server_error' || outcome === 'timeout' || outcome === 'connection_error'
          if (serviceSide || outcome === 'rate_limited') lastFailureAt = new Date()
          if (outcome !== 'aborted' && outcome !== 'throttled' && outcome !== 'circuit_open') {
            window.record(serviceSide || outcome === 'rate_limited')
          }
          report(outcome, facts.status)
          // The caller learns of its own abort as it caused it.
          if (callerSignal?.aborted) throw callerSignal.reason
          throw error
        }
      }, callerSignal)
    },

    status() {
      const { calls, failures } = window.totals()
      return {
        state: stateName(breaker.state),
        lastSuccessAt,
        lastFailureAt,
        recentCalls: calls,
        recentErrorRate: calls === 0 ? 0 : Math.round((failures / calls) * 1000) / 1000,
      }
    },
  }
}
