import Anthropic from '@anthropic-ai/sdk'
import OpenAI from 'openai'
import t from 'tap'
import { startFakeAnthropic } from './anthropic.js'
import { cosineSimilarity, fakeEmbedding, startFakeOpenAI } from './openai.js'

/**
 * Drives the fake providers through the official SDKs, so the fakes stay true to what the SDKs
 * parse, and pins down how the SDKs react to failures (documented in each test).
 */

const USER = [{ role: 'user' as const, content: 'Hello there' }]

function openai(baseURL: string, options: { maxRetries?: number; timeout?: number } = {}) {
  return new OpenAI({ apiKey: 'sk-openai-test', baseURL, maxRetries: 0, ...options })
}

function anthropic(baseURL: string) {
  return new Anthropic({ apiKey: 'sk-ant-test', baseURL, maxRetries: 0 })
}

function chatStream(client: OpenAI, options: { signal?: AbortSignal } = {}) {
  return client.chat.completions.create(
    { model: 'gpt-test', messages: USER, stream: true, stream_options: { include_usage: true } },
    options,
  )
}

function messageStream(client: Anthropic, options: { signal?: AbortSignal } = {}) {
  return client.messages.create(
    {
      model: 'claude-test',
      max_tokens: 256,
      system: [{ type: 'text', text: 'You are a test. Context: alpha beta.', cache_control: { type: 'ephemeral' } }],
      messages: USER,
      stream: true,
    },
    options,
  )
}

/** Iterates to the end and reports what arrived and how it ended. */
async function drain<T>(stream: AsyncIterable<T>): Promise<{ items: T[]; error?: unknown }> {
  const items: T[] = []
  try {
    for await (const item of stream) items.push(item)
    return { items }
  } catch (error) {
    return { items, error }
  }
}

t.test('openai: streamed tokens, then the usage chunk and [DONE]', async (t) => {
  const fake = await startFakeOpenAI(t)
  fake.default = { tokens: 3 }
  const { items, error } = await drain(await chatStream(openai(fake.baseURL)))
  t.equal(error, undefined)

  // First chunk: the role with empty content (as the real API); then one chunk per token.
  t.same(items[0]?.choices[0]?.delta, { role: 'assistant', content: '', refusal: null })
  t.equal(items.map((c) => c.choices[0]?.delta.content ?? '').join(''), 'tok0 tok1 tok2 ')
  t.equal(items.at(-2)?.choices[0]?.finish_reason, 'stop')
  const last = items.at(-1)
  t.same(last?.choices, [], 'the usage chunk has no choices')
  t.match(last?.usage, { completion_tokens: 3, prompt_tokens: Number, total_tokens: Number })
  t.ok(
    items.slice(0, -1).every((c) => c.usage === null),
    'other chunks carry usage: null',
  )

  const [request] = fake.requests
  t.equal(request?.apiKey, 'sk-openai-test')
  t.equal(request?.headers.authorization, 'Bearer sk-openai-test')
  t.match(request?.body, { model: 'gpt-test', stream: true, stream_options: { include_usage: true }, messages: USER })
  t.match(request, { kind: 'chat', status: 200, tokensSent: 3, completed: true, cut: false })
  t.equal(request?.closedAt, undefined)
})

t.test('openai: a non-streaming request gets one chat.completion', async (t) => {
  const fake = await startFakeOpenAI(t)
  const completion = await openai(fake.baseURL).chat.completions.create({
    model: 'gpt-test',
    messages: USER,
    max_completion_tokens: 2,
  })
  t.equal(completion.choices[0]?.message.content, 'tok0 tok1 ')
  t.equal(completion.choices[0]?.finish_reason, 'length', 'max tokens below the behaviour: cut short')
  t.equal(completion.usage?.completion_tokens, 2)
})

t.test('openai: a 429 with retry-after is a RateLimitError when maxRetries is 0', async (t) => {
  const fake = await startFakeOpenAI(t)
  fake.next({ failBeforeFirstToken: { status: 429, retryAfterSeconds: 7 } })
  const error = await chatStream(openai(fake.baseURL)).catch((e: unknown) => e)
  t.type(error, OpenAI.RateLimitError)
  const rateLimit = error as InstanceType<typeof OpenAI.RateLimitError>
  t.equal(rateLimit.status, 429)
  t.equal(rateLimit.headers.get('retry-after'), '7')
  t.equal(rateLimit.code, 'rate_limit_exceeded')
  t.equal(fake.requests.length, 1, 'no retry')

  // The queue held one behaviour: the next request streams normally.
  const { error: second } = await drain(await chatStream(openai(fake.baseURL)))
  t.equal(second, undefined)
})

