import { type Static, Type } from 'typebox'

export const HealthSchema = Type.Object({ status: Type.Literal('ok') }, { $id: 'Health', title: 'Health' })

const ServiceStatus = Type.Union([Type.Literal('healthy'), Type.Literal('degraded'), Type.Literal('unhealthy')])

export const ServiceCheckSchema = Type.Object(
  {
    status: ServiceStatus,
    latencyMs: Type.Optional(Type.Number()),
    message: Type.Optional(Type.String()),
    queued: Type.Optional(Type.Integer({ minimum: 0, description: 'Jobs waiting or being retried (jobs only)' })),
    dead: Type.Optional(
      Type.Integer({ minimum: 0, description: 'Jobs that exhausted their retries (jobs only; degrades when > 0)' }),
    ),
  },
  { $id: 'ServiceCheck', title: 'ServiceCheck' },
)
export type ServiceCheck = Static<typeof ServiceCheckSchema>

export const ReadinessSchema = Type.Object(
  {
    status: ServiceStatus,
    timestamp: Type.String({ format: 'date-time' }),
    services: Type.Record(Type.String(), Type.Unsafe<ServiceCheck>(Type.Ref('ServiceCheck'))),
  },
  { $id: 'Readiness', title: 'Readiness' },
)
export type Readiness = Static<typeof ReadinessSchema>

export const systemSchemas = [HealthSchema, ServiceCheckSchema, ReadinessSchema]
