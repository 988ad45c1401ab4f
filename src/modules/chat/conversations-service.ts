import { setTimeout as sleep } from 'node:timers/promises'
import type { FastifyBaseLogger } from 'fastify'
import type { Config } from '../../config.js'
import { isForeignKeyViolation } from '../../db/results.js'
import { timestampCursorParam, toPage } from '../../lib/cursor.js'
import { createGroupCommit } from '../../lib/group-commit.js'
import { newId } from '../../lib/ids.js'
import { HttpProblem, problems } from '../../lib/problem.js'
import type { EventStream } from '../../plugins/sse.js'
import { type AuthContext, orgOrDefault, requireOrgRole, requireScope } from '../auth/authorization.js'
import type {
  ChatRepository,
  ConversationRow,
  LoggedEvent,
  MessageRow,
  NewTurn,
  TurnContextRequest,
} from './chat-repository.js'
import { type ChatService, sourcesOf, systemPrompt } from './chat-service.js'
import { estimateTokens, generate } from './generation.js'
import { HEARTBEAT_INTERVAL_MS, type LiveAnswer, type LiveAnswers } from './live.js'
import { type ChatTurn, providerOf } from './providers.js'

/** Earlier turns sent with each new message. */
const HISTORY_TURNS = 50
/** A streaming message whose heartbeat is older than this lost its process (three beats missed, and some slack). */
const ABANDONED_AFTER_MS = 3 * HEARTBEAT_INTERVAL_MS + 3_000
/** Turns read, or started, in one statement at most. */
const TURNS_PER_STATEMENT = 200
/**
 * During a burst, how long a turn waits for others to share its statement. Messages arrive one at
 * a time even in a burst, and each of these statements costs the database more than its rows:
 * measured on 2,000 messages at once, without it the statements averaged three turns each.
 */
const TURN_LINGER_MS = 5
/** How often a resume served by another instance looks for new events in the log. */
const POLL_INTERVAL_MS = 250

/** `Last-Event-ID` of a conversation stream: `<messageId>:<seq>`. */
export const eventId = (messageId: string, seq: number) => `${messageId}:${seq}`

function parseEventId(value: string | undefined): { messageId: string | null; seq: number } {
  if (!value) return { messageId: null, seq: 0 }
  const match = /^(msg_[0-9a-f]{32}):(\d{1,9})$/.exec(value.trim())
  if (match) return { messageId: match[1] as string, seq: Number(match[2]) }
  if (/^\d{1,9}$/.test(value.trim())) return { messageId: null, seq: Number(value.trim()) }
  throw problems.badRequest('INVALID_LAST_EVENT_ID', 'Last-Event-ID must be an event id this stream sent.')
}

export function presentConversation(row: ConversationRow) {
  return {
    id: row.id,
    orgId: row.orgId,
    projectId: row.projectId,
    title: row.title,
    model: row.model,
    createdAt: row.createdAt,
    updatedAt: row.updatedAt,
  }
}

export function presentMessage(row: MessageRow) {
  return {
    id: row.id,
    role: row.role,
    content: row.content,
    status: row.status,
    model: row.model,
    errorCode: row.errorCode,
    createdAt: row.createdAt,
    updatedAt: row.updatedAt,
  }
}