t.test('openai: with maxRetries the SDK retries a 500 after retry-after-ms', async (t) => {
  const fake = await startFakeOpenAI(t)
  fake.next({ failBeforeFirstToken: { status: 500, retryAfterMs: 20 } })
  const { items, error } = await drain(await chatStream(openai(fake.baseURL, { maxRetries: 1 })))
  t.equal(error, undefined)
  t.ok(items.length > 0)
  t.equal(fake.requests.length, 2)
  t.equal(fake.requests[0]?.status, 500)
  t.equal(fake.requests[1]?.headers['x-stainless-retry-count'], '1')
  t.ok((fake.requests[1]?.receivedAt ?? 0) - (fake.requests[0]?.receivedAt ?? 0) >= 15, 'waited retry-after-ms')
})

t.test('openai: a cut stream', async (t) => {
  const fake = await startFakeOpenAI(t)
  const client = openai(fake.baseURL)

  // Socket destroyed mid-body: iteration throws undici's `TypeError: terminated` (cause: SocketError
  // "other side closed"), not an OpenAI error class, after yielding what arrived.
  fake.next({ tokens: 5, cutAfterTokens: 2 })
  const destroyed = await drain(await chatStream(client))
  t.type(destroyed.error, TypeError)
  t.equal((destroyed.error as Error).message, 'terminated')
  t.equal(destroyed.items.map((c) => c.choices[0]?.delta.content ?? '').join(''), 'tok0 tok1 ')
  t.match(fake.requests[0], { cut: true, completed: false, tokensSent: 2 })
  t.equal(fake.requests[0]?.closedAt, undefined, 'the fake, not the client, closed it')

  // Response ended cleanly but early: iteration just ends, without finish_reason, usage or [DONE].
  fake.next({ tokens: 5, cutAfterTokens: 2, cutMode: 'end' })
  const ended = await drain(await chatStream(client))
  t.equal(ended.error, undefined)
  t.equal(ended.items.length, 3)
  t.ok(ended.items.every((c) => c.choices[0]?.finish_reason === null && c.usage === null))
})

t.test('openai: aborting the request is recorded as closedAt', async (t) => {
  const fake = await startFakeOpenAI(t)
  fake.next({ tokens: 100, tokenDelayMs: 20 })
  const controller = new AbortController()
  const stream = await chatStream(openai(fake.baseURL), { signal: controller.signal })
  const texts: string[] = []
  // After an abort the SDK's iteration ends quietly (it swallows its own AbortError).
  for await (const chunk of stream) {
    const text = chunk.choices[0]?.delta.content
    if (text) texts.push(text)
    if (texts.length === 2) controller.abort()
  }
  t.equal(texts.length, 2)
  const request = await fake.waitForClose(0)
  t.ok(request.closedAt !== undefined && request.closedAt >= request.receivedAt)
  t.ok(request.tokensSent < 100)
  t.match(request, { completed: false, cut: false })

  // Leaving the loop early (`break`) aborts the request too.
  fake.next({ tokens: 100, tokenDelayMs: 20 })
  for await (const chunk of await chatStream(openai(fake.baseURL))) if (chunk.choices[0]?.delta.content) break
  t.ok((await fake.waitForClose(1)).closedAt)
})

t.test('openai: hanging requests and the SDK timeout', async (t) => {
  const fake = await startFakeOpenAI(t)
  const client = openai(fake.baseURL, { timeout: 150 })

  // No headers: the SDK's timeout fires (APIConnectionTimeoutError) and it disconnects.
  fake.next({ hang: true })
  const error = await chatStream(client).catch((e: unknown) => e)
  t.type(error, OpenAI.APIConnectionTimeoutError)
  t.ok((await fake.waitForClose(0)).closedAt)

  // Headers but no events: the SDK's timeout covers only the wait for headers, so iteration
  // would wait forever; only the caller's own timer (here an abort) ends it.
  fake.next({ hang: 'headers' })
  const controller = new AbortController()
  const stream = await chatStream(client, { signal: controller.signal })
  const started = Date.now()
  setTimeout(() => controller.abort(), 400)
  const { items, error: iterationError } = await drain(stream)
  t.equal(iterationError, undefined)
  t.equal(items.length, 0)
  t.ok(Date.now() - started >= 350, 'still waiting well past the 150ms timeout')
  t.match(await fake.waitForClose(1), { status: 200, tokensSent: 0 })
})

