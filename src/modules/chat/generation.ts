import Anthropic from '@anthropic-ai/sdk'
import type { FastifyBaseLogger } from 'fastify'
import OpenAI from 'openai'
import { errors as undiciErrors } from 'undici'
import { ServiceUnavailableError } from '../../lib/resilience.js'
import { type ChatProvider, type ChatTurn, type ProviderEvent, type ProviderName, providerOf } from './providers.js'

/** How an answer ended. */
export type GenerationStatus = 'complete' | 'stopped' | 'incomplete' | 'error'

export interface GenerationFailure {
  /** Safe to show a client: never an upstream body, key or stack. */
  message: string
  code: string
}

export interface GenerationResult {
  status: GenerationStatus
  text: string
  provider: ProviderName | null
  model: string | null
  inputTokens: number
  outputTokens: number
  /** The provider did not report usage (cut, stopped, failed): the counts are estimates. */
  estimated: boolean
  failure: GenerationFailure | null
}

export interface GenerationRequest {
  /** The requested model first, then the fallbacks, already limited to configured providers. */
  candidates: { provider: ChatProvider; model: string }[]
  system: string
  messages: ChatTurn[]
  maxOutputTokens: number
  firstTokenTimeoutMs: number
  idleTimeoutMs: number
  /** Aborted when the client goes away or asks to stop: the upstream request is aborted with it. */
  signal: AbortSignal
  onText(text: string): void
}

/** The provider's stream stopped without saying the answer was finished. */
class CutShort extends Error {
  constructor() {
    super('the stream ended before the answer was finished')
    this.name = 'CutShort'
  }
}

/**
 * Settles as `work` does, or rejects the moment `signal` aborts, whatever `work` is doing (an SDK
 * may be sleeping before a retry, deaf to the signal): the caller's deadlines hold regardless.
 */
function untilAborted<T>(work: Promise<T>, signal: AbortSignal): Promise<T> {
  return new Promise((resolve, reject) => {
    const onAbort = () => reject(signal.reason)
    if (signal.aborted) onAbort()
    else signal.addEventListener('abort', onAbort, { once: true })
    // Settling twice is harmless: whatever `work` does after the abort is ignored, failures included.
    work.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort))
  })
}

class TimeoutAbort extends Error {
  constructor(readonly phase: 'first-token' | 'idle') {
    super(phase === 'first-token' ? 'no first token in time' : 'the stream stalled')
    this.name = 'TimeoutAbort'
  }
}

/** Tokens of text the provider did not count for us: about four characters each. */
export const estimateTokens = (text: string) => Math.ceil(text.length / 4)

function statusOf(error: unknown): number | undefined {
  const status = (error as { status?: unknown } | null)?.status
  return typeof status === 'number' ? status : undefined
}

/** What may be tried on another provider: rate limits, overload, server errors, no connection, no first token. */
function worthFallingBack(error: unknown): boolean {
  // A stream that ended before its first token produced nothing: as good as a refused request.
  if (error instanceof TimeoutAbort || error instanceof CutShort) return true
  // Its circuit is open, its bucket empty, or it did not answer: another provider may.
  if (error instanceof ServiceUnavailableError) return true
  if (error instanceof OpenAI.APIConnectionError || error instanceof Anthropic.APIConnectionError) return true
  // A body cut off by the network: undici's socket errors (the streaming fetch), or a system error.
  if (error instanceof undiciErrors.UndiciError) return true
  const code = (error as { code?: unknown } | null)?.code
  if (typeof code === 'string' && /^(ECONNRESET|EPIPE|ECONNREFUSED|ETIMEDOUT)$/.test(code)) return true
  const status = statusOf(error)
  if (status === undefined) {
    // An error event inside a stream that began with 200 (Anthropic's overloaded_error, OpenAI's
    // server_error) has no status.
    const type = (error as { error?: { error?: { type?: unknown }; type?: unknown } } | null)?.error
    const kind = String(type?.error?.type ?? type?.type ?? '')
    if (/overloaded|api_error|server_error|rate_limit/.test(kind)) return true
    return error instanceof TypeError
  }
  return status === 408 || status === 409 || status === 429 || status >= 500
}

function failureOf(error: unknown, started: boolean): GenerationFailure {
  if (error instanceof TimeoutAbort) {
    return error.phase === 'first-token'
      ? { code: 'UPSTREAM_TIMEOUT', message: 'The model did not start answering in time.' }
      : { code: 'STREAM_INTERRUPTED', message: 'The model stopped sending the answer.' }
  }
  if (error instanceof ServiceUnavailableError && error.reason === 'timeout' && !started) {
    return { code: 'UPSTREAM_TIMEOUT', message: 'The model did not start answering in time.' }
  }
  if (started || error instanceof CutShort) {
    return { code: 'STREAM_INTERRUPTED', message: 'The answer was cut off by the model provider.' }
  }
  const status = statusOf(error)
  if (status === 429) return { code: 'UPSTREAM_RATE_LIMITED', message: 'The model provider is rate limiting requests.' }
  if (status !== undefined && status >= 500) {
    return { code: 'UPSTREAM_UNAVAILABLE', message: 'The model provider is unavailable.' }
  }
  if (status !== undefined) return { code: 'UPSTREAM_ERROR', message: 'The model provider refused the request.' }
  return { code: 'UPSTREAM_UNAVAILABLE', message: 'The model provider could not be reached.' }
}

