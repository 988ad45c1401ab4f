/**
 * Entity tags of versioned resources and the conditional-request checks of RFC 9110. The version
 * alone identifies a representation: every change bumps it, and the same version always renders
 * the same body, so the tag is strong.
 */
export const etagOf = (version: number) => `"${version}"`

/** The entity tags listed in an If-Match or If-None-Match header ("*" stays "*"). */
function listedTags(header: string): string[] {
  return header
    .split(',')
    .map((tag) => tag.trim())
    .filter((tag) => tag !== '')
}

/** If-Match uses strong comparison: a weak tag never matches. */
export function ifMatchSatisfied(header: string | undefined, etag: string): boolean {
  if (header === undefined) return true
  return listedTags(header).some((tag) => tag === '*' || tag === etag)
}

/** If-None-Match uses weak comparison: `W/"3"` matches `"3"`. True means "send 304". */
export function ifNoneMatchHit(header: string | undefined, etag: string): boolean {
  if (header === undefined) return false
  return listedTags(header).some((tag) => tag === '*' || tag.replace(/^W\//, '') === etag)
}
