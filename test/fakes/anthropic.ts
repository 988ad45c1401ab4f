import type { IncomingHttpHeaders } from 'node:http'
import {
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
 * A local stand-in for the Anthropic Messages API, speaking its wire format to the official
 * `@anthropic-ai/sdk`: `POST /v1/messages` streamed as `event: <name>\ndata: <json>` SSE
 * (message_start, content_block_start, ping, content_block_delta…, content_block_stop,
 * message_delta, message_stop), or one `message` JSON without `stream`. Errors use
 * `{type: 'error', error: {type, message}}` (429 rate_limit_error, 500 api_error, 529 overloaded_error).
 *
 * Prompt caching is simulated: the text up to the last block marked `cache_control` (system blocks,
 * then message content blocks) counts as `cache_creation_input_tokens` the first time this fake sees
 * that prefix for a model and as `cache_read_input_tokens` afterwards; `input_tokens` is the rest.
 * Unlike the real API there is no minimum cacheable length.
 */
export class FakeAnthropic extends FakeLlmServer {
  /** Cached prompt prefixes (model + text); clear it to make the next request write the cache again. */
  readonly promptCache = new Set<string>()
  protected readonly requestIdHeader = 'request-id'

  /** `http://127.0.0.1:PORT`, the SDK's `baseURL` (it appends `/v1/messages`). */
  get baseURL(): string {
    return this.origin
  }

  protected kindOf(method: string, path: string): RequestKind {
    if (method === 'GET' && path === '/v1/models') return 'models'
    return method === 'POST' && path === '/v1/messages' ? 'chat' : 'other'
  }

  protected modelsBody() {
    const model = {
      type: 'model',
      id: 'claude-haiku-4-5',
      display_name: 'Claude Haiku 4.5',
      created_at: '2025-10-01T00:00:00Z',
    }
    return { data: [model], has_more: false, first_id: model.id, last_id: model.id }
  }

  protected apiKeyOf(headers: IncomingHttpHeaders): string | undefined {
    const key = headers['x-api-key']
    if (typeof key === 'string') return key
    return /^Bearer (.+)$/i.exec(headers.authorization ?? '')?.[1]
  }

  protected errorBody(status: number, message?: string): AnthropicErrorBody {
    const known = ANTHROPIC_ERRORS[status]
    return {
      type: 'error',
      error: {
        type: known?.type ?? (status >= 500 ? 'api_error' : 'invalid_request_error'),
        message: message ?? known?.message ?? `Request failed with status ${status}.`,
      },
    }
  }

  protected async respond(ex: Exchange): Promise<void> {
    const body = ex.body
    const b = ex.behaviour
    for (const field of ['model', 'max_tokens', 'messages'] as const) {
      if (body[field] === undefined) return ex.json(400, this.errorBody(400, `${field}: Field required`))
    }
    if (typeof body.model !== 'string' || typeof body.max_tokens !== 'number' || !Array.isArray(body.messages)) {
      return ex.json(400, this.errorBody(400, 'model, max_tokens or messages: invalid type'))
    }
    if (body.messages.length === 0) {
      return ex.json(400, this.errorBody(400, 'messages: at least one message is required'))
    }

    const model = body.model
    const count = Math.min(b.tokens, body.max_tokens)
    const stopReason = b.tokens > body.max_tokens ? 'max_tokens' : 'end_turn'
    const prompt = this.promptUsage(model, body)
    const cacheCreation = b.usage.cacheCreation ?? prompt.cacheCreation
    const usage = (outputTokens: number) => ({
      input_tokens: b.usage.input ?? prompt.input,
      cache_creation_input_tokens: cacheCreation,
      cache_read_input_tokens: b.usage.cacheRead ?? prompt.cacheRead,
      cache_creation: { ephemeral_5m_input_tokens: cacheCreation, ephemeral_1h_input_tokens: 0 },
      output_tokens: outputTokens,
      service_tier: 'standard',
    })
    const message = (content: unknown[], stop: string | null, outputTokens: number) => ({
      id: randomId('msg_01', 12),
      type: 'message',
      role: 'assistant',
      model,
      content,
      stop_reason: stop,
      stop_sequence: null,
      usage: usage(outputTokens),
    })

    if (body.stream !== true) {
      if (!(await delayWholeAnswer(ex, count))) return
      const text = Array.from({ length: count }, (_, i) => b.text(i)).join('')
      ex.record.tokensSent = count
      return ex.json(200, message([{ type: 'text', text }], stopReason, b.usage.output ?? count))
    }

    await streamTokens(ex, count, {
      headers: {},
      preamble: [
        // The real API reports a token or so of output already in message_start.
        sse({ type: 'message_start', message: message([], null, 1) }, 'message_start'),
        sse(
          { type: 'content_block_start', index: 0, content_block: { type: 'text', text: '' } },
          'content_block_start',
        ),
        sse({ type: 'ping' }, 'ping'),
      ],
      token: (_i, text) =>
        sse({ type: 'content_block_delta', index: 0, delta: { type: 'text_delta', text } }, 'content_block_delta'),
      finale: (sent) => [
        sse({ type: 'content_block_stop', index: 0 }, 'content_block_stop'),
        sse(
          {
            type: 'message_delta',
            delta: { stop_reason: stopReason, stop_sequence: null },
            usage: { output_tokens: b.usage.output ?? sent },
          },
          'message_delta',
        ),
        sse({ type: 'message_stop' }, 'message_stop'),
      ],
      error: (status) => sse(this.errorBody(status), 'error'),
    })
  }

  /** Input tokens split into uncached, cache-written and cache-read parts (see the class comment). */
  private promptUsage(
    model: string,
    body: Record<string, unknown>,
  ): { input: number; cacheCreation: number; cacheRead: number } {
    const blocks: unknown[] = []
    const addBlocks = (content: unknown) => {
      if (Array.isArray(content)) blocks.push(...content)
      else if (content !== undefined) blocks.push(content)
    }
    addBlocks(body.system)
    for (const turn of Array.isArray(body.messages) ? body.messages : []) {
      addBlocks(turn && typeof turn === 'object' ? (turn as Record<string, unknown>).content : turn)
    }
    let all = ''
    let cachedPrefix: string | undefined
    for (const block of blocks) {
      all += `${textOf(block)}\n`
      if (block && typeof block === 'object' && (block as Record<string, unknown>).cache_control != null) {
        cachedPrefix = all
      }
    }
    const total = estimateTokens(all)
    if (cachedPrefix === undefined) return { input: total, cacheCreation: 0, cacheRead: 0 }
    const cached = estimateTokens(cachedPrefix)
    const key = `${model}\0${cachedPrefix}`
    const hit = this.promptCache.has(key)
    this.promptCache.add(key)
    return { input: total - cached, cacheCreation: hit ? 0 : cached, cacheRead: hit ? cached : 0 }
  }
}

export interface AnthropicErrorBody {
  type: 'error'
  error: { type: string; message: string }
}

const ANTHROPIC_ERRORS: Record<number, { type: string; message: string }> = {
  400: { type: 'invalid_request_error', message: 'Invalid request.' },
  401: { type: 'authentication_error', message: 'invalid x-api-key' },
  403: { type: 'permission_error', message: 'Your API key does not have permission to use the specified resource.' },
  404: { type: 'not_found_error', message: 'Not found.' },
  413: { type: 'request_too_large', message: 'Request exceeds the maximum allowed number of bytes.' },
  429: {
    type: 'rate_limit_error',
    message: "This request would exceed your organization's rate limit. Please try again later.",
  },
  500: { type: 'api_error', message: 'Internal server error' },
  504: { type: 'timeout_error', message: 'Request timed out.' },
  529: { type: 'overloaded_error', message: 'Overloaded' },
}

/** Starts a fake Anthropic on 127.0.0.1 (random port), closed when the test ends. */
export async function startFakeAnthropic(t: Teardown): Promise<FakeAnthropic> {
  const fake = await new FakeAnthropic().listen()
  t.teardown(() => fake.close())
  return fake
}
