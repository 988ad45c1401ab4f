import { readFileSync } from 'node:fs'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import type { FastifyInstance } from 'fastify'
import t from 'tap'
import { Type } from 'typebox'
import { buildApp } from '../../src/app.js'
import { loadConfig } from '../../src/config.js'
import { ProblemResponse } from '../../src/lib/problem.js'
import { buildTestApp } from '../helper.js'

const COMMITTED = new URL('../../openapi/openapi.json', import.meta.url)
const HTTP_METHODS = ['get', 'put', 'post', 'delete', 'options', 'head', 'patch', 'trace']

interface Operation {
  operationId?: unknown
  tags?: unknown
  responses?: Record<string, { content?: Record<string, { schema?: unknown }> }>
  parameters?: { name: string; in: string; required?: boolean; schema?: unknown }[]
  requestBody?: { content?: Record<string, { schema?: Record<string, unknown> }> }
}
interface OpenApiDocument {
  openapi: string
  info: { title: string; version: string }
  servers?: { url: string }[]
  paths: Record<string, Record<string, Operation>>
  components: {
    schemas: Record<string, Record<string, unknown>>
    securitySchemes: Record<string, Record<string, unknown>>
  }
}

function operations(document: OpenApiDocument): { label: string; operation: Operation }[] {
  return Object.entries(document.paths).flatMap(([path, item]) =>
    Object.entries(item)
      .filter(([method]) => HTTP_METHODS.includes(method))
      .map(([method, operation]) => ({ label: `${method.toUpperCase()} ${path}`, operation })),
  )
}

/** Every `$ref` string anywhere in the document. */
function refs(value: unknown, found: string[] = []): string[] {
  if (Array.isArray(value)) for (const item of value) refs(item, found)
  else if (value && typeof value === 'object') {
    for (const [key, child] of Object.entries(value)) {
      if (key === '$ref' && typeof child === 'string') found.push(child)
      else refs(child, found)
    }
  }
  return found
}

/** Whether a documented response's body is the shared Problem component. */
function isProblem(response: { content?: Record<string, { schema?: unknown }> } | undefined): boolean {
  const schemas = Object.values(response?.content ?? {}).map((media) => media.schema)
  return (
    schemas.length > 0 &&
    schemas.every((schema) => (schema as { $ref?: unknown } | undefined)?.$ref === '#/components/schemas/Problem')
  )
}

/** A documented test route and a hidden one, next to the production routes. */
async function testRoutes(app: FastifyInstance) {
  app.register(
    async (scope) => {
      scope.withTypeProvider<TypeBoxTypeProvider>().post(
        '/gadgets/:id',
        {
          schema: {
            operationId: 'testUpdateGadget',
            tags: ['test'],
            params: Type.Object({ id: Type.String() }, { additionalProperties: false }),
            querystring: Type.Object({ dryRun: Type.Optional(Type.Boolean()) }, { additionalProperties: false }),
            body: Type.Object({ name: Type.String() }, { additionalProperties: false }),
            response: { 200: Type.Object({ id: Type.String() }), 404: ProblemResponse, 409: ProblemResponse },
          },
        },
        async (request) => ({ id: request.params.id }),
      )
      scope.get('/internal', { schema: { hide: true } }, async () => 'hidden')
    },
    { prefix: '/test' },
  )
}

let app: FastifyInstance
let document: OpenApiDocument

t.before(async () => {
  app = await buildTestApp(t, { extend: testRoutes })
  const response = await app.inject({ method: 'GET', url: '/openapi.json' })
  if (response.statusCode !== 200) throw new Error(`GET /openapi.json answered ${response.statusCode}`)
  document = response.json()
})

t.test('GET /openapi.json serves the OpenAPI 3.1 document of the app', async (t) => {
  const response = await app.inject({ method: 'GET', url: '/openapi.json' })
  t.equal(response.statusCode, 200)
  t.match(response.headers['content-type'], /^application\/json/)
  t.match(document.openapi, /^3\.1\.\d+$/)
  t.equal(document.info.title, 'Backplane API')
  t.type(document.info.version, 'string')
  t.same(document, app.swagger(), 'the served document is the generated one')
})

t.test('components: the Problem schema and the bearer security scheme', async (t) => {
  const problem = document.components.schemas.Problem
  t.ok(problem, 'components.schemas.Problem exists')
  t.equal(problem?.type, 'object')
  t.same(
    [...((problem?.required as string[]) ?? [])].sort(),
    ['code', 'detail', 'requestId', 'status', 'title', 'type'],
    'the fields every problem carries are required',
  )
  t.hasStrict(problem?.properties, {
    type: { type: 'string' },
    title: { type: 'string' },
    status: { type: 'integer' },
    detail: { type: 'string' },
    code: { type: 'string' },
    requestId: { type: 'string' },
    errors: { type: 'array' },
  })
  t.hasStrict(document.components.securitySchemes.bearer, { type: 'http', scheme: 'bearer' })
})

