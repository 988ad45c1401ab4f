import Anthropic from '@anthropic-ai/sdk'
import OpenAI from 'openai'
import type { Config } from '../../config.js'
import type { ServicePolicy } from '../../lib/resilience.js'
import { createEventStreamReader } from '../../lib/server-sent-events.js'
import { readText } from './streaming-fetch.js'

export type ProviderName = 'openai' | 'anthropic'

export interface ChatTurn {
  role: 'user' | 'assistant'
  content: string
}

export interface ProviderRequest {
  model: string
  /** Instructions and retrieved context; Anthropic caches it across turns of a conversation. */
  system: string
  messages: ChatTurn[]
  maxOutputTokens: number
  signal: AbortSignal
}

/**
 * What a provider's stream yields: text as it comes, token counts when the provider reports them,
 * and `end` when the provider says the answer is finished. A stream that stops without `end` was
 * cut (a proxy or the provider dropped the tail), even if it stopped cleanly.
 */
export type ProviderEvent =
  | { type: 'text'; text: string }
  | { type: 'usage'; inputTokens?: number | undefined; outputTokens?: number | undefined }
  | { type: 'end'; reason: string }

export interface ChatProvider {
  readonly name: ProviderName
  /**
   * Streams one answer into `onEvent`, synchronously as each piece arrives (a token costs no
   * promise of its own). Resolves when the provider's stream has ended, rejects when it failed.
   */
  stream(request: ProviderRequest, onEvent: (event: ProviderEvent) => void): Promise<void>
}

/** `claude-*` models are Anthropic's; every other name goes to OpenAI or the OpenAI-compatible server. */
export function providerOf(model: string): ProviderName {
  return /^claude/i.test(model) ? 'anthropic' : 'openai'
}

/**
 * `compatible`: an OpenAI-compatible server (Ollama, vLLM, LM Studio), which knows the classic
 * `max_tokens`; OpenAI's own newer models accept only `max_completion_tokens`.
 */
export function openAIProvider(client: OpenAI, options: ProviderOptions & { compatible: boolean }): ChatProvider {
  return {
    name: 'openai',
    async stream(request, onEvent) {
      // The SDK sends the request (authentication, typed errors) under the service's policy
      // (retries honouring Retry-After, breaker, bucket) until the answer starts; the body is
      // read here, without its per-chunk objects and promises.
      const response = await options.policy.call(streamCall(options, request.signal), (signal) =>
        client.chat.completions
          .create(
            {
              model: request.model,
              messages: [{ role: 'system', content: request.system }, ...request.messages],
              ...(options.compatible
                ? { max_tokens: request.maxOutputTokens }
                : { max_completion_tokens: request.maxOutputTokens }),
              stream: true,
              stream_options: { include_usage: true },
            },
            { signal },
          )
          .asResponse(),
      )
      let finish: string | null = null
      const events = createEventStreamReader(({ data }) => {
        if (data === '[DONE]') return
        const chunk = JSON.parse(data) as OpenAIChunk
        // An error reported inside the stream, after the 200 (as the SDK's own reader reports it).
        if (chunk.error) throw new OpenAI.APIError(undefined, chunk.error, undefined, response.headers)
        const choice = chunk.choices?.[0]
        const text = choice?.delta?.content
        if (text) onEvent({ type: 'text', text })
        if (choice?.finish_reason) finish = choice.finish_reason
        if (chunk.usage) {
          onEvent({
            type: 'usage',
            inputTokens: chunk.usage.prompt_tokens,
            outputTokens: chunk.usage.completion_tokens,
          })
        }
      })
      await readText(response, events.push)
      events.end()
      // The usage chunk follows the one that finishes, so the end is reported after the stream.
      if (finish) onEvent({ type: 'end', reason: finish })
    },
  }
}

export interface ProviderOptions {
  /** The service's resilience policy; the SDK's own retries are off, so every attempt goes through it. */
  policy: ServicePolicy
  /** Retries before the answer starts (falling back to the next model is the generation's job). */
  maxRetries: number
  /** Whose key the calls use: `server`, or the org that brought its own (its own bucket). */
  credential: string
}

/**
 * A model call may be repeated until its answer starts (nothing was produced, and providers bill
 * only what they produce); the policy's hold ends when the response starts streaming.
 */
function streamCall(options: ProviderOptions, signal: AbortSignal) {
  return {
    operation: 'chat.stream',
    idempotent: true,
    stream: true,
    signal,
    maxRetries: options.maxRetries,
    credential: options.credential,
    // No first token in time: the provider is failing, even though the generation pulled the plug.
    abortIsTimeout: (reason: unknown) => (reason as { name?: unknown } | null)?.name === 'TimeoutAbort',
  }
}

/** The parts of a `chat.completion.chunk` read here (or of an error event in its place). */
interface OpenAIChunk {
  choices?: { delta?: { content?: string | null }; finish_reason?: string | null }[]
  usage?: { prompt_tokens?: number; completion_tokens?: number } | null
  error?: Record<string, unknown>
}

