import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { FastifyRequest } from 'fastify'
import { Type } from 'typebox'
import type { Config } from '../../config.js'
import { ProblemResponse } from '../../lib/problem.js'
import { requireAuth } from '../auth/authorization.js'
import { ChatBody, EventStreamResponse, UsageQuery } from './chat-schemas.js'
import type { ChatService } from './chat-service.js'

const security = [{ bearer: [] }]
const errors = {
  400: ProblemResponse,
  401: ProblemResponse,
  403: ProblemResponse,
  404: ProblemResponse,
  429: ProblemResponse,
}

/** Per user (after authentication), not per address: the seed's 10 per minute. Every chat route uses it. */
export function chatRateLimit(config: Pick<Config, 'CHAT_RATE_LIMIT_PER_MINUTE'>) {
  return {
    max: config.CHAT_RATE_LIMIT_PER_MINUTE,
    timeWindow: 60_000,
    hook: 'preHandler' as const,
    keyGenerator: (request: FastifyRequest) => (request.auth ? `chat:${request.auth.userId}` : `chat-ip:${request.ip}`),
  }
}

/** One-shot chat and the usage report. */
export function chatRoutes(
  chat: ChatService,
  config: Pick<Config, 'CHAT_RATE_LIMIT_PER_MINUTE'>,
): FastifyPluginAsyncTypebox {
  return async (app) => {
    app.post(
      '/chat',
      {
        schema: {
          operationId: 'chat',
          tags: ['chat'],
          summary: 'Stream an answer (Server-Sent Events)',
          description:
            'Streams `content` events, then `done` (with sources, usage and the full text) or `error`. ' +
            'Refusals (quota, too many streams, rate limit, no provider configured) are problem+json answers ' +
            'sent before any model is called. Closing the connection stops the answer; what was produced is metered.',
          security,
          body: ChatBody,
          response: {
            200: EventStreamResponse,
            ...errors,
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
        const auth = requireAuth(request)
        const admitted = await chat.admit(auth, request.body)
        let stream
        try {
          stream = reply.eventStream()
        } catch (error) {
          admitted.release()
          throw error
        }
        await chat.answer(auth, request.body, admitted, stream)
        return reply
      },
    )

    app.get(
      '/usage',
      {
        schema: {
          operationId: 'getUsage',
          tags: ['chat'],
          summary: 'Chat tokens per UTC day and model (org admins; API keys: usage:read)',
          security,
          querystring: UsageQuery,
          response: { 200: Type.Unsafe(Type.Ref('UsageReport')), ...errors },
        },
      },
      async (request) => chat.usage(requireAuth(request), request.query),
    )
  }
}
