import { uuidv7 } from 'uuidv7'

export type IdPrefix =
  'usr' | 'org' | 'prj' | 'key' | 'cnv' | 'msg' | 'doc' | 'whe' | 'evt' | 'rtk' | 'aud' | 'wev' | 'whd' | 'wha'

/**
 * Opaque, prefixed ids: the prefix says what an id names (a support ticket with `prj_...` needs no
 * context); UUIDv7 sorts by creation time, which keeps b-tree inserts local, and carries 74 random
 * bits, so ids cannot be enumerated.
 */
export function newId(prefix: IdPrefix): string {
  return `${prefix}_${uuidv7().replaceAll('-', '')}`
}