export function anthropicProvider(client: Anthropic, options: ProviderOptions): ChatProvider {
  return {
    name: 'anthropic',
    async stream(request, onEvent) {
      const stream = await options.policy.call(streamCall(options, request.signal), (signal) =>
        client.messages.create(
          {
            model: request.model,
            max_tokens: request.maxOutputTokens,
            // Marked for prompt caching: the instructions and context repeat on every turn.
            system: [{ type: 'text', text: request.system, cache_control: { type: 'ephemeral' } }],
            messages: request.messages,
            stream: true,
          },
          { signal },
        ),
      )
      for await (const event of stream) {
        if (event.type === 'content_block_delta' && event.delta.type === 'text_delta') {
          onEvent({ type: 'text', text: event.delta.text })
        } else if (event.type === 'message_start') {
          const usage = event.message.usage
          const input =
            usage.input_tokens + (usage.cache_creation_input_tokens ?? 0) + (usage.cache_read_input_tokens ?? 0)
          onEvent({ type: 'usage', inputTokens: input })
        } else if (event.type === 'message_delta') {
          onEvent({ type: 'usage', outputTokens: event.usage.output_tokens })
        } else if (event.type === 'message_stop') {
          onEvent({ type: 'end', reason: 'stop' })
        }
      }
    },
  }
}

/** An API key and whose it is: `server` (configured) or the id of the org that brought it. */
export interface ProviderKey {
  apiKey: string
  owner: string
}

/** The server's own keys, as configured. */
export function serverKeys(config: Config): Partial<Record<ProviderName, ProviderKey>> {
  const keys: Partial<Record<ProviderName, ProviderKey>> = {}
  if (config.OPENAI_API_KEY) keys.openai = { apiKey: config.OPENAI_API_KEY, owner: 'server' }
  if (config.ANTHROPIC_API_KEY) keys.anthropic = { apiKey: config.ANTHROPIC_API_KEY, owner: 'server' }
  return keys
}

export interface ProviderDeps {
  /** The resilience policy of each service (the integrations plugin's). */
  policy(service: ProviderName): ServicePolicy
  /** What the OpenAI SDK sends its requests with (createStreamingFetch, which reads streams cheaply). */
  fetch?: typeof fetch | undefined
  /** The keys to call with (default: the server's). */
  keys?: Partial<Record<ProviderName, ProviderKey>> | undefined
}

/**
 * The providers this server can call, each built only when there is a key for it: a provider
 * without one is simply unavailable. The SDKs' own retries are off: the service's policy retries
 * (and sees every attempt); falling back to another model is the generation's job.
 */
export function createProviders(config: Config, deps: ProviderDeps): Map<ProviderName, ChatProvider> {
  const providers = new Map<ProviderName, ChatProvider>()
  const keys = deps.keys ?? serverKeys(config)
  // The SDK's own timeout is a backstop; first-token and idle timeouts are enforced by the caller.
  const timeout = config.CHAT_FIRST_TOKEN_TIMEOUT_MS + 10 * 60 * 1000
  const optionsFor = (service: ProviderName, key: ProviderKey): ProviderOptions => ({
    policy: deps.policy(service),
    maxRetries: config.CHAT_PROVIDER_MAX_RETRIES,
    credential: key.owner,
  })
  if (keys.openai) {
    providers.set(
      'openai',
      openAIProvider(
        new OpenAI({
          apiKey: keys.openai.apiKey,
          ...(config.OPENAI_BASE_URL ? { baseURL: config.OPENAI_BASE_URL } : {}),
          maxRetries: 0,
          timeout,
          ...(deps.fetch ? { fetch: deps.fetch } : {}),
        }),
        {
          ...optionsFor('openai', keys.openai),
          compatible: config.OPENAI_BASE_URL !== undefined && !config.OPENAI_BASE_URL.includes('api.openai.com'),
        },
      ),
    )
  }
  if (keys.anthropic) {
    providers.set(
      'anthropic',
      anthropicProvider(
        new Anthropic({
          apiKey: keys.anthropic.apiKey,
          ...(config.ANTHROPIC_BASE_URL ? { baseURL: config.ANTHROPIC_BASE_URL } : {}),
          maxRetries: 0,
          timeout,
        }),
        optionsFor('anthropic', keys.anthropic),
      ),
    )
  }
  return providers
}

/** Turns texts into vectors of `dimensions` numbers (cosine similarity compares them). */
export interface Embedder {
  readonly model: string
  embed(texts: string[]): Promise<number[][]>
}

/**
 * Embeddings through the OpenAI SDK (or the OpenAI-compatible server), when there is a key. The
 * service's policy retries rate limits and server errors, waiting as `Retry-After` asks.
 */
export function createEmbedder(
  config: Config,
  dimensions: number,
  deps: { policy: ServicePolicy; key?: ProviderKey | undefined },
): Embedder | null {
  const key = deps.key ?? serverKeys(config).openai
  if (!key) return null
  const client = new OpenAI({
    apiKey: key.apiKey,
    ...(config.OPENAI_BASE_URL ? { baseURL: config.OPENAI_BASE_URL } : {}),
    maxRetries: 0,
    timeout: 60_000,
  })
  const model = config.EMBEDDINGS_MODEL
  // Only the text-embedding-3 family can shorten its vectors on request.
  const askDimensions = /^text-embedding-3/.test(model)
  return {
    model,
    async embed(texts) {
      const response = await deps.policy.call(
        { operation: 'embeddings.create', idempotent: true, credential: key.owner },
        (signal) =>
          client.embeddings.create({ model, input: texts, ...(askDimensions ? { dimensions } : {}) }, { signal }),
      )
      const vectors = [...response.data].sort((a, b) => a.index - b.index).map((item) => item.embedding)
      for (const vector of vectors) {
        if (vector.length !== dimensions) {
          throw new Error(`${model} returned ${vector.length} dimensions; the index holds ${dimensions}`)
        }
      }
      return vectors
    },
  }
}
