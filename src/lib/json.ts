import secureJson from 'secure-json-parse'

export class JsonBodyError extends Error {
  constructor(
    readonly code: 'INVALID_JSON' | 'JSON_TOO_DEEP' | 'FORBIDDEN_JSON_KEY' | 'INVALID_CHARACTER',
    message: string,
  ) {
    super(message)
  }
}

/**
 * Deepest nesting of objects and arrays in a JSON text, stopping as soon as `limit` is passed.
 * Checked before parsing because everything after the parser (validation, serialisation, the
 * database driver) recurses, and a 1 MiB body can nest half a million levels deep.
 */
export function exceedsDepth(text: string, limit: number): boolean {
  let depth = 0
  let inString = false
  for (let i = 0; i < text.length; i++) {
    const char = text.charCodeAt(i)
    if (inString) {
      if (char === 92 /* \ */) i++
      else if (char === 34 /* " */) inString = false
    } else if (char === 34) inString = true
    else if (char === 123 /* { */ || char === 91 /* [ */) {
      if (++depth > limit) return true
    } else if (char === 125 /* } */ || char === 93 /* ] */) depth--
  }
  return false
}

/**
 * Whether the JSON text escapes a NUL character (`\u0000`, not an escaped backslash followed by
 * "u0000"). PostgreSQL stores no NUL in text or jsonb and would fail the write with a 500.
 */
export function containsNulEscape(text: string): boolean {
  let index = text.indexOf('\\u0000')
  while (index !== -1) {
    let backslashes = 1
    while (index - backslashes >= 0 && text.charCodeAt(index - backslashes) === 92) backslashes++
    if (backslashes % 2 === 1) return true
    index = text.indexOf('\\u0000', index + 1)
  }
  return false
}

/**
 * Parses a JSON request body, refusing prototype-poisoning keys, excessive nesting and NUL
 * characters, which no text column can hold.
 */
export function parseJsonBody(text: string, maxDepth: number): unknown {
  if (exceedsDepth(text, maxDepth)) {
    throw new JsonBodyError('JSON_TOO_DEEP', `JSON nesting deeper than ${maxDepth} levels is not accepted.`)
  }
  if (containsNulEscape(text)) {
    throw new JsonBodyError('INVALID_CHARACTER', 'JSON strings must not contain the NUL character (\\u0000).')
  }
  let parsed: unknown
  try {
    parsed = secureJson.parse(text, undefined, { protoAction: 'error', constructorAction: 'error' })
  } catch (error) {
    if (error instanceof SyntaxError && /prototype|constructor/i.test(error.message)) {
      throw new JsonBodyError(
        'FORBIDDEN_JSON_KEY',
        'JSON keys "__proto__" and "constructor.prototype" are not accepted.',
      )
    }
    throw new JsonBodyError('INVALID_JSON', 'The request body is not valid JSON.')
  }
  // Only an escape can smuggle in a lone surrogate (decoded UTF-8 has none), so the walk over every
  // string runs only for bodies that contain one.
  if (SURROGATE_ESCAPE.test(text) && !wellFormed(parsed)) {
    throw new JsonBodyError(
      'INVALID_CHARACTER',
      'JSON strings must be well-formed Unicode: a \\uD800-\\uDFFF escape must be part of a surrogate pair.',
    )
  }
  return parsed
}

const SURROGATE_ESCAPE = /\\u[dD][89a-fA-F]/

/**
 * Whether every string and key is well-formed UTF-16. PostgreSQL refuses lone surrogates in jsonb
 * and the driver silently replaces them in text, so they are refused before either happens.
 */
function wellFormed(value: unknown): boolean {
  if (typeof value === 'string') return value.isWellFormed()
  if (typeof value !== 'object' || value === null) return true
  if (Array.isArray(value)) return value.every(wellFormed)
  return Object.entries(value).every(([key, item]) => key.isWellFormed() && wellFormed(item))
}

/**
 * JSON with object keys sorted at every level: two bodies that differ only in key order give the
 * same text (and hash), which is what a retried request usually looks like after re-serialising.
 */
export function canonicalJson(value: unknown): string {
  return JSON.stringify(value, (_key, item: unknown) => {
    if (typeof item !== 'object' || item === null || Array.isArray(item)) return item
    // No prototype: a "__proto__" key stays a key instead of replacing the prototype.
    const sorted = Object.create(null) as Record<string, unknown>
    for (const key of Object.keys(item).sort()) sorted[key] = (item as Record<string, unknown>)[key]
    return sorted
  })
}

// Characters JSON.stringify writes as they are: no quote, backslash or control character, and no
// surrogate (a lone one is escaped; pairs are left to JSON.stringify too, for simplicity).
// eslint-disable-next-line no-control-regex -- exactly the characters JSON escapes
const VERBATIM = /^[^"\\\u0000-\u001f\ud800-\udfff]*$/

/**
 * `JSON.stringify(text)`, three times faster for the ids and names that need no escaping, which
 * log lines are made of: JSON.stringify of a lone short string costs 120-150 ns.
 */
export function jsonString(text: string): string {
  return VERBATIM.test(text) ? `"${text}"` : JSON.stringify(text)
}

/**
 * `JSON.stringify(Math.round(value * 100) / 100)` for a finite, non-negative value below 2^53 / 100,
 * from integers: formatting a fractional double costs about 100 ns, an integer a tenth of that.
 */
export function jsonHundredths(value: number): string {
  const hundredths = Math.round(value * 100)
  const whole = Math.floor(hundredths / 100)
  const rest = hundredths - whole * 100
  if (rest === 0) return `${whole}`
  if (rest % 10 === 0) return `${whole}.${rest / 10}`
  return `${whole}.${rest < 10 ? '0' : ''}${rest}`
}
