import { type Billing, planLimitProblem } from '../billing/billing-service.js'
import type { FastifyBaseLogger } from 'fastify'
import type { Config } from '../../config.js'
import { newId } from '../../lib/ids.js'
import { HttpProblem, problems } from '../../lib/problem.js'
import type { EventStream } from '../../plugins/sse.js'
import { type AuthContext, orgOrDefault, requireOrgRole, requireScope } from '../auth/authorization.js'
import type { ChatRepository } from './chat-repository.js'
import { candidatesFor, type GenerationResult, generate } from './generation.js'
import type { ChatProvider, ChatTurn, ProviderName } from './providers.js'

export interface ContextChunk {
  text: string
  title?: string | undefined
  source?: string | undefined
  /** For passages retrieved from the project's documents. */
  documentId?: string | undefined
  score?: number | undefined
}

export interface ChatInput {
  message: string
  context?: { chunks?: (string | ContextChunk)[] | undefined; videoContext?: VideoContext | undefined } | undefined
  conversationHistory?: ChatTurn[] | undefined
  projectId?: string | undefined
  model?: string | undefined
}

export interface VideoContext {
  title?: string | undefined
  url?: string | undefined
  transcript?: string | undefined
  currentTime?: number | undefined
}

/** What `done` lists as the material the answer drew on. */
export interface Source {
  index: number
  text: string
  title: string | null
  source: string | null
  documentId: string | null
  score: number | null
}

/** Passages retrieved from a project's documents for each question. */
const RETRIEVED_PASSAGES = 5

export interface Retrieval {
  retrieve(
    orgId: string,
    projectId: string,
    query: string,
    topK: number,
  ): Promise<{ results: { documentId: string; title: string; text: string; score: number }[] }>
}

export function sourcesOf(chunks: ContextChunk[]): Source[] {
  return chunks.map((chunk, i) => ({
    index: i + 1,
    text: chunk.text.slice(0, SOURCE_EXCERPT_CHARS),
    title: chunk.title ?? null,
    source: chunk.source ?? null,
    documentId: chunk.documentId ?? null,
    score: chunk.score ?? null,
  }))
}

const INSTRUCTIONS =
  'You are a helpful assistant. Answer accurately and concisely. When context passages are given, ' +
  'ground your answer in them and cite them by their number, like [1]; say so when they do not answer the question.'

/** The characters of a source repeated in `done`: enough to recognise it, not a second copy. */
const SOURCE_EXCERPT_CHARS = 300

function normaliseChunk(chunk: string | ContextChunk): ContextChunk {
  return typeof chunk === 'string' ? { text: chunk } : chunk
}

/** Instructions, then the numbered context passages and what the user is watching. */
export function systemPrompt(chunks: ContextChunk[], video: VideoContext | undefined): string {
  const parts = [INSTRUCTIONS]
  if (chunks.length > 0) {
    const passages = chunks.map((chunk, i) => `[${i + 1}]${chunk.title ? ` ${chunk.title}:` : ''} ${chunk.text}`)
    parts.push(`Context passages:\n\n${passages.join('\n\n')}`)
  }
  if (video) {
    const about = [
      video.title ? `Title: ${video.title}` : null,
      video.url ? `URL: ${video.url}` : null,
      video.currentTime !== undefined ? `The user is at ${Math.floor(video.currentTime)} s.` : null,
      video.transcript ? `Transcript:\n${video.transcript}` : null,
    ].filter(Boolean)
    if (about.length > 0) parts.push(`The user is watching a video.\n${about.join('\n')}`)
  }
  return parts.join('\n\n')
}

/** Seconds until the next UTC midnight, when the daily budget starts over. */
function secondsUntilUtcMidnight(now = new Date()): number {
  const midnight = Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate() + 1)
  return Math.max(1, Math.ceil((midnight - now.getTime()) / 1000))
}

