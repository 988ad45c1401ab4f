import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'
import { ProblemResponse } from '../../lib/problem.js'
import { requireAuth } from '../auth/authorization.js'
import type { DeliveriesService } from './deliveries-service.js'
import {
  CreateEndpointBody,
  DeliveryParams,
  EndpointParams,
  ListDeliveriesQuery,
  ListEndpointsQuery,
  UpdateEndpointBody,
} from './endpoints-schemas.js'
import type { EndpointsService } from './endpoints-service.js'

const ref = (id: string) => Type.Unsafe(Type.Ref(id))
const security = [{ bearer: [] }]
const errors = {
  400: ProblemResponse,
  401: ProblemResponse,
  403: ProblemResponse,
  404: ProblemResponse,
  429: ProblemResponse,
}
const writeErrors = { ...errors, 413: ProblemResponse, 415: ProblemResponse }

/** Outbound webhook endpoints: where an org's systems receive its events. Org admins only. */
export function endpointsRoutes(endpoints: EndpointsService, deliveries: DeliveriesService): FastifyPluginAsyncTypebox {
  return async (app) => {
    app.post(
      '/webhook-endpoints',
      {
        schema: {
          operationId: 'createWebhookEndpoint',
          tags: ['webhooks'],
          summary: 'Register an endpoint; the answer carries its signing secret, shown only here',
          description:
            'The URL must be https on a public host: every address it resolves to is checked now and again at ' +
            'each connection (SSRF). Requires the admin role in the org (API keys: webhooks:write).',
          security,
          body: CreateEndpointBody,
          response: { 201: ref('WebhookEndpointWithSecret'), ...writeErrors },
        },
      },
      async (request, reply) => {
        const endpoint = await endpoints.create(requireAuth(request), request.body, request.ip)
        return reply.code(201).header('location', `/api/v1/webhook-endpoints/${endpoint.id}`).send(endpoint)
      },
    )

    app.get(
      '/webhook-endpoints',
      {
        schema: {
          operationId: 'listWebhookEndpoints',
          tags: ['webhooks'],
          summary: "An org's endpoints, oldest first (admins; API keys: webhooks:read)",
          security,
          querystring: ListEndpointsQuery,
          response: { 200: ref('WebhookEndpointList'), ...errors },
        },
      },
      async (request) => endpoints.list(requireAuth(request), request.query),
    )

    app.get(
      '/webhook-endpoints/:id',
      {
        schema: {
          operationId: 'getWebhookEndpoint',
          tags: ['webhooks'],
          summary: 'An endpoint, without its secret',
          security,
          params: EndpointParams,
          response: { 200: ref('WebhookEndpoint'), ...errors },
        },
      },
      async (request) => endpoints.get(requireAuth(request), request.params.id),
    )

    app.patch(
      '/webhook-endpoints/:id',
      {
        schema: {
          operationId: 'updateWebhookEndpoint',
          tags: ['webhooks'],
          summary: 'Change the URL, events, description or enabled state; enabling clears disabledReason',
          security,
          params: EndpointParams,
          body: UpdateEndpointBody,
          response: { 200: ref('WebhookEndpoint'), ...writeErrors },
        },
      },
      async (request) => endpoints.update(requireAuth(request), request.params.id, request.body, request.ip),
    )

    app.delete(
      '/webhook-endpoints/:id',
      {
        schema: {
          operationId: 'deleteWebhookEndpoint',
          tags: ['webhooks'],
          summary: 'Delete an endpoint; nothing more is delivered to it',
          security,
          params: EndpointParams,
          response: { 204: { type: 'null', description: 'Deleted' }, ...errors },
        },
      },
      async (request, reply) => {
        await endpoints.remove(requireAuth(request), request.params.id, request.ip)
        return reply.code(204).send(null)
      },
    )

    app.post(
      '/webhook-endpoints/:id/rotate-secret',
      {
        schema: {
          operationId: 'rotateWebhookEndpointSecret',
          tags: ['webhooks'],
          summary: 'Issue a new signing secret; the previous one keeps signing for 24 hours',
          description:
            'During the overlap every delivery carries two signatures (new and previous secret), so the receiver ' +
            'can switch to the new secret at any moment within it. The new secret is shown only in this answer. ' +
            'Rotating again ends the earlier overlap at once (only the latest previous secret keeps signing): ' +
            'after a leak, rotate twice to stop the leaked secret immediately.',
          security,
          params: EndpointParams,
          response: { 200: ref('WebhookEndpointWithSecret'), ...errors },
        },
      },
      async (request) => endpoints.rotateSecret(requireAuth(request), request.params.id, request.ip),
    )

    app.get(
      '/webhook-endpoints/:id/deliveries',
      {
        schema: {
          operationId: 'listWebhookDeliveries',
          tags: ['webhooks'],
          summary: "The endpoint's delivery log: every attempt, newest first",
          description:
            'Each attempt with its event, attempt number, time, status code, latency, the first 1 KB of the ' +
            'response and when the next attempt is due. Admins; API keys: webhooks:read.',
          security,
          params: EndpointParams,
          querystring: ListDeliveriesQuery,
          response: { 200: ref('WebhookDeliveryAttemptList'), ...errors },
        },
      },
      async (request) => deliveries.log(requireAuth(request), request.params.id, request.query),
    )

    app.post(
      '/webhook-endpoints/:id/test',
      {
        schema: {
          operationId: 'testWebhookEndpoint',
          tags: ['webhooks'],
          summary: 'Send a webhook.test event to this endpoint (only), signed and retried like any other',
          security,
          params: EndpointParams,
          response: { 202: ref('WebhookDeliveryQueued'), ...errors, 409: ProblemResponse },
        },
      },
      async (request, reply) => {
        const queued = await deliveries.test(requireAuth(request), request.params.id)
        return reply.code(202).send({ ...queued, status: 'pending' as const })
      },
    )

    app.post(
      '/webhook-endpoints/:id/deliveries/:deliveryId/retry',
      {
        schema: {
          operationId: 'retryWebhookDelivery',
          tags: ['webhooks'],
          summary: 'Send a failed delivery again now; if it fails, the retry schedule starts over',
          description: 'The event keeps its id (webhook-id), so a receiver that did get it can recognise it.',
          security,
          params: DeliveryParams,
          response: { 202: ref('WebhookDeliveryQueued'), ...errors, 409: ProblemResponse },
        },
      },
      async (request, reply) => {
        const queued = await deliveries.retry(requireAuth(request), request.params.id, request.params.deliveryId)
        return reply.code(202).send(queued)
      },
    )
  }
}
