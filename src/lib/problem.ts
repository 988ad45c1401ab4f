import { type Static, Type } from 'typebox'

export const ProblemSchema = Type.Object(
  {
    type: Type.String({ description: 'URI identifying the problem type' }),
    title: Type.String(),
    status: Type.Integer({ minimum: 400, maximum: 599 }),
    detail: Type.String(),
    code: Type.String({ pattern: '^[A-Z][A-Z0-9_]*$', description: 'Stable machine-readable code' }),
    requestId: Type.String(),
    errors: Type.Optional(
      Type.Array(Type.Object({ path: Type.String(), message: Type.String() }), {
        description: 'Validation failures, one per offending field',
      }),
    ),
  },
  { $id: 'Problem', title: 'Problem', description: 'RFC 9457 problem details' },
)
export type Problem = Static<typeof ProblemSchema>

/**
 * Use in route response schemas: `404: ProblemResponse`. Declared per media type so that both the
 * serializer and the OpenAPI document say `application/problem+json`, which is what is sent.
 */
export const ProblemResponse = Type.Unsafe<Problem>({
  description: 'Problem details (RFC 9457)',
  content: { 'application/problem+json': { schema: Type.Ref('Problem') } },
})

export interface FieldError {
  path: string
  message: string
}

export const STATUS_TITLES: Record<number, string> = {
  400: 'Bad Request',
  401: 'Unauthorized',
  403: 'Forbidden',
  404: 'Not Found',
  405: 'Method Not Allowed',
  406: 'Not Acceptable',
  408: 'Request Timeout',
  409: 'Conflict',
  410: 'Gone',
  412: 'Precondition Failed',
  413: 'Content Too Large',
  415: 'Unsupported Media Type',
  422: 'Unprocessable Content',
  428: 'Precondition Required',
  429: 'Too Many Requests',
  500: 'Internal Server Error',
  502: 'Bad Gateway',
  503: 'Service Unavailable',
  504: 'Gateway Timeout',
}

export const DEFAULT_CODES: Record<number, string> = {
  400: 'BAD_REQUEST',
  401: 'UNAUTHORIZED',
  403: 'FORBIDDEN',
  404: 'NOT_FOUND',
  405: 'METHOD_NOT_ALLOWED',
  406: 'NOT_ACCEPTABLE',
  408: 'REQUEST_TIMEOUT',
  409: 'CONFLICT',
  410: 'GONE',
  412: 'PRECONDITION_FAILED',
  413: 'PAYLOAD_TOO_LARGE',
  415: 'UNSUPPORTED_MEDIA_TYPE',
  422: 'UNPROCESSABLE_CONTENT',
  428: 'PRECONDITION_REQUIRED',
  429: 'RATE_LIMITED',
  500: 'INTERNAL_ERROR',
  502: 'BAD_GATEWAY',
  503: 'SERVICE_UNAVAILABLE',
  504: 'GATEWAY_TIMEOUT',
}

/** Problem types are URNs: stable identifiers that do not depend on where the API is hosted. */
export function problemType(code: string): string {
  return `urn:backplane:problem:${code.toLowerCase().replaceAll('_', '-')}`
}

/**
 * An error whose status, code and detail are safe to show to the client, whatever the status.
 * Anything else that reaches the error handler with a 5xx status is masked.
 */
export class HttpProblem extends Error {
  override name = 'HttpProblem'
  readonly statusCode: number
  readonly code: string
  readonly errors: FieldError[] | undefined
  readonly headers: Record<string, string>

  constructor(
    statusCode: number,
    code: string,
    detail: string,
    options: { errors?: FieldError[]; headers?: Record<string, string>; cause?: unknown } = {},
  ) {
    super(detail, options.cause === undefined ? undefined : { cause: options.cause })
    this.statusCode = statusCode
    this.code = code
    this.errors = options.errors
    this.headers = options.headers ?? {}
  }
}

export const problems = {
  badRequest: (code: string, detail: string, errors?: FieldError[]) =>
    new HttpProblem(400, code, detail, errors ? { errors } : {}),
  unauthorized: (detail = 'Authentication is required.', code = 'UNAUTHORIZED') =>
    new HttpProblem(401, code, detail, { headers: { 'www-authenticate': 'Bearer' } }),
  forbidden: (detail: string, code = 'FORBIDDEN') => new HttpProblem(403, code, detail),
  notFound: (detail: string, code = 'NOT_FOUND') => new HttpProblem(404, code, detail),
  conflict: (detail: string, code = 'CONFLICT') => new HttpProblem(409, code, detail),
  preconditionFailed: (detail: string, code = 'PRECONDITION_FAILED') => new HttpProblem(412, code, detail),
  unprocessable: (detail: string, code = 'UNPROCESSABLE_CONTENT') => new HttpProblem(422, code, detail),
  notConfigured: (feature: string) =>
    new HttpProblem(503, 'NOT_CONFIGURED', `${feature} is not configured on this server.`),
  unavailable: (detail: string, code = 'SERVICE_UNAVAILABLE', retryAfterSeconds?: number) =>
    new HttpProblem(
      503,
      code,
      detail,
      retryAfterSeconds ? { headers: { 'retry-after': String(retryAfterSeconds) } } : {},
    ),
}
