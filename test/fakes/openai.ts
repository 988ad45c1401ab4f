import type { IncomingHttpHeaders } from 'node:http'
import {
  BehaviourQueue,
  delayWholeAnswer,
  estimateTokens,
  type Exchange,
  FakeLlmServer,
  randomId,
  type RequestKind,
  sse,
  streamTokens,
  type Teardown,
  textOf,
} from './control.js'

/**
 * A local stand-in for the OpenAI API, speaking its wire format to the official `openai` SDK:
 * `POST /v1/chat/completions` (streamed as `data: <ChatCompletionChunk>` SSE lines ending in
 * `data: [DONE]`, with the usage chunk when `stream_options.include_usage`; or one
 * `chat.completion` JSON) and `POST /v1/embeddings` (deterministic bag-of-words vectors, as floats
 * or as the base64 float32 the SDK asks for by default). Errors use `{error: {message, type, param, code}}`.
 */
export class FakeOpenAI extends FakeLlmServer {
  /** Behaviours of `/v1/embeddings` requests (chat requests use `next`/`default`). */
  readonly embeddingsControl = new BehaviourQueue()
  /** Vector length unless the request asks for `dimensions`. */
  embeddingDimensions: number
  protected readonly requestIdHeader = 'x-request-id'

  constructor(options: FakeOpenAIOptions = {}) {
    super()
    this.embeddingDimensions = options.embeddingDimensions ?? 1536
  }

  /** `http://127.0.0.1:PORT/v1`, the SDK's `baseURL`. */
  get baseURL(): string {
    return `${this.origin}/v1`
  }

  protected override queueFor(kind: RequestKind): BehaviourQueue | undefined {
    return kind === 'embeddings' ? this.embeddingsControl : super.queueFor(kind)
  }

  protected kindOf(method: string, path: string): RequestKind {
    if (method === 'GET' && path === '/v1/models') return 'models'
    if (method !== 'POST') return 'other'
    if (path === '/v1/chat/completions') return 'chat'
    if (path === '/v1/embeddings') return 'embeddings'
    return 'other'
  }

  protected modelsBody() {
    const created = Math.floor(Date.now() / 1000)
    return {
      object: 'list',
      data: ['gpt-4o-mini', 'text-embedding-3-small'].map((id) => ({
        id,
        object: 'model',
        created,
        owned_by: 'system',
      })),
    }
  }

  protected apiKeyOf(headers: IncomingHttpHeaders): string | undefined {
    return /^Bearer (.+)$/i.exec(headers.authorization ?? '')?.[1]
  }

  protected errorBody(status: number, message?: string, param?: string, code?: string): OpenAIErrorBody {
    const known = OPENAI_ERRORS[status]
    return {
      error: {
        message: message ?? known?.message ?? `Request failed with status ${status}.`,
        type: known?.type ?? (status >= 500 ? 'server_error' : 'invalid_request_error'),
        param: param ?? null,
        code: code ?? known?.code ?? null,
      },
    }
  }

  protected async respond(ex: Exchange): Promise<void> {
    if (ex.record.kind === 'embeddings') return this.embeddings(ex)
    return this.chat(ex)
  }

  private invalid(ex: Exchange, message: string, param: string | undefined, code?: string): void {
    ex.json(400, this.errorBody(400, message, param, code))
  }

