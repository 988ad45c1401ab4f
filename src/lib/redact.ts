/** Header and body fields that carry credentials; pino replaces them with [REDACTED]. */
const SECRET_HEADERS = [
  'authorization',
  'cookie',
  'set-cookie',
  'proxy-authorization',
  'x-api-key',
  'stripe-signature',
  'x-twilio-signature',
  'x-hub-signature',
  'x-hub-signature-256',
  'webhook-signature',
  'svix-signature',
]
const SECRET_FIELDS = [
  'password',
  'newPassword',
  'currentPassword',
  'passwordHash',
  'token',
  'accessToken',
  'refreshToken',
  'idToken',
  'apiKey',
  'key',
  'secret',
  'clientSecret',
  'encryptionKey',
]

export const LOG_REDACT_PATHS = [
  ...SECRET_HEADERS.flatMap((header) => [
    `req.headers["${header}"]`,
    `res.headers["${header}"]`,
    `headers["${header}"]`,
    `*.headers["${header}"]`,
    // `request.log.info(request.headers)` puts the header names at the top level.
    `["${header}"]`,
  ]),
  ...SECRET_FIELDS.flatMap((field) => [field, `*.${field}`, `*.*.${field}`]),
]

const SECRET_QUERY_PARAM = /token|key|secret|password|signature|code|auth|session/i

/** The URL with the values of credential-looking query parameters replaced. */
export function redactUrl(url: string): string {
  const queryStart = url.indexOf('?')
  if (queryStart === -1) return url
  const params = new URLSearchParams(url.slice(queryStart + 1))
  for (const name of new Set(params.keys())) {
    if (SECRET_QUERY_PARAM.test(name)) params.set(name, '[REDACTED]')
  }
  return `${url.slice(0, queryStart)}?${params.toString()}`
}
