import Stripe from 'stripe'
import { EventShapeError, SignatureError } from './verification.js'
import type { VerifiedEvent } from './webhooks-service.js'

/** Stripe's own default: a signature older than five minutes is refused (replay protection). */
export const STRIPE_TOLERANCE_SECONDS = 300

/**
 * Verifies a Stripe delivery with the SDK: HMAC-SHA256 over `timestamp.rawBody`, any of the `v1`
 * signatures (Stripe sends several while an endpoint secret is being rolled), within the
 * tolerance, compared in constant time. `secrets` holds the current secret and, during our own
 * rotation, the previous one.
 */
export function verifyStripe(rawBody: Buffer, header: string | undefined, secrets: string[]): VerifiedEvent {
  if (!header) throw new SignatureError('the Stripe-Signature header is missing')
  let lastError: unknown
  for (const secret of secrets) {
    try {
      const event: unknown = Stripe.webhooks.constructEvent(rawBody, header, secret, STRIPE_TOLERANCE_SECONDS)
      const { id, type } = (event ?? {}) as { id?: unknown; type?: unknown }
      if (typeof id !== 'string' || id === '' || typeof type !== 'string' || type === '') {
        throw new EventShapeError('a Stripe event needs a string id and type')
      }
      return { provider: 'stripe', providerEventId: id, type, payload: event }
    } catch (error) {
      if (error instanceof EventShapeError) throw error
      lastError = error
    }
  }
  throw new SignatureError(lastError instanceof Error ? lastError.message : 'the Stripe signature does not verify')
}
