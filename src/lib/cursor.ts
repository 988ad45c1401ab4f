import { problems } from './problem.js'

/**
 * Opaque keyset cursors: the sort key and id of the last row of a page, base64url-encoded JSON.
 * Clients treat them as opaque; a malformed cursor is a 400, never a 500.
 */
export interface Cursor {
  /** The sort value of the last row (ISO timestamp or string). */
  k: string
  /** Its id, the tie-breaker that makes the order total. */
  id: string
}

export function encodeCursor(cursor: Cursor): string {
  return Buffer.from(JSON.stringify([cursor.k, cursor.id])).toString('base64url')
}

export function decodeCursor(value: string): Cursor | null {
  try {
    const parsed: unknown = JSON.parse(Buffer.from(value, 'base64url').toString('utf8'))
    if (Array.isArray(parsed) && parsed.length === 2) {
      const [k, id] = parsed as unknown[]
      if (typeof k === 'string' && typeof id === 'string') return { k, id }
    }
  } catch {
    // fall through: not a cursor we issued
  }
  return null
}

/** The `cursor` query parameter: absent, or one this server issued (a 400 otherwise). */
export function cursorParam(value: string | undefined): Cursor | null {
  if (value === undefined) return null
  const cursor = decodeCursor(value)
  if (!cursor) {
    throw problems.badRequest('INVALID_CURSOR', 'The cursor is malformed or was not issued by this server.')
  }
  return cursor
}

/**
 * A page from rows fetched with `limit + 1`: the extra row only says that another page exists, and
 * the last row shown becomes the cursor of the next one.
 */
export function toPage<Row>(rows: Row[], limit: number, cursorOf: (row: Row) => Cursor) {
  const data = rows.slice(0, limit)
  const last = data.at(-1)
  return { data, nextCursor: rows.length > limit && last ? encodeCursor(cursorOf(last)) : null }
}
