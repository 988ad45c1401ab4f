import Anthropic from '@anthropic-ai/sdk'
import OpenAI from 'openai'
import type { Config } from '../../config.js'
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
export function openAIProvider(client: OpenAI, options: { compatible: boolean }): ChatProvider {
  return {
    name: 'openai',
    async stream(request, onEvent) {
      // The SDK sends the request (authentication, bounded retries honouring Retry-After, typed
      // errors); the body is read here, without its per-chunk objects and promises.
      const response = await client.chat.completions
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
          { signal: request.signal },
        )
        .asResponse()
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

/** The parts of a `chat.completion.chunk` read here (or of an error event in its place). */
interface OpenAIChunk {
  choices?: { delta?: { content?: string | null }; finish_reason?: string | null }[]
  usage?: { prompt_tokens?: number; completion_tokens?: number } | null
  error?: Record<string, unknown>
}

export function anthropicProvider(client: Anthropic): ChatProvider {
  return {
    name: 'anthropic',
    async stream(request, onEvent) {
      const stream = await client.messages.create(
        {
          model: request.model,
          max_tokens: request.maxOutputTokens,
          // Marked for prompt caching: the instructions and context repeat on every turn.
          system: [{ type: 'text', text: request.system, cache_control: { type: 'ephemeral' } }],
          messages: request.messages,
          stream: true,
        },
        { signal: request.signal },
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

/**
 * The providers this server can call, each built only when its key is configured: a provider
 * without a key is simply unavailable. The SDKs retry a little themselves (bounded); falling back
 * to another model is the generation's job. `fetch` is what the OpenAI SDK sends its requests
 * with (createStreamingFetch, which reads streamed answers cheaply).
 */
export function createProviders(
  config: Config,
  options: { fetch?: typeof fetch } = {},
): Map<ProviderName, ChatProvider> {
  const providers = new Map<ProviderName, ChatProvider>()
  const openaiKey = config.OPENAI_API_KEY
  const anthropicKey = config.ANTHROPIC_API_KEY
  // The SDK's own timeout is a backstop; first-token and idle timeouts are enforced by the caller.
  const timeout = config.CHAT_FIRST_TOKEN_TIMEOUT_MS + 10 * 60 * 1000
  if (openaiKey) {
    providers.set(
      'openai',
      openAIProvider(
        new OpenAI({
          apiKey: openaiKey,
          ...(config.OPENAI_BASE_URL ? { baseURL: config.OPENAI_BASE_URL } : {}),
          maxRetries: config.CHAT_PROVIDER_MAX_RETRIES,
          timeout,
          ...(options.fetch ? { fetch: options.fetch } : {}),
        }),
        { compatible: config.OPENAI_BASE_URL !== undefined && !config.OPENAI_BASE_URL.includes('api.openai.com') },
      ),
    )
  }
  if (anthropicKey) {
    providers.set(
      'anthropic',
      anthropicProvider(
        new Anthropic({
          apiKey: anthropicKey,
          ...(config.ANTHROPIC_BASE_URL ? { baseURL: config.ANTHROPIC_BASE_URL } : {}),
          maxRetries: config.CHAT_PROVIDER_MAX_RETRIES,
          timeout,
        }),
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
 * Embeddings through the OpenAI SDK (or the OpenAI-compatible server), when a key is configured.
 * The SDK retries rate limits and server errors itself, waiting as `Retry-After` asks.
 */
export function createEmbedder(config: Config, dimensions: number, apiKey = config.OPENAI_API_KEY): Embedder | null {
  if (!apiKey) return null
  const client = new OpenAI({
    apiKey,
    ...(config.OPENAI_BASE_URL ? { baseURL: config.OPENAI_BASE_URL } : {}),
    maxRetries: 4,
    timeout: 60_000,
  })
  const model = config.EMBEDDINGS_MODEL
  // Only the text-embedding-3 family can shorten its vectors on request.
  const askDimensions = /^text-embedding-3/.test(model)
  return {
    model,
    async embed(texts) {
      const response = await client.embeddings.create({
        model,
        input: texts,
        ...(askDimensions ? { dimensions } : {}),
      })
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