/**
 * Streams one answer. A candidate that fails before its first token (429, 5xx, no connection, no
 * first token in time) hands over to the next; after the first token there is no going back, and
 * a failure ends the answer as `incomplete`. Never throws: every way it ends is a result, with
 * token counts for metering.
 */
export async function generate(request: GenerationRequest, log: FastifyBaseLogger): Promise<GenerationResult> {
  const promptChars = request.system.length + request.messages.reduce((sum, turn) => sum + turn.content.length, 0)
  let last: GenerationResult | null = null
  for (const [index, candidate] of request.candidates.entries()) {
    const upstream = new AbortController()
    const stopUpstream = () => upstream.abort(request.signal.reason)
    request.signal.addEventListener('abort', stopUpstream, { once: true })
    let timer: NodeJS.Timeout | undefined
    let text = ''
    let inputTokens: number | undefined
    let outputTokens: number | undefined
    let started = false
    const result = (status: GenerationStatus, failure: GenerationFailure | null): GenerationResult => ({
      status,
      text,
      provider: candidate.provider.name,
      model: candidate.model,
      inputTokens: inputTokens ?? Math.ceil(promptChars / 4),
      outputTokens: outputTokens ?? estimateTokens(text),
      estimated: inputTokens === undefined || outputTokens === undefined,
      failure,
    })
    try {
      if (request.signal.aborted) return { ...result('stopped', null), inputTokens: 0, outputTokens: 0 }
      timer = setTimeout(() => upstream.abort(new TimeoutAbort('first-token')), request.firstTokenTimeoutMs)
      let finished = false
      const onEvent = (event: ProviderEvent) => {
        // A provider may still deliver after it was given up on (an abort lands at its next read).
        if (upstream.signal.aborted) return
        if (event.type === 'end') {
          finished = true
          return
        }
        if (event.type === 'usage') {
          inputTokens = event.inputTokens ?? inputTokens
          outputTokens = event.outputTokens ?? outputTokens
          return
        }
        if (started) {
          // Rearmed in place: a new timer per token would be garbage at every token.
          timer?.refresh()
        } else {
          started = true
          clearTimeout(timer)
          timer = setTimeout(() => upstream.abort(new TimeoutAbort('idle')), request.idleTimeoutMs)
        }
        // PostgreSQL text cannot hold NUL: one in a model's output would make the answer unstorable.
        const piece = event.text.includes('\u0000') ? event.text.replaceAll('\u0000', '\uFFFD') : event.text
        text += piece
        request.onText(piece)
      }
      const streamed = candidate.provider.stream(
        {
          model: candidate.model,
          system: request.system,
          messages: request.messages,
          maxOutputTokens: request.maxOutputTokens,
          signal: upstream.signal,
        },
        onEvent,
      )
      await untilAborted(streamed, upstream.signal)
      if (!finished) throw new CutShort()
      return result('complete', null)
    } catch (raw) {
      // An abort surfaces as the SDK's own error; the reason says why it was aborted.
      const error = upstream.signal.aborted ? upstream.signal.reason : raw
      if (request.signal.aborted) return result('stopped', null)
      const failure = failureOf(error, started)
      log.warn(
        {
          provider: candidate.provider.name,
          model: candidate.model,
          code: failure.code,
          status: statusOf(error),
          started,
        },
        'model provider failed',
      )
      if (started) return result('incomplete', failure)
      // Nothing was produced: only what the provider reports having read is counted.
      last = { ...result('error', failure), inputTokens: inputTokens ?? 0, outputTokens: 0 }
      if (!worthFallingBack(error) || index === request.candidates.length - 1) return last
    } finally {
      clearTimeout(timer)
      request.signal.removeEventListener('abort', stopUpstream)
    }
  }
  return (
    last ?? {
      status: 'error',
      text: '',
      provider: null,
      model: null,
      inputTokens: 0,
      outputTokens: 0,
      estimated: false,
      failure: { code: 'NOT_CONFIGURED', message: 'No model provider is configured.' },
    }
  )
}

/** The models to try for a request, in order, limited to providers that are configured. */
export function candidatesFor(
  requested: string,
  fallbacks: string[],
  providers: ReadonlyMap<ProviderName, ChatProvider>,
): { provider: ChatProvider; model: string }[] {
  const candidates: { provider: ChatProvider; model: string }[] = []
  for (const model of [requested, ...fallbacks]) {
    const provider = providers.get(providerOf(model))
    if (provider && !candidates.some((candidate) => candidate.model === model)) candidates.push({ provider, model })
  }
  return candidates
}
