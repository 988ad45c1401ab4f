import { randomBytes } from 'node:crypto'
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

const HEX_BYTES = Array.from({ length: 256 }, (_, byte) => byte.toString(16).padStart(2, '0'))

/**
 * Request ids in UUID form (version 8, RFC 9562's custom layout): 90 random bits and a 32-bit
 * counter from a random start; when the counter wraps, the random bits are drawn again. Ids from
 * one generator never repeat, and two generators share their random bits with a chance of 2^-90.
 * Request ids label log lines for correlation and are no secret, so they need no CSPRNG draw
 * each: `randomUUID` refills its entropy pool every 128 ids, and formatting a counter wider than
 * 31 bits with `toString(16)` cost more than that; a byte table formats it in about 25 ns.
 */
export function requestIdGenerator(): () => string {
  let randomPart = ''
  let counter = 0
  const draw = () => {
    const random = randomBytes(16)
    random[6] = ((random[6] as number) & 0x0f) | 0x80 // version 8
    random[8] = ((random[8] as number) & 0x3f) | 0x80 // variant 10
    const hex = random.toString('hex')
    randomPart = `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20, 24)}`
    counter = random.readUInt32BE(12)
  }
  draw()
  return () => {
    counter = (counter + 1) >>> 0
    if (counter === 0) draw()
    return (
      randomPart +
      (HEX_BYTES[counter >>> 24] as string) +
      (HEX_BYTES[(counter >>> 16) & 0xff] as string) +
      (HEX_BYTES[(counter >>> 8) & 0xff] as string) +
      (HEX_BYTES[counter & 0xff] as string)
    )
  }
}
