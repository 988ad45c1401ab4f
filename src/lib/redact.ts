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

const SECRET_KEYS = new Set([...SECRET_HEADERS, ...SECRET_FIELDS].map((key) => key.toLowerCase()))
const MAX_DEPTH = 6
export const REDACTED = '[REDACTED]'

function isPlainObject(value: object): value is Record<string, unknown> {
  const prototype = Object.getPrototypeOf(value)
  return prototype === Object.prototype || prototype === null
}

/**
 * Returns the log object with the value of every credential-named key (headers and fields, at
 * any depth) replaced. Copy-on-write: an object without secrets is returned as is, so the common
 * log line costs a handful of key lookups. Used as pino's `formatters.log`; pino's own path-based
 * redaction needs wildcard paths for this and costs a wildcard match on every key of every line.
 */
export function redactSecrets<T extends Record<string, unknown>>(value: T, depth = 0): T {
  let copy: Record<string, unknown> | undefined
  for (const key in value) {
    const item: unknown = value[key]
    let replacement = item
    if (SECRET_KEYS.has(key.toLowerCase())) {
      if (item !== undefined && item !== null && item !== '') replacement = REDACTED
    } else if (depth < MAX_DEPTH && typeof item === 'object' && item !== null) {
      if (Array.isArray(item)) {
        const mapped = item.map((element: unknown) =>
          typeof element === 'object' && element !== null && isPlainObject(element)
            ? redactSecrets(element, depth + 1)
            : element,
        )
        if (mapped.some((element, index) => element !== item[index])) replacement = mapped
      } else if (isPlainObject(item)) {
        replacement = redactSecrets(item, depth + 1)
      }
    }
    if (replacement !== item) {
      copy ??= { ...value }
      copy[key] = replacement
    }
  }
  return (copy ?? value) as T
}

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
