import { Ajv2020 } from 'ajv/dist/2020.js'
import addFormats from 'ajv-formats'
import { asc } from 'drizzle-orm'
import t from 'tap'
import { outboxEvents } from '../../src/db/schema/index.js'
import { EVENT_TYPES } from '../../src/modules/events/catalogue.js'
import { account, callAs } from '../auth/support.js'
import { buildTestApp } from '../helper.js'

interface WebhookOperation {
  operationId: string
  parameters: { name: string; in: string; required: boolean }[]
  requestBody: { content: { 'application/json': { schema: { properties: { type: { const: string } } } } } }
}

t.test('the OpenAPI document lists every catalogued event under webhooks, signed per Standard Webhooks', async (t) => {
  const app = await buildTestApp(t)
  const document = (await app.inject({ method: 'GET', url: '/openapi.json' })).json() as {
    webhooks: Record<string, { post: WebhookOperation }>
  }
  t.same(Object.keys(document.webhooks).sort(), [...EVENT_TYPES].sort(), 'one entry per event type, no other')
  for (const type of EVENT_TYPES) {
    const operation = document.webhooks[type]?.post
    t.equal(operation?.requestBody.content['application/json'].schema.properties.type.const, type, `${type}: type`)
    t.same(
      operation?.parameters.filter((parameter) => parameter.in === 'header' && parameter.required).map((p) => p.name),
      ['webhook-id', 'webhook-timestamp', 'webhook-signature'],
      `${type}: the three signature headers`,
    )
  }
})

t.test('what the projects module records for its events matches the catalogued payload', async (t) => {
  const app = await buildTestApp(t)
  const document = (await app.inject({ method: 'GET', url: '/openapi.json' })).json() as Record<string, unknown>
  const ajv = new Ajv2020({ strict: false, allErrors: true })
  addFormats.default(ajv)
  ajv.addSchema(document, 'openapi')
  const validatorFor = (type: string) =>
    ajv.compile({
      $ref: `openapi#/webhooks/${type}/post/requestBody/content/application~1json/schema`,
    })

  const owner = await account(app)
  const created = await callAs(app, owner, 'POST', '/projects', { name: 'Catalogued', data: { steps: [1, 2] } })
  t.equal(created.statusCode, 201)
  const id = created.json().id as string
  const patched = await app.inject({
    method: 'PATCH',
    url: `/api/v1/projects/${id}`,
    headers: { ...owner.headers, 'content-type': 'application/merge-patch+json' },
    payload: { description: 'changed' },
  })
  t.equal(patched.statusCode, 200)
  t.equal((await callAs(app, owner, 'DELETE', `/projects/${id}`)).statusCode, 204)

  const recorded = await app.db.select().from(outboxEvents).orderBy(asc(outboxEvents.seq))
  t.same(
    recorded.map((event) => event.type),
    ['project.created', 'project.updated', 'project.deleted'],
  )
  for (const event of recorded) {
    // The envelope deliveries will carry, built from the outbox row.
    const payload = {
      id: event.id,
      type: event.type,
      timestamp: event.occurredAt.toISOString(),
      orgId: event.orgId,
      data: event.data,
    }
    const validate = validatorFor(event.type)
    t.ok(validate(payload), `${event.type} matches its schema`, { errors: validate.errors })
  }
  const wrong = validatorFor('project.updated')
  t.notOk(
    wrong({ id: 'evt_x', type: 'project.created', timestamp: new Date().toISOString(), orgId: 'o', data: {} }),
    'a mismatched type and data are refused',
  )
})
