import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'
import type { Config } from '../../config.js'
import { ProblemResponse } from '../../lib/problem.js'
import { Pagination } from '../auth/auth-schemas.js'
import { requireAuth } from '../auth/authorization.js'
import {
  ConversationParams,
  CreateConversationBody,
  EventStreamResponse,
  ResumeQuery,
  SendMessageBody,
} from './chat-schemas.js'
import { chatRateLimit } from './chat-routes.js'
import type { ConversationsService } from './conversations-service.js'

const ref = (id: string) => Type.Unsafe(Type.Ref(id))
const security = [{ bearer: [] }]
const errors = {
  400: ProblemResponse,
  401: ProblemResponse,
  403: ProblemResponse,
  404: ProblemResponse,
  429: ProblemResponse,
}

/** Conversations: stored turns, answers generated independently of the request, resumable and stoppable. */
export function conversationsRoutes(
  conversations: ConversationsService,
  config: Pick<Config, 'CHAT_RATE_LIMIT_PER_MINUTE'>,
): FastifyPluginAsyncTypebox {
  return async (app) => {
    app.post(
      '/conversations',
      {
        schema: {
          operationId: 'createConversation',
          tags: ['chat'],
          summary: 'Start a conversation (yours alone), optionally grounded in a project',
          security,
          body: CreateConversationBody,
          response: { 201: ref('Conversation'), ...errors, 413: ProblemResponse, 415: ProblemResponse },
        },
      },
      async (request, reply) => {
        const conversation = await conversations.create(requireAuth(request), request.body)
        return reply.code(201).header('location', `/api/v1/conversations/${conversation.id}`).send(conversation)
      },
    )

    app.get(
      '/conversations',
      {
        schema: {
          operationId: 'listConversations',
          tags: ['chat'],
          summary: 'Your conversations, most recently active first',
          security,
          querystring: Type.Object({ ...Pagination }, { additionalProperties: false }),
          response: { 200: ref('ConversationList'), ...errors },
        },
      },
      async (request) => conversations.list(requireAuth(request), request.query),
    )

    app.get(
      '/conversations/:id',
      {
        schema: {
          operationId: 'getConversation',
          tags: ['chat'],
          summary: 'A conversation with its latest messages',
          security,
          params: ConversationParams,
          response: { 200: ref('ConversationWithMessages'), ...errors },
        },
      },
      async (request) => conversations.get(requireAuth(request), request.params.id),
    )

    app.delete(
      '/conversations/:id',
      {
        schema: {
          operationId: 'deleteConversation',
          tags: ['chat'],
          summary: 'Delete a conversation and its messages (an answer being generated is stopped)',
          security,
          params: ConversationParams,
          response: { 204: { type: 'null', description: 'Deleted' }, ...errors },
        },
      },
      async (request, reply) => {
        await conversations.remove(requireAuth(request), request.params.id)
        return reply.code(204).send(null)
      },
    )

    app.post(
      '/conversations/:id/messages',
      {
        schema: {
          operationId: 'sendConversationMessage',
          tags: ['chat'],
          summary: 'Add your message and stream the answer (Server-Sent Events)',
          description:
            'The answer is generated independently of this response: if the connection drops, it goes on, and ' +
            '`GET /conversations/{id}/stream` with `Last-Event-ID` picks up where the client left. Event ids are ' +
            '`<messageId>:<n>`; `done` carries `status` (complete or stopped).',
          security,
          params: ConversationParams,
          body: SendMessageBody,
          response: {
            200: EventStreamResponse,
            ...errors,
            409: ProblemResponse,
            413: ProblemResponse,
            415: ProblemResponse,
            503: ProblemResponse,
          },
        },
        config: {
          rateLimit: chatRateLimit(config),
        },
      },
      async (request, reply) => {
        await conversations.send(requireAuth(request), request.params.id, request.body.content, () =>
          reply.eventStream(),
        )
        return reply
      },
    )

    app.get(
      '/conversations/:id/stream',
      {
        schema: {
          operationId: 'resumeConversationStream',
          tags: ['chat'],
          summary: 'Resume the latest answer after Last-Event-ID: the events missed, then the live rest',
          description:
            'Without Last-Event-ID, the latest answer from its first event. A finished answer is replayed and the ' +
            'stream ends; one still being generated (on any instance) continues live.',
          security,
          params: ConversationParams,
          querystring: ResumeQuery,
          response: { 200: EventStreamResponse, ...errors },
        },
      },
      async (request, reply) => {
        const header = request.headers['last-event-id']
        const lastEventId = (Array.isArray(header) ? header[0] : header) ?? request.query.lastEventId
        await conversations.resume(requireAuth(request), request.params.id, lastEventId, () => reply.eventStream())
        return reply
      },
    )

    app.post(
      '/conversations/:id/stop',
      {
        schema: {
          operationId: 'stopConversation',
          tags: ['chat'],
          summary: 'Stop the answer being generated, on whichever instance runs it',
          security,
          params: ConversationParams,
          response: { 200: ref('StopResult'), ...errors },
        },
      },
      async (request) => conversations.stop(requireAuth(request), request.params.id),
    )
  }
}
