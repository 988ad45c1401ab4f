import secureJson from 'secure-json-parse'

export class JsonBodyError extends Error {
  constructor(
    readonly code: 'INVALID_JSON' | 'JSON_TOO_DEEP' | 'FORBIDDEN_JSON_KEY',
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

/** Parses a JSON request body, refusing prototype-poisoning keys and excessive nesting. */
export function parseJsonBody(text: string, maxDepth: number): unknown {
  if (exceedsDepth(text, maxDepth)) {
    throw new JsonBodyError('JSON_TOO_DEEP', `JSON nesting deeper than ${maxDepth} levels is not accepted.`)
  }
  try {
    return secureJson.parse(text, undefined, { protoAction: 'error', constructorAction: 'error' })
  } catch (error) {
    if (error instanceof SyntaxError && /prototype|constructor/i.test(error.message)) {
      throw new JsonBodyError(
        'FORBIDDEN_JSON_KEY',
        'JSON keys "__proto__" and "constructor.prototype" are not accepted.',
      )
    }
    throw new JsonBodyError('INVALID_JSON', 'The request body is not valid JSON.')
  }
}
