import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import type { FastifySchemaValidationError } from 'fastify/types/schema.js'
import fp from 'fastify-plugin'
import FindMyWay, { type HTTPMethod } from 'find-my-way'
import {
  DEFAULT_CODES,
  type FieldError,
  HttpProblem,
  type Problem,
  ProblemSchema,
  problemType,
  STATUS_TITLES,
} from '../lib/problem.js'

// OPTIONS is left out: CORS answers preflights for every path, which says nothing about a resource.
const METHODS: HTTPMethod[] = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE']

/** Fastify's own client errors, with a fixed wording so that no parser message echoes input. */
/** SQLSTATEs of text PostgreSQL cannot store (NUL bytes, invalid encodings): the client's fault. */
const UNSTORABLE_TEXT = new Set(['22021', '22P05'])

/** The SQLSTATE of a database error, also when a query builder wrapped it (as its `cause`). */
function sqlStateOf(error: unknown): string | undefined {
  for (let current = error, depth = 0; current && typeof current === 'object' && depth < 3; depth++) {
    const code = (current as { code?: unknown }).code
    if (typeof code === 'string' && /^[0-9A-Z]{5}$/.test(code)) return code
    current = (current as { cause?: unknown }).cause
  }
  return undefined
}

const FASTIFY_ERRORS: Record<string, { code: string; detail: (request: FastifyRequest) => string }> = {
  FST_ERR_CTP_BODY_TOO_LARGE: {
    code: 'PAYLOAD_TOO_LARGE',
    detail: (request) => `The request body exceeds the limit of ${request.routeOptions.bodyLimit} bytes.`,
  },
  FST_ERR_CTP_INVALID_MEDIA_TYPE: {
    code: 'UNSUPPORTED_MEDIA_TYPE',
    detail: (request) => `Content-Type ${safeHeader(request.headers['content-type'])} is not accepted here.`,
  },
  FST_ERR_CTP_EMPTY_JSON_BODY: { code: 'EMPTY_BODY', detail: () => 'The JSON request body is empty.' },
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: {
    code: 'INVALID_CONTENT_LENGTH',
    detail: () => 'Content-Length does not match the body.',
  },
  FST_ERR_CTP_INVALID_TYPE: { code: 'INVALID_CONTENT_TYPE', detail: () => 'The Content-Type header is invalid.' },
  FST_ERR_BAD_URL: { code: 'BAD_URL', detail: () => 'The request URL is malformed.' },
  FST_ERR_ASYNC_CONSTRAINT: { code: 'BAD_REQUEST', detail: () => 'The request could not be routed.' },
}

function safeHeader(value: string | undefined): string {
  if (!value) return '(none)'
  const mediaType = value.split(';')[0]?.trim() ?? ''
  return /^[\w.+-]+\/[\w.+-]+$/.test(mediaType) ? `"${mediaType}"` : '(invalid)'
}

/** Turns Ajv errors into `{path, message}` with JSON-pointer paths; never includes the value. */
export function fieldErrors(errors: FastifySchemaValidationError[], context: string | undefined): FieldError[] {
  return errors.map((error) => {
    const params = error.params as Record<string, unknown>
    let path = `/${context ?? 'body'}${error.instancePath}`
    let message = error.message ?? 'is invalid'
    if (error.keyword === 'additionalProperties') {
      path += `/${String(params.additionalProperty)}`
      message = 'is not allowed'
    } else if (error.keyword === 'required') {
      path += `/${String(params.missingProperty)}`
      message = 'is required'
    }
    return { path, message }
  })
}

export function renderProblem(
  request: FastifyRequest,
  status: number,
  code: string,
  detail: string,
  errors?: FieldError[],
): Problem {
  return {
    type: problemType(code),
    title: STATUS_TITLES[status] ?? (status >= 500 ? 'Server Error' : 'Client Error'),
    status,
    detail,
    code,
    requestId: request.id,
    ...(errors ? { errors } : {}),
  }
}

function sendProblem(reply: FastifyReply, problem: Problem, headers: Record<string, string> = {}) {
  return reply.code(problem.status).headers(headers).type('application/problem+json').send(problem)
}

/**
 * The root error and not-found handlers. Every error leaves the API as RFC 9457 problem+json; a
 * 5xx that is not a deliberate HttpProblem is logged in full and masked in the body, so stacks,
 * SQL, driver messages and secrets never reach a client.
 */
async function errorsPlugin(app: FastifyInstance) {
  app.addSchema(ProblemSchema)

  // Knows every registered route, so an unmatched request can tell 405 (path exists) from 404.
  const knownRoutes = FindMyWay({ ignoreTrailingSlash: true, ignoreDuplicateSlashes: true })
  app.addHook('onRoute', (route) => {
    if (route.url === '*') return
    for (const method of [route.method].flat()) {
      if (METHODS.includes(method as HTTPMethod) && !knownRoutes.find(method as HTTPMethod, route.url)) {
        knownRoutes.on(method as HTTPMethod, route.url, () => {})
      }
    }
  })

  app.setNotFoundHandler((request, reply) => {
    const path = request.url.split('?')[0] ?? '/'
    const allowed = METHODS.filter((method) => knownRoutes.find(method, path))
    if (allowed.length > 0) {
      return sendProblem(
        reply,
        renderProblem(request, 405, 'METHOD_NOT_ALLOWED', `${request.method} is not supported on this resource.`),
        { allow: allowed.join(', ') },
      )
    }
    return sendProblem(reply, renderProblem(request, 404, 'ROUTE_NOT_FOUND', 'No route matches this URL.'))
  })

  app.setErrorHandler((error: FastifyError | HttpProblem, request, reply) => {
    if (error instanceof HttpProblem) {
      if (error.statusCode >= 500) request.log.warn({ err: error }, 'request failed')
      return sendProblem(
        reply,
        renderProblem(request, error.statusCode, error.code, error.message, error.errors),
        error.headers,
      )
    }

    if ('validation' in error && error.validation) {
      const errors = fieldErrors(error.validation, error.validationContext)
      return sendProblem(reply, renderProblem(request, 400, 'VALIDATION_FAILED', 'The request is invalid.', errors))
    }

    if (UNSTORABLE_TEXT.has(sqlStateOf(error) ?? '')) {
      // Text that reached the database from a query string or path (a body is checked earlier).
      request.log.debug({ err: error }, 'unstorable text')
      return sendProblem(
        reply,
        renderProblem(request, 400, 'INVALID_CHARACTER', 'Text must not contain the NUL character.'),
      )
    }

    const status = typeof error.statusCode === 'number' ? error.statusCode : 500
    if (status >= 400 && status < 500) {
      request.log.debug({ err: error }, 'client error')
      const known = error.code ? FASTIFY_ERRORS[error.code] : undefined
      if (known) return sendProblem(reply, renderProblem(request, status, known.code, known.detail(request)))
      // http-errors (from @fastify/sensible) mark messages written for clients as exposable.
      const exposable = (error as { expose?: boolean }).expose === true
      const detail = exposable && error.message ? error.message : (STATUS_TITLES[status] ?? 'Client error')
      return sendProblem(reply, renderProblem(request, status, DEFAULT_CODES[status] ?? 'CLIENT_ERROR', detail))
    }

    request.log.error({ err: error }, 'unhandled error')
    const masked = status >= 500 && status <= 599 ? status : 500
    return sendProblem(
      reply,
      renderProblem(request, masked, DEFAULT_CODES[masked] ?? 'INTERNAL_ERROR', 'An unexpected error occurred.'),
    )
  })
}

export default fp(errorsPlugin, { name: 'errors', fastify: '5.x' })