  private async chat(ex: Exchange): Promise<void> {
    const body = ex.body
    const b = ex.behaviour
    if (typeof body.model !== 'string') return this.invalid(ex, 'you must provide a model parameter', undefined)
    if (!Array.isArray(body.messages)) {
      return this.invalid(ex, "Missing required parameter: 'messages'.", 'messages', 'missing_required_parameter')
    }
    if (body.messages.length === 0) {
      return this.invalid(
        ex,
        "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.",
        'messages',
        'empty_array',
      )
    }
    const stream = body.stream === true
    if (body.stream_options != null && !stream) {
      return this.invalid(
        ex,
        "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
        'stream_options',
        'invalid_value',
      )
    }

    const model = body.model
    const limit = numberOr(body.max_completion_tokens, numberOr(body.max_tokens, Infinity))
    const count = Math.min(b.tokens, limit)
    const finishReason = b.tokens > limit ? 'length' : 'stop'
    const promptTokens = b.usage.input ?? estimateTokens(textOf(body.messages))
    const usage = (sent: number): OpenAIUsage => {
      const completion = b.usage.output ?? sent
      return {
        prompt_tokens: promptTokens,
        completion_tokens: completion,
        total_tokens: promptTokens + completion,
        prompt_tokens_details: { cached_tokens: b.usage.cacheRead ?? 0, audio_tokens: 0 },
        completion_tokens_details: {
          reasoning_tokens: 0,
          audio_tokens: 0,
          accepted_prediction_tokens: 0,
          rejected_prediction_tokens: 0,
        },
      }
    }
    const common = {
      id: randomId('chatcmpl-', 14),
      created: Math.floor(Date.now() / 1000),
      model,
      service_tier: 'default',
      system_fingerprint: 'fp_fake',
    }

    if (!stream) {
      if (!(await delayWholeAnswer(ex, count))) return
      const text = Array.from({ length: count }, (_, i) => b.text(i)).join('')
      ex.record.tokensSent = count
      return ex.json(200, {
        ...common,
        object: 'chat.completion',
        choices: [
          {
            index: 0,
            message: { role: 'assistant', content: text, refusal: null, annotations: [] },
            logprobs: null,
            finish_reason: finishReason,
          },
        ],
        usage: usage(count),
      })
    }

    const includeUsage = isRecord(body.stream_options) && body.stream_options.include_usage === true
    // With include_usage every chunk carries `usage: null`, and one last chunk has `choices: []` and the usage.
    const chunk = (delta: Record<string, unknown>, finish: string | null) => ({
      ...common,
      object: 'chat.completion.chunk',
      choices: [{ index: 0, delta, logprobs: null, finish_reason: finish }],
      ...(includeUsage ? { usage: null } : {}),
    })
    await streamTokens(ex, count, {
      headers: { 'openai-version': '2020-10-01', 'openai-processing-ms': '1' },
      preamble: [sse(chunk({ role: 'assistant', content: '', refusal: null }, null))],
      token: (_i, text) => sse(chunk({ content: text }, null)),
      finale: (sent) => [
        sse(chunk({}, finishReason)),
        ...(includeUsage ? [sse({ ...common, object: 'chat.completion.chunk', choices: [], usage: usage(sent) })] : []),
        sse('[DONE]'),
      ],
      // What the API sends when it fails after the 200: an error object in place of a chunk.
      error: (status) => sse(this.errorBody(status)),
    })
  }

  private async embeddings(ex: Exchange): Promise<void> {
    const body = ex.body
    if (typeof body.model !== 'string') return this.invalid(ex, 'you must provide a model parameter', undefined)
    const texts = embeddingInputs(body.input)
    if (!texts || texts.length === 0 || texts.length > 2048 || texts.some((text) => text.length === 0)) {
      return this.invalid(
        ex,
        "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference.",
        'input',
      )
    }
    const dimensions = numberOr(body.dimensions, this.embeddingDimensions)
    if (!Number.isInteger(dimensions) || dimensions < 1) {
      return this.invalid(ex, `Invalid 'dimensions': ${String(body.dimensions)}.`, 'dimensions')
    }
    if (!(await delayWholeAnswer(ex, 1))) return
    const base64 = body.encoding_format === 'base64'
    const promptTokens = ex.behaviour.usage.input ?? texts.reduce((sum, text) => sum + estimateTokens(text), 0)
    ex.json(200, {
      object: 'list',
      data: texts.map((text, index) => {
        const vector = fakeEmbedding(text, dimensions)
        return {
          object: 'embedding',
          index,
          embedding: base64 ? Buffer.from(new Float32Array(vector).buffer).toString('base64') : vector,
        }
      }),
      model: body.model,
      usage: { prompt_tokens: promptTokens, total_tokens: promptTokens },
    })
  }
}