export function createConversationsService(deps: {
  repository: ChatRepository
  chat: ChatService
  live: LiveAnswers
  projects: { get(auth: AuthContext, id: string): Promise<{ id: string; orgId: string }> }
  /** Tells every instance to stop a message's generation (the one generating it listens). */
  requestStop(messageId: string): Promise<void>
  config: Pick<
    Config,
    'CHAT_DEFAULT_MODEL' | 'CHAT_FIRST_TOKEN_TIMEOUT_MS' | 'CHAT_IDLE_TIMEOUT_MS' | 'CHAT_MAX_OUTPUT_TOKENS'
  >
  /** Whether any plan limits tokens per day: then the turn's read counts the org's tokens today. */
  countTokensToday: boolean
  log: FastifyBaseLogger
}) {
  const { repository, chat, live, projects, config, log } = deps
  const running = new Set<Promise<void>>()
  // Messages sent at the same moment share their two statements: a burst of them costs the
  // database (and this process) a few round trips rather than two each.
  const turnContexts = createGroupCommit({
    write: (requests: TurnContextRequest[]) =>
      repository.turnContexts(requests, {
        staleMs: ABANDONED_AFTER_MS,
        historyTurns: HISTORY_TURNS,
        // Read with the conversation, rather than by a statement of its own per message.
        countTokensToday: deps.countTokensToday,
      }),
    maxBatch: TURNS_PER_STATEMENT,
    writers: 2,
    lingerMs: TURN_LINGER_MS,
  })
  const startTurns = createGroupCommit({
    write: (turns: NewTurn[]) => repository.startTurns(turns),
    maxBatch: TURNS_PER_STATEMENT,
    writers: 2,
    lingerMs: TURN_LINGER_MS,
  })
  const inProgress = () =>
    new HttpProblem(
      409,
      'GENERATION_IN_PROGRESS',
      'An answer is still being generated in this conversation; resume or stop it first.',
    )

  async function owned(auth: AuthContext, id: string): Promise<ConversationRow> {
    requireScope(auth, 'chat')
    const conversation = await repository.findConversation(id, auth.userId, [...auth.roles.keys()])
    if (!conversation) throw problems.notFound('Conversation not found.', 'CONVERSATION_NOT_FOUND')
    return conversation
  }

  /** Replays the events after `afterSeq` from memory, then hands on each new one until the last. */
  function watch(answer: LiveAnswer, stream: EventStream, afterSeq: number): Promise<void> {
    return new Promise((resolve) => {
      for (let seq = afterSeq + 1; seq <= answer.events.length; seq++) {
        stream.sendSerialized(answer.events[seq - 1] as string, eventId(answer.messageId, seq))
      }
      const watcher = (seq: number, data: string, final: boolean) => {
        if (seq > afterSeq) stream.sendSerialized(data, eventId(answer.messageId, seq))
        // The end ends every watcher, also one that asked to start past it.
        if (final) done()
      }
      const done = () => {
        answer.watchers.delete(watcher)
        stream.signal.removeEventListener('abort', done)
        stream.end()
        resolve()
      }
      answer.watchers.add(watcher)
      stream.signal.addEventListener('abort', done, { once: true })
    })
  }

  /** Replays a message's log, following it while another instance still generates it. */
  async function replayFromLog(
    conversation: ConversationRow,
    message: MessageRow,
    stream: EventStream,
    afterSeq: number,
  ) {
    let after = afterSeq
    const isFinal = (data: string) => /^\{"type":"(done|error)"/.test(data)
    const send = (events: LoggedEvent[]) => {
      for (const event of events) stream.sendSerialized(event.data, eventId(message.id, event.seq))
      after = events.at(-1)?.seq ?? after
      return events.some((event) => isFinal(event.data))
    }
    for (;;) {
      if (stream.signal.aborted) return
      const { events, more } = await repository.events(message.id, after)
      // The log already holds the end (its transaction committed before the instance said so).
      if (send(events)) return stream.end()
      if (more) continue
      const local = live.get(message.id)
      if (local) return watch(local, stream, after)
      const current = await repository.message(message.id, message.conversationId)
      if (!current || current.status !== 'streaming') {
        // Ended meanwhile: what it wrote last may have landed after the read above.
        for (;;) {
          const rest = await repository.events(message.id, after)
          send(rest.events)
          if (!rest.more) break
        }
        return stream.end()
      }
      if (await repository.isAbandoned(message.id, ABANDONED_AFTER_MS)) {
        await endAbandoned(current, conversation)
        continue
      }
      await sleep(POLL_INTERVAL_MS)
    }
  }

  /**
   * The process generating it died: the answer ends as incomplete, with an error event in its log,
   * and its usage is recorded as estimated from what was logged (the provider's own count died too).
   */
  async function endAbandoned(message: Pick<MessageRow, 'id' | 'model'>, conversation: ConversationRow) {
    const data = JSON.stringify({
      type: 'error',
      error: 'The answer was interrupted and cannot be resumed.',
      code: 'STREAM_INTERRUPTED',
    })
    const events: LoggedEvent[] = []
    for (let more = true; more;) {
      const page = await repository.events(message.id, events.at(-1)?.seq ?? 0)
      events.push(...page.events)
      more = page.more
    }
    const seq = (events.at(-1)?.seq ?? 0) + 1
    const content = events
      .map((event) => JSON.parse(event.data) as { type: string; content?: string })
      .filter((event) => event.type === 'content')
      .map((event) => event.content ?? '')
      .join('')
    // Two instances ending it at once write the same event number, which the log keeps once.
    await repository.endAnswers([
      {
        events: { messageId: message.id, seq, lastSeq: seq, data },
        message: {
          id: message.id,
          status: 'incomplete',
          content,
          model: message.model,
          errorCode: 'STREAM_INTERRUPTED',
        },
        usage: message.model
          ? {
              id: message.id,
              orgId: conversation.orgId,
              userId: conversation.createdBy,
              conversationId: conversation.id,
              provider: providerOf(message.model),
              model: message.model,
              // The prompt is not kept with the answer; only the output can be estimated.
              inputTokens: 0,
              outputTokens: estimateTokens(content),
              estimated: true,
              status: 'incomplete',
            }
          : null,
      },
    ])
  }

  /** Generates the answer, independent of any HTTP response, and ends it in one transaction. */
  async function run(
    auth: AuthContext,
    conversation: ConversationRow,
    answer: LiveAnswer,
    admitted: Awaited<ReturnType<ChatService['admit']>>,
    messages: ChatTurn[],
  ) {
    try {
      const question = messages.at(-1)?.content ?? ''
      const chunks = await chat.grounding(conversation.orgId, conversation.projectId, question)
      const result = await generate(
        {
          candidates: admitted.candidates,
          system: systemPrompt(chunks, undefined),
          messages,
          maxOutputTokens: config.CHAT_MAX_OUTPUT_TOKENS,
          firstTokenTimeoutMs: config.CHAT_FIRST_TOKEN_TIMEOUT_MS,
          idleTimeoutMs: config.CHAT_IDLE_TIMEOUT_MS,
          signal: answer.controller.signal,
          onText: (content) => live.emitContent(answer, content),
        },
        log,
      )
      const usage = {
        model: result.model,
        inputTokens: result.inputTokens,
        outputTokens: result.outputTokens,
        totalTokens: result.inputTokens + result.outputTokens,
      }
      const final =
        result.status === 'complete' || result.status === 'stopped'
          ? {
              type: 'done',
              messageId: answer.messageId,
              status: result.status,
              sources: sourcesOf(chunks),
              usage,
              fullContent: result.text,
            }
          : {
              type: 'error',
              error: result.failure?.message ?? 'The answer failed.',
              code: result.failure?.code ?? 'UPSTREAM_ERROR',
            }
      await live.end(answer, final, {
        message: {
          id: answer.messageId,
          status: result.status,
          content: result.text,
          model: result.model,
          errorCode: result.failure?.code ?? null,
        },
        // Metered even when the message is gone (its conversation was deleted meanwhile).
        usage:
          result.provider && result.model
            ? {
                id: answer.messageId,
                orgId: conversation.orgId,
                userId: auth.userId,
                conversationId: conversation.id,
                provider: result.provider,
                model: result.model,
                inputTokens: result.inputTokens,
                outputTokens: result.outputTokens,
                estimated: result.estimated,
                status: result.status,
              }
            : null,
      })
    } finally {
      live.release(answer)
      admitted.release()
    }
  }

  return {
    async create(
      auth: AuthContext,
      input: {
        orgId?: string | undefined
        projectId?: string | undefined
        title?: string | undefined
        model?: string | undefined
      },
    ) {
      requireScope(auth, 'chat')
      let orgId: string
      if (input.projectId) {
        // Its answers read the project's documents into their prompts.
        requireScope(auth, 'documents:read')
        orgId = (await projects.get(auth, input.projectId)).orgId
        if (input.orgId && input.orgId !== orgId) {
          throw problems.badRequest('ORG_MISMATCH', 'The project belongs to another organization.', [
            { path: '/body/orgId', message: "must be the project's organization" },
          ])
        }
      } else {
        orgId = orgOrDefault(auth, input.orgId)
      }
      requireOrgRole(auth, orgId, 'member')
      const row = await repository.createConversation({
        id: newId('cnv'),
        orgId,
        projectId: input.projectId ?? null,
        createdBy: auth.userId,
        title: input.title ?? '',
        model: input.model ?? null,
      })
      return presentConversation(row)
    },

    async list(auth: AuthContext, query: { limit?: number; cursor?: string | undefined }) {
      requireScope(auth, 'chat')
      const limit = query.limit ?? 20
      const before = timestampCursorParam(query.cursor)
      const rows = await repository.listConversations(auth.userId, [...auth.roles.keys()], limit + 1, before)
      const { data, nextCursor } = toPage(rows, limit, (row) => ({ k: row.sortKey, id: row.conversation.id }))
      return { data: data.map((row) => presentConversation(row.conversation)), nextCursor }
    },

    async get(auth: AuthContext, id: string) {
      const conversation = await owned(auth, id)
      const messages = await repository.messages(id, 200)
      return { ...presentConversation(conversation), messages: messages.map(presentMessage) }
    },

    async remove(auth: AuthContext, id: string) {
      const conversation = await owned(auth, id)
      const latest = await repository.latestAssistantMessage(conversation.id)
      if (latest?.status === 'streaming') await deps.requestStop(latest.id)
      await repository.deleteConversation(conversation.id)
    },

    /** Stores the user's message and streams the answer; the answer goes on if the client leaves. */
    async send(auth: AuthContext, id: string, content: string, openStream: () => EventStream) {
      requireScope(auth, 'chat')
      // Two statements before the upstream request: this read, and the insert of the turn.
      const context = await turnContexts.submit({ id, userId: auth.userId, orgIds: [...auth.roles.keys()] })
      if (!context) throw problems.notFound('Conversation not found.', 'CONVERSATION_NOT_FOUND')
      const { conversation, streaming } = context
      if (streaming) {
        if (!streaming.abandoned) throw inProgress()
        // Its server died: it ends as incomplete before the next turn starts.
        await endAbandoned(streaming, conversation)
      }
      const admitted = await chat.admit(
        auth,
        { projectId: conversation.projectId ?? undefined, model: conversation.model ?? undefined },
        conversation.orgId,
        context.tokensToday ?? undefined,
      )
      const assistantMessageId = newId('msg')
      let answer: LiveAnswer
      let stream: EventStream
      try {
        const started = await startTurns.submit({
          conversationId: conversation.id,
          userMessageId: newId('msg'),
          assistantMessageId,
          content,
          model: admitted.candidates[0]?.model ?? config.CHAT_DEFAULT_MODEL,
          // Cut on whole characters: half an emoji would be stored as U+FFFD.
          title: [...content.slice(0, 160)].slice(0, 80).join(''),
        })
        if (!started) throw inProgress()
        answer = live.start(assistantMessageId, conversation.id)
        stream = openStream()
      } catch (error) {
        admitted.release()
        // The conversation was deleted between reading it and adding the turn to it.
        throw isForeignKeyViolation(error)
          ? problems.notFound('Conversation not found.', 'CONVERSATION_NOT_FOUND')
          : error
      }
      const messages: ChatTurn[] = [...context.history, { role: 'user', content }]
      const generation = run(auth, conversation, answer, admitted, messages)
      running.add(generation)
      void generation.finally(() => running.delete(generation))
      await watch(answer, stream, 0)
    },

    /** The events of the latest answer (or of the one `Last-Event-ID` names) after that id, then the live rest. */
    async resume(auth: AuthContext, id: string, lastEventId: string | undefined, openStream: () => EventStream) {
      const conversation = await owned(auth, id)
      const last = parseEventId(lastEventId)
      const message = last.messageId
        ? await repository.message(last.messageId, conversation.id)
        : await repository.latestAssistantMessage(conversation.id)
      if (!message || message.role !== 'assistant') {
        throw problems.notFound('There is no answer to resume in this conversation.', 'MESSAGE_NOT_FOUND')
      }
      const stream = openStream()
      const local = live.get(message.id)
      if (local) return watch(local, stream, last.seq)
      try {
        await replayFromLog(conversation, message, stream, last.seq)
      } catch (error) {
        // The response is already a stream: the failure is its last event, never a hanging connection.
        log.error({ err: error, messageId: message.id }, 'resuming an answer failed')
        stream.send({ type: 'error', error: 'The answer could not be resumed; try again.', code: 'RESUME_FAILED' })
        stream.end()
      }
    },

    /** Stops the answer being generated, wherever it runs; stopping a finished answer changes nothing. */
    async stop(auth: AuthContext, id: string) {
      const conversation = await owned(auth, id)
      const latest = await repository.latestAssistantMessage(conversation.id)
      if (!latest) throw problems.notFound('There is no answer in this conversation.', 'MESSAGE_NOT_FOUND')
      if (latest.status !== 'streaming') return { messageId: latest.id, status: latest.status }
      if (await repository.isAbandoned(latest.id, ABANDONED_AFTER_MS)) {
        await endAbandoned(latest, conversation)
        return { messageId: latest.id, status: 'incomplete' as const }
      }
      live.get(latest.id)?.controller.abort(new Error('stopped by the user'))
      await deps.requestStop(latest.id)
      return { messageId: latest.id, status: 'stopping' as const }
    },

    /** Stops every local answer and waits until each is written (shutdown). */
    async drain() {
      live.stopAll()
      await Promise.allSettled([...running])
    },
  }
}

export type ConversationsService = ReturnType<typeof createConversationsService>