t.test('openai: firstTokenDelayMs delays the first token, not the headers', async (t) => {
  const fake = await startFakeOpenAI(t)
  fake.next({ tokens: 2, firstTokenDelayMs: 400 })
  const started = Date.now()
  const stream = await chatStream(openai(fake.baseURL))
  t.ok(Date.now() - started < 300, 'headers came before the delay')
  for await (const chunk of stream) {
    if (chunk.choices[0]?.delta.content) {
      t.ok(Date.now() - started >= 395, 'first token after the delay')
      break
    }
  }
})

t.test('openai: embeddings are deterministic and similar texts score higher', async (t) => {
  const fake = await startFakeOpenAI(t)
  const client = openai(fake.baseURL)
  const texts = [
    'How do I reset my password?',
    'How can I reset a forgotten password',
    'Quarterly revenue grew in the European market',
  ]
  // The SDK asks for base64 float32 unless told otherwise, and decodes it.
  const result = await client.embeddings.create({ model: 'text-embedding-3-small', input: texts })
  t.equal(fake.requests[0]?.body.encoding_format, 'base64')
  t.equal(result.object, 'list')
  t.same(
    result.data.map((d) => d.index),
    [0, 1, 2],
  )
  t.match(result.usage, { prompt_tokens: Number, total_tokens: Number })
  const [query, similar, unrelated] = result.data.map((d) => d.embedding)
  if (!query || !similar || !unrelated) throw new Error('missing embeddings')
  t.equal(query.length, 1536)
  t.same(query, fakeEmbedding(texts[0] ?? ''), 'the exported function computes the same vector')
  t.ok(Math.abs(cosineSimilarity(query, query) - 1) < 1e-6, 'normalised')
  t.ok(cosineSimilarity(query, similar) > cosineSimilarity(query, unrelated) + 0.3)

  // The same text gives the same vector, as floats too; `dimensions` is honoured.
  const again = await client.embeddings.create({
    model: 'text-embedding-3-small',
    input: texts[0] ?? '',
    encoding_format: 'float',
  })
  t.same(again.data[0]?.embedding, query)
  const small = await client.embeddings.create({ model: 'text-embedding-3-small', input: 'abc', dimensions: 64 })
  t.equal(small.data[0]?.embedding.length, 64)

  // Embedding behaviours are separate from chat behaviours.
  fake.embeddingsControl.next({ failBeforeFirstToken: { status: 503 } })
  const error = await client.embeddings.create({ model: 'm', input: 'x' }).catch((e: unknown) => e)
  t.type(error, OpenAI.InternalServerError)
  t.equal((error as InstanceType<typeof OpenAI.APIError>).status, 503)
  t.equal(fake.control.pending, 0)
})

t.test('anthropic: streamed events, usage with prompt caching, and the recorded request', async (t) => {
  const fake = await startFakeAnthropic(t)
  fake.default = { tokens: 3, usage: { output: 42 } }
  const client = anthropic(fake.baseURL)
  const { items, error } = await drain(await messageStream(client))
  t.equal(error, undefined)
  t.same(
    items.map((e) => e.type),
    [
      'message_start',
      'content_block_start',
      'content_block_delta',
      'content_block_delta',
      'content_block_delta',
      'content_block_stop',
      'message_delta',
      'message_stop',
    ],
    'the SDK drops ping',
  )
  const text = items.map((e) => (e.type === 'content_block_delta' && e.delta.type === 'text_delta' ? e.delta.text : ''))
  t.equal(text.join(''), 'tok0 tok1 tok2 ')
  const start = items[0]
  if (start?.type !== 'message_start') throw new Error('expected message_start')
  t.match(start.message, { type: 'message', role: 'assistant', model: 'claude-test', content: [], stop_reason: null })
  t.ok((start.message.usage.cache_creation_input_tokens ?? 0) > 0, 'first request writes the cache')
  t.equal(start.message.usage.cache_read_input_tokens, 0)
  const delta = items.at(-2)
  if (delta?.type !== 'message_delta') throw new Error('expected message_delta')
  t.same(delta.delta, { stop_reason: 'end_turn', stop_sequence: null })
  t.equal(delta.usage.output_tokens, 42)

  const [request] = fake.requests
  t.equal(request?.apiKey, 'sk-ant-test')
  // SDK 1.12 sends `apiKey` as `Authorization: Bearer`, not `x-api-key` (the fake accepts both).
  t.equal(request?.headers.authorization, 'Bearer sk-ant-test')
  t.equal(request?.headers['x-api-key'], undefined)
  t.ok(request?.headers['anthropic-version'])
  t.same(request?.body.system, [
    { type: 'text', text: 'You are a test. Context: alpha beta.', cache_control: { type: 'ephemeral' } },
  ])
  t.match(request, { status: 200, tokensSent: 3, completed: true })

  // Same system prompt again: read from the cache.
  const second = await drain(await messageStream(client))
  const secondStart = second.items[0]
  if (secondStart?.type !== 'message_start') throw new Error('expected message_start')
  t.equal(secondStart.message.usage.cache_creation_input_tokens, 0)
  t.equal(secondStart.message.usage.cache_read_input_tokens, start.message.usage.cache_creation_input_tokens)

  // The SDK's MessageStream helper accumulates the fake's events into a full message.
  const final = await client.messages.stream({ model: 'claude-test', max_tokens: 2, messages: USER }).finalMessage()
  t.same(final.content, [{ type: 'text', text: 'tok0 tok1 ' }])
  t.equal(final.stop_reason, 'max_tokens')
})