export interface FakeOpenAIOptions {
  /** Default 1536 (text-embedding-3-small); a request's `dimensions` wins. */
  embeddingDimensions?: number
}

export interface OpenAIErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null }
}

interface OpenAIUsage {
  prompt_tokens: number
  completion_tokens: number
  total_tokens: number
  prompt_tokens_details: { cached_tokens: number; audio_tokens: number }
  completion_tokens_details: Record<string, number>
}

const OPENAI_ERRORS: Record<number, { type: string; code: string | null; message: string }> = {
  400: { type: 'invalid_request_error', code: null, message: 'Invalid request.' },
  401: {
    type: 'invalid_request_error',
    code: 'invalid_api_key',
    message: 'Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys.',
  },
  403: { type: 'invalid_request_error', code: 'unsupported_country_region_territory', message: 'Forbidden.' },
  404: { type: 'invalid_request_error', code: 'unknown_url', message: 'Not found.' },
  429: {
    type: 'requests',
    code: 'rate_limit_exceeded',
    message: 'Rate limit reached for requests. Please try again later.',
  },
  500: {
    type: 'server_error',
    code: null,
    message: 'The server had an error while processing your request. Sorry about that!',
  },
  503: { type: 'server_error', code: null, message: 'The engine is currently overloaded, please try again later.' },
}

/** Starts a fake OpenAI on 127.0.0.1 (random port), closed when the test ends. */
export async function startFakeOpenAI(t: Teardown, options: FakeOpenAIOptions = {}): Promise<FakeOpenAI> {
  const fake = await new FakeOpenAI(options).listen()
  t.teardown(() => fake.close())
  return fake
}

/**
 * A deterministic embedding: each word (lower-cased letters/digits) is hashed to a dimension and a
 * sign, counts are summed and the vector L2-normalised, so texts sharing words have a higher cosine
 * similarity. Values are float32 (as the API returns). A text without words hashes as a whole.
 */
export function fakeEmbedding(text: string, dimensions = 1536): number[] {
  const vector = new Float64Array(dimensions)
  for (const word of text.toLowerCase().match(/[\p{L}\p{N}]+/gu) ?? []) {
    const slot = fnv1a(word) % dimensions
    vector[slot] = (vector[slot] ?? 0) + (fnv1a(word, 0x9e3779b9) & 1 ? 1 : -1)
  }
  let norm = Math.sqrt(vector.reduce((sum, x) => sum + x * x, 0))
  if (norm === 0) {
    vector[fnv1a(text) % dimensions] = 1
    norm = 1
  }
  return Array.from(vector, (x) => Math.fround(x / norm))
}

/** Cosine similarity of two vectors of the same length. */
export function cosineSimilarity(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let dot = 0
  let na = 0
  let nb = 0
  for (let i = 0; i < a.length; i++) {
    const x = a[i] ?? 0
    const y = b[i] ?? 0
    dot += x * y
    na += x * x
    nb += y * y
  }
  return na === 0 || nb === 0 ? 0 : dot / Math.sqrt(na * nb)
}

function fnv1a(text: string, seed = 0x811c9dc5): number {
  let hash = seed
  for (let i = 0; i < text.length; i++) {
    hash ^= text.charCodeAt(i)
    hash = Math.imul(hash, 0x01000193)
  }
  return hash >>> 0
}

/** `input` as texts: a string, strings, a token array, or token arrays (tokens joined by spaces). */
function embeddingInputs(input: unknown): string[] | undefined {
  const isTokens = (value: unknown): value is number[] =>
    Array.isArray(value) && value.length > 0 && value.every((x) => typeof x === 'number')
  if (typeof input === 'string') return [input]
  if (!Array.isArray(input)) return undefined
  if (input.every((x) => typeof x === 'string')) return input
  if (isTokens(input)) return [input.join(' ')]
  if (input.every(isTokens)) return input.map((tokens) => tokens.join(' '))
  return undefined
}

function numberOr(value: unknown, fallback: number): number {
  return typeof value === 'number' ? value : fallback
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return value != null && typeof value === 'object' && !Array.isArray(value)
}