t.test('every operation has an operationId, tags and responses; operationIds are unique', async (t) => {
  const all = operations(document)
  t.ok(all.length >= 4, 'the production routes and the test route are documented')
  const ids = new Map<string, string>()
  for (const { label, operation } of all) {
    t.type(operation.operationId, 'string', `${label} has an operationId`)
    t.ok(String(operation.operationId).length > 0, `${label} operationId is not empty`)
    t.ok(Array.isArray(operation.tags) && operation.tags.length > 0, `${label} has tags`)
    t.ok(Object.keys(operation.responses ?? {}).length > 0, `${label} has responses`)
    t.ok(
      Object.keys(operation.responses ?? {}).some((status) => /^[23]/.test(status)),
      `${label} documents a success response`,
    )
    const id = String(operation.operationId)
    t.notOk(ids.has(id), `${label}: operationId ${id} is not also used by ${ids.get(id)}`)
    ids.set(id, label)
  }
  for (const path of ['/health', '/ready', '/metrics']) t.ok(document.paths[path], `${path} is documented`)
})

t.test('hidden routes and the documentation routes are not in the document', async (t) => {
  const paths = Object.keys(document.paths)
  t.notOk(paths.includes('/test/internal'))
  t.notOk(paths.includes('/openapi.json'))
  t.notOk(
    paths.some((path) => path.startsWith('/docs')),
    'no /docs routes',
  )
})

t.test('route schemas become the operation: parameters, closed body, Problem error responses', async (t) => {
  const operation = document.paths['/test/gadgets/{id}']?.post
  t.ok(operation, 'the test route is documented under its OpenAPI path')
  if (!operation) return
  t.equal(operation.operationId, 'testUpdateGadget')
  t.same(operation.tags, ['test'])
  t.hasStrict(
    operation.parameters?.find((parameter) => parameter.name === 'id'),
    { in: 'path', required: true },
  )
  t.ok(operation.parameters?.find((parameter) => parameter.name === 'dryRun' && parameter.in === 'query'))
  const body = operation.requestBody?.content?.['application/json']?.schema
  t.equal(body?.additionalProperties, false, 'the body refuses unknown properties in the document too')
  t.same(Object.keys(operation.responses ?? {}).sort(), ['200', '404', '409'])
  for (const status of ['404', '409']) {
    t.ok(isProblem(operation.responses?.[status]), `${status} is documented as a Problem`)
  }
  t.notOk(isProblem(operation.responses?.['200']))
  t.ok(isProblem(document.paths['/metrics']?.get?.responses?.['500']), 'production error responses reference Problem')
})

t.test('every $ref resolves to a component', async (t) => {
  const found = refs(document)
  t.ok(found.length > 0)
  for (const ref of new Set(found)) {
    const match = /^#\/components\/schemas\/(.+)$/.exec(ref)
    t.ok(match, `${ref} points into components.schemas`)
    if (match?.[1]) t.ok(document.components.schemas[match[1]], `${ref} exists`)
  }
})

t.test('GET /docs serves the API reference page', async (t) => {
  let url = '/docs'
  let response = await app.inject({ method: 'GET', url })
  for (let hops = 0; hops < 5 && response.statusCode >= 300 && response.statusCode < 400; hops++) {
    const location = response.headers.location
    t.type(location, 'string', `redirect from ${url} has a Location`)
    url = new URL(String(location), `http://localhost${url}`).pathname
    response = await app.inject({ method: 'GET', url })
  }
  t.equal(response.statusCode, 200, `${url} answers 200`)
  t.match(response.headers['content-type'], /^text\/html/)
  t.match(response.body, /<html/i)
  t.match(response.body, /swagger-ui/i)

  const initializer = await app.inject({ method: 'GET', url: '/docs/static/swagger-initializer.js' })
  t.equal(initializer.statusCode, 200, 'the UI script is served')
  const json = await app.inject({ method: 'GET', url: '/docs/json' })
  t.equal(json.statusCode, 200)
  t.same(json.json(), document, 'the UI reads the same document')
})

t.test('the committed openapi/openapi.json matches the routes', async (t) => {
  // The same fixed environment `npm run openapi` uses, so the document never depends on the machine.
  const config = loadConfig({
    env: {
      NODE_ENV: 'production',
      LOG_LEVEL: 'silent',
      DATABASE_URL: 'memory://',
      PUBLIC_URL: 'http://localhost:3000',
    },
    envFile: false,
  })
  const fresh = await buildApp(config)
  t.teardown(() => fresh.close())
  await fresh.ready()
  const generated = `${JSON.stringify(fresh.swagger(), null, 2)}\n`
  const committed = readFileSync(COMMITTED, 'utf8')
  t.same(JSON.parse(committed), JSON.parse(generated), 'same content (run `npm run openapi` if this fails)')
  t.equal(committed, generated, 'byte for byte, as `npm run openapi:check` compares')
  const served = await fresh.inject({ method: 'GET', url: '/openapi.json' })
  t.same(served.json(), JSON.parse(committed), 'what production serves is what is committed')
  t.same(JSON.parse(committed).servers, [{ url: 'http://localhost:3000' }])
})
