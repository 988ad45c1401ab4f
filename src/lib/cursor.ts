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
