import { once } from 'node:events'
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { Webhook } from 'standardwebhooks'

/** One request as the receiver saw it. */
export interface ReceivedDelivery {
  headers: IncomingHttpHeaders
  body: string
  receivedAt: number
  /** How the receiver answered it. */
  status: number
}

export interface ReceiverAnswer {
  status: number
  headers?: Record<string, string>
  body?: string
  /** Answer only after this long (to make the sender time out). */
  delayMs?: number
}

/**
 * A local HTTP server standing in for a customer's webhook receiver: it records every request and
 * answers as `answer` says (200 by default). Closed when the test ends.
 */
export class Receiver {
  readonly received: ReceivedDelivery[] = []
  answer: (delivery: Omit<ReceivedDelivery, 'status'>, index: number) => ReceiverAnswer = () => ({ status: 200 })
  private server: Server | undefined

  static async start(t: { teardown(fn: () => unknown): void }): Promise<Receiver> {
    const receiver = new Receiver()
    const server = createServer((request, response) => {
      const chunks: Buffer[] = []
      request.on('data', (chunk: Buffer) => chunks.push(chunk))
      request.on('end', () => {
        const delivery = {
          headers: request.headers,
          body: Buffer.concat(chunks).toString('utf8'),
          receivedAt: Date.now(),
        }
        const index = receiver.received.length
        const answer = receiver.answer(delivery, index)
        receiver.received.push({ ...delivery, status: answer.status })
        const send = () => {
          if (response.destroyed) return
          response.writeHead(answer.status, answer.headers ?? {})
          response.end(answer.body ?? '')
        }
        if (answer.delayMs) setTimeout(send, answer.delayMs).unref()
        else send()
      })
    })
    server.keepAliveTimeout = 1000
    server.listen(0, '127.0.0.1')
    await once(server, 'listening')
    receiver.server = server
    t.teardown(() => receiver.close())
    return receiver
  }

  get url(): string {
    const { port } = this.server?.address() as AddressInfo
    return `http://127.0.0.1:${port}/hooks`
  }

  /** The `index`th request that arrived; throws when fewer arrived. */
  nth(index: number): ReceivedDelivery {
    const delivery = this.received[index]
    if (!delivery) throw new Error(`only ${this.received.length} deliveries arrived, not ${index + 1}`)
    return delivery
  }

  /** The parsed bodies of what arrived, in arrival order. */
  events<T = { id: string; type: string; timestamp: string; orgId: string; data: Record<string, unknown> }>(): T[] {
    return this.received.map((delivery) => JSON.parse(delivery.body) as T)
  }

  async close(): Promise<void> {
    const server = this.server
    if (!server) return
    this.server = undefined
    server.closeAllConnections()
    await new Promise<void>((resolve) => server.close(() => resolve()))
  }
}

/**
 * Verifies a delivery with the independent Standard Webhooks package, as a receiver would;
 * throws when the signature, id or timestamp do not check out with `secret`.
 */
export function verifyDelivery(delivery: Pick<ReceivedDelivery, 'headers' | 'body'>, secret: string): unknown {
  const headers: Record<string, string> = {}
  for (const name of ['webhook-id', 'webhook-timestamp', 'webhook-signature']) {
    const value = delivery.headers[name]
    if (typeof value === 'string') headers[name] = value
  }
  return new Webhook(secret).verify(delivery.body, headers)
}