export function createChatService(deps: {
  repository: ChatRepository
  /** The providers an org's chats use: with its own keys where it brought them, else the server's. */
  providersFor(orgId: string): Promise<ReadonlyMap<ProviderName, ChatProvider>>
  projects: { get(auth: AuthContext, id: string): Promise<{ id: string; orgId: string }> }
  retrieval?: Retrieval
  /** The org's plan: its tokens per day. */
  billing: Pick<Billing, 'planOf' | 'limitsTokens'>
  config: Pick<
    Config,
    | 'CHAT_DEFAULT_MODEL'
    | 'CHAT_FALLBACK_MODELS'
    | 'CHAT_FIRST_TOKEN_TIMEOUT_MS'
    | 'CHAT_IDLE_TIMEOUT_MS'
    | 'CHAT_MAX_OUTPUT_TOKENS'
    | 'CHAT_MAX_CONCURRENT_STREAMS'
  >
  log: FastifyBaseLogger
}) {
  const { repository, providersFor, projects, config, log } = deps
  const fallbacks = config.CHAT_FALLBACK_MODELS.split(',')
    .map((model) => model.trim())
    .filter(Boolean)
  /** Streams running in this process, per user. */
  const streaming = new Map<string, number>()

  /** Everything that can refuse a chat request, checked before any upstream call or any byte of the stream. */
  /** `tokensToday`: the org's usage today when the caller read it already (with the conversation). */
  async function admit(
    auth: AuthContext,
    input: Pick<ChatInput, 'projectId' | 'model'>,
    conversationOrgId?: string,
    tokensToday?: number,
  ) {
    requireScope(auth, 'chat')
    let orgId: string
    if (conversationOrgId) {
      orgId = conversationOrgId
      requireOrgRole(auth, orgId, 'member')
    } else if (input.projectId) {
      orgId = (await projects.get(auth, input.projectId)).orgId
      // Spending the org's budget, and reading its documents into the prompt, takes a member.
      requireOrgRole(auth, orgId, 'member')
      requireScope(auth, 'documents:read')
    } else {
      orgId = orgOrDefault(auth, undefined)
      requireOrgRole(auth, orgId, 'member')
    }
    const candidates = candidatesFor(input.model ?? config.CHAT_DEFAULT_MODEL, fallbacks, await providersFor(orgId))
    if (candidates.length === 0) throw problems.notConfigured('Chat (no model provider is configured)')
    if (deps.billing.limitsTokens) {
      const plan = await deps.billing.planOf(orgId)
      if (plan.dailyTokens !== null) {
        const used = tokensToday ?? (await repository.tokensToday(orgId))
        if (used >= plan.dailyTokens) {
          throw planLimitProblem(
            429,
            `The organization has used the ${plan.dailyTokens} tokens its ${plan.id} plan allows today (UTC).`,
            { 'retry-after': String(secondsUntilUtcMidnight()) },
          )
        }
      }
    }
    const running = streaming.get(auth.userId) ?? 0
    if (running >= config.CHAT_MAX_CONCURRENT_STREAMS) {
      throw new HttpProblem(
        429,
        'TOO_MANY_STREAMS',
        `At most ${config.CHAT_MAX_CONCURRENT_STREAMS} answers may stream at once; wait for one to finish.`,
        { headers: { 'retry-after': '5' } },
      )
    }
    // Checked and taken with no await in between, so two requests cannot both take the last slot.
    streaming.set(auth.userId, (streaming.get(auth.userId) ?? 0) + 1)
    let released = false
    const release = () => {
      if (released) return
      released = true
      const left = (streaming.get(auth.userId) ?? 1) - 1
      if (left > 0) streaming.set(auth.userId, left)
      else streaming.delete(auth.userId)
    }
    return { orgId, candidates, release }
  }

  async function meter(
    auth: AuthContext,
    orgId: string,
    messageId: string,
    result: GenerationResult,
    conversationId: string | null,
  ) {
    if (!result.provider || !result.model) return
    try {
      await repository.recordUsage({
        id: messageId,
        orgId,
        userId: auth.userId,
        conversationId,
        provider: result.provider,
        model: result.model,
        inputTokens: result.inputTokens,
        outputTokens: result.outputTokens,
        estimated: result.estimated,
        status: result.status,
      })
    } catch (error) {
      // The answer was given; losing its meter reading must not turn it into an error for the client.
      log.error({ err: error, messageId }, 'chat usage could not be recorded')
    }
  }

  /**
   * The client's passages, then the project's passages that best match the question. Retrieval
   * failing leaves the answer ungrounded rather than failing it.
   */
  async function grounding(
    orgId: string,
    projectId: string | null | undefined,
    question: string,
    given: ContextChunk[] = [],
  ) {
    if (!projectId || !deps.retrieval) return given
    try {
      const { results } = await deps.retrieval.retrieve(orgId, projectId, question, RETRIEVED_PASSAGES)
      return [
        ...given,
        ...results.map((result) => ({
          text: result.text,
          title: result.title,
          documentId: result.documentId,
          score: result.score,
        })),
      ]
    } catch (error) {
      log.warn({ err: error, projectId }, 'retrieval failed; answering without the project documents')
      return given
    }
  }

  return {
    admit,
    meter,
    grounding,

    /**
     * One answer, streamed: `content` events, then `done` or `error`. Runs until the answer ends
     * or the client leaves (the upstream request is aborted with it); usage is recorded either way.
     */
    async answer(
      auth: AuthContext,
      input: ChatInput,
      admitted: Awaited<ReturnType<typeof admit>>,
      stream: EventStream,
    ) {
      const messageId = newId('msg')
      try {
        const chunks = await grounding(
          admitted.orgId,
          input.projectId,
          input.message,
          (input.context?.chunks ?? []).map(normaliseChunk),
        )
        const result = await generate(
          {
            candidates: admitted.candidates,
            system: systemPrompt(chunks, input.context?.videoContext),
            messages: [...(input.conversationHistory ?? []), { role: 'user', content: input.message }],
            maxOutputTokens: config.CHAT_MAX_OUTPUT_TOKENS,
            firstTokenTimeoutMs: config.CHAT_FIRST_TOKEN_TIMEOUT_MS,
            idleTimeoutMs: config.CHAT_IDLE_TIMEOUT_MS,
            signal: stream.signal,
            onText: (content) => stream.send({ type: 'content', content }),
          },
          log,
        )
        await meter(auth, admitted.orgId, messageId, result, null)
        if (result.status === 'complete') {
          const sources = sourcesOf(chunks)
          stream.send({
            type: 'done',
            messageId,
            sources,
            usage: {
              model: result.model,
              inputTokens: result.inputTokens,
              outputTokens: result.outputTokens,
              totalTokens: result.inputTokens + result.outputTokens,
            },
            fullContent: result.text,
          })
        } else if (result.failure) {
          stream.send({ type: 'error', error: result.failure.message, code: result.failure.code })
        }
      } finally {
        admitted.release()
        stream.end()
      }
    },

    /** Tokens per UTC day and model, for org admins. */
    async usage(
      auth: AuthContext,
      query: { orgId?: string | undefined; from?: string | undefined; to?: string | undefined },
    ) {
      requireScope(auth, 'usage:read')
      const orgId = orgOrDefault(auth, query.orgId)
      requireOrgRole(auth, orgId, 'admin')
      const to = query.to ? new Date(query.to) : new Date()
      const from = query.from ? new Date(query.from) : new Date(to.getTime() - 30 * 24 * 60 * 60 * 1000)
      if (Number.isNaN(from.getTime()) || Number.isNaN(to.getTime()) || from >= to) {
        throw problems.badRequest('INVALID_RANGE', '`from` must be a date before `to`.', [
          { path: '/querystring/from', message: 'must be a date before to' },
        ])
      }
      const rows = await repository.usageByDay(orgId, from, to)
      return { orgId, from: from.toISOString(), to: to.toISOString(), data: rows }
    },
  }
}

export type ChatService = ReturnType<typeof createChatService>