t.test('anthropic: 429 and 529 errors', async (t) => {
  const fake = await startFakeAnthropic(t)
  const client = anthropic(fake.baseURL)

  fake.next({ failBeforeFirstToken: { status: 429, retryAfterSeconds: 3 } })
  const rateLimited = await messageStream(client).catch((e: unknown) => e)
  t.type(rateLimited, Anthropic.RateLimitError)
  const rateLimit = rateLimited as InstanceType<typeof Anthropic.RateLimitError>
  t.equal(rateLimit.status, 429)
  t.equal(rateLimit.headers.get('retry-after'), '3')
  t.match(rateLimit.error, { type: 'error', error: { type: 'rate_limit_error' } })

  fake.next({ failBeforeFirstToken: { status: 529 } })
  const overloaded = await messageStream(client).catch((e: unknown) => e)
  t.type(overloaded, Anthropic.OverloadedError)
  t.type(overloaded, Anthropic.InternalServerError)
  t.equal((overloaded as InstanceType<typeof Anthropic.APIError>).status, 529)
  t.match((overloaded as InstanceType<typeof Anthropic.APIError>).error, { error: { type: 'overloaded_error' } })
  t.equal(fake.requests.length, 2, 'no retries')
})

t.test('anthropic: a cut stream', async (t) => {
  const fake = await startFakeAnthropic(t)
  const client = anthropic(fake.baseURL)

  // Socket destroyed: the raw stream throws undici's `TypeError: terminated`, as with OpenAI.
  fake.next({ tokens: 5, cutAfterTokens: 2 })
  const destroyed = await drain(await messageStream(client))
  t.type(destroyed.error, TypeError)
  t.equal((destroyed.error as Error).message, 'terminated')
  t.same(
    destroyed.items.map((e) => e.type),
    ['message_start', 'content_block_start', 'content_block_delta', 'content_block_delta'],
  )

  // Clean early end: the raw stream just ends, without message_delta or message_stop.
  fake.next({ tokens: 5, cutAfterTokens: 2, cutMode: 'end' })
  const ended = await drain(await messageStream(client))
  t.equal(ended.error, undefined)
  t.equal(ended.items.at(-1)?.type, 'content_block_delta')

  // The MessageStream helper rejects in both cases.
  fake.next({ tokens: 5, cutAfterTokens: 2 })
  await t.rejects(client.messages.stream({ model: 'claude-test', max_tokens: 9, messages: USER }).finalMessage(), {
    name: 'AnthropicError',
    message: 'terminated',
  })
  fake.next({ tokens: 5, cutAfterTokens: 2, cutMode: 'end' })
  await t.rejects(client.messages.stream({ model: 'claude-test', max_tokens: 9, messages: USER }).finalMessage(), {
    message: 'stream ended without producing a Message with role=assistant',
  })
  t.ok(fake.requests.every((r) => r.cut && !r.completed && r.tokensSent === 2 && r.closedAt === undefined))
})

t.test('anthropic: aborting the request is recorded as closedAt', async (t) => {
  const fake = await startFakeAnthropic(t)
  fake.next({ tokens: 100, tokenDelayMs: 20 })
  const controller = new AbortController()
  const stream = await messageStream(anthropic(fake.baseURL), { signal: controller.signal })
  let deltas = 0
  for await (const event of stream) {
    if (event.type === 'content_block_delta' && ++deltas === 2) controller.abort()
  }
  t.equal(deltas, 2, 'iteration ended quietly after the abort')
  const request = await fake.waitForClose(0, 1000)
  t.ok(request.closedAt !== undefined && request.closedAt >= request.receivedAt)
  t.ok(request.tokensSent < 100)

  // waitForClose fails fast for a request that completed instead.
  await drain(await messageStream(anthropic(fake.baseURL)))
  await t.rejects(fake.waitForClose(1), /ended without the client closing it/)
  t.same(
    (await fake.waitForRequests(2)).map((r) => r.index),
    [0, 1],
  )
})
