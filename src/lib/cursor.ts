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
  /**
   * What the list was filtered and sorted by, when the endpoint has such parameters: a cursor
   * only continues the listing it came from (another sort would resume at a meaningless spot).
   */
  scope?: string
}

export function encodeCursor(cursor: Cursor): string {
  const parts = cursor.scope === undefined ? [cursor.k, cursor.id] : [cursor.k, cursor.id, cursor.scope]
  return Buffer.from(JSON.stringify(parts)).toString('base64url')
}

export function decodeCursor(value: string): Cursor | null {
  try {
    const parsed: unknown = JSON.parse(Buffer.from(value, 'base64url').toString('utf8'))
    if (Array.isArray(parsed) && (parsed.length === 2 || parsed.length === 3)) {
      const [k, id, scope] = parsed as unknown[]
      // No NUL: it could never be a stored value, and PostgreSQL refuses it in any text parameter.
      if (typeof k === 'string' && typeof id === 'string' && !`${k}${id}`.includes('\u0000')) {
        if (scope === undefined) return { k, id }
        if (typeof scope === 'string') return { k, id, scope }
      }
    }
  } catch {
    // fall through: not a cursor we issued
  }
  return null
}

/**
 * The `cursor` query parameter: absent, or one this server issued for the same `scope` (the
 * listing's filters and order); a 400 otherwise.
 */
export function cursorParam(value: string | undefined, scope?: string): Cursor | null {
  if (value === undefined) return null
  const cursor = decodeCursor(value)
  if (!cursor) {
    throw problems.badRequest('INVALID_CURSOR', 'The cursor is malformed or was not issued by this server.')
  }
  if (cursor.scope !== scope) {
    throw problems.badRequest('INVALID_CURSOR', 'The cursor belongs to a listing with other filters or another order.')
  }
  return cursor
}

/** `cursorParam` for a listing keyed by a timestamp: an edited key is a 400, not a failed query. */
export function timestampCursorParam(value: string | undefined, scope?: string): Cursor | null {
  const cursor = cursorParam(value, scope)
  if (cursor && !isTimestampText(cursor.k)) {
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

const TIMESTAMP_TEXT = /^(\d{4})-(\d{2})-(\d{2}) (\d{2}):(\d{2}):(\d{2})(\.\d{1,6})?([+-]\d{2})(?::?(\d{2}))?$/

/**
 * Whether a cursor's sort key is a timestamp as PostgreSQL renders `timestamptz::text`. Cursors
 * are not signed, so a client can edit one; a key the database cannot parse must be a 400, not
 * a failed query.
 */
export function isTimestampText(text: string): boolean {
  const match = TIMESTAMP_TEXT.exec(text)
  if (!match) return false
  const [year = 0, month = 0, day = 0, hour = 0, minute = 0, second = 0, , offsetHours = 0, offsetMinutes = 0] = match
    .slice(1)
    .map((part) => (part === undefined ? 0 : Number(part)))
  const daysInMonth = new Date(Date.UTC(year, month, 0)).getUTCDate()
  return (
    year >= 1 &&
    month >= 1 &&
    month <= 12 &&
    day >= 1 &&
    day <= daysInMonth &&
    hour < 24 &&
    minute < 60 &&
    second < 60 &&
    Math.abs(offsetHours) <= 15 &&
    offsetMinutes < 60
  )
}
