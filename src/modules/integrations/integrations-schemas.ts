import { Type } from 'typebox'
import { SERVICES } from '../../config.js'
import { BYOK_SERVICES } from './credentials-service.js'

const Timestamp = Type.String({ format: 'date-time' })

export const IntegrationStatusSchema = Type.Object(
  {
    service: Type.Union(
      SERVICES.map((service) => Type.Literal(service)),
      { description: 'The third-party service' },
    ),
    configured: Type.Boolean({ description: 'This server holds a credential for the service' }),
    orgCredential: Type.Union([Type.Unsafe(Type.Ref('OrgCredential')), Type.Null()], {
      description: "The org's own key for the service, used instead of the server's (model providers only)",
    }),
    circuit: Type.Union([Type.Literal('closed'), Type.Literal('open'), Type.Literal('half-open')], {
      description: 'open: calls are refused after repeated failures; half-open: one probe is testing the service',
    }),
    lastSuccessAt: Type.Union([Timestamp, Type.Null()]),
    lastFailureAt: Type.Union([Timestamp, Type.Null()], {
      description: 'Last failure on the service side (5xx, 429, timeout, no connection)',
    }),
    recentCalls: Type.Integer({ minimum: 0, description: 'Attempts in the last five minutes (this instance)' }),
    recentErrorRate: Type.Number({
      minimum: 0,
      maximum: 1,
      description: 'Share of those attempts that failed on the service side',
    }),
  },
  { $id: 'IntegrationStatus', title: 'IntegrationStatus' },
)

export const OrgCredentialSchema = Type.Object(
  {
    lastFour: Type.String({ description: 'The last four characters of the key; the key itself is never shown again' }),
    setAt: Timestamp,
  },
  { $id: 'OrgCredential', title: 'OrgCredential' },
)

export const CredentialParams = Type.Object(
  {
    orgId: Type.String(),
    service: Type.Union(
      BYOK_SERVICES.map((service) => Type.Literal(service)),
      { description: 'The model provider' },
    ),
  },
  { additionalProperties: false },
)

export const CredentialBody = Type.Object(
  {
    apiKey: Type.String({
      minLength: 8,
      maxLength: 512,
      pattern: '^\\S{8,}\\s*$',
      description: "The provider's API key",
    }),
  },
  { additionalProperties: false },
)

export const IntegrationListSchema = Type.Object(
  { data: Type.Array(Type.Unsafe(Type.Ref('IntegrationStatus'))) },
  { $id: 'IntegrationList', title: 'IntegrationList' },
)

export const IntegrationsQuery = Type.Object(
  { orgId: Type.Optional(Type.String({ description: "The org asking (default: the caller's personal org)" })) },
  { additionalProperties: false },
)

export const integrationSchemas = [OrgCredentialSchema, IntegrationStatusSchema, IntegrationListSchema]
