import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { Agent, request } from 'undici'

/**
 * The floor for streamed chat: bare node:http that, for every POST, opens a streaming completion
 * on the upstream (FAKE_LLM_URL, OpenAI-compatible) with undici and re-emits each token as the
 * app's `data: {"type":"content",...}` event, then `data: {"type":"done"}`. No authentication,
 * no persistence, no limits: only what any relay of model tokens has to do.
 */
const upstream = process.env.FAKE_LLM_URL
if (!upstream) throw new Error('FAKE_LLM_URL is required')
// undici's default: no limit on connections per origin; kept alive between streams.
const agent = new Agent({ keepAliveTimeout: 60_000 })

const server = createServer((req, res) => {
  if (req.method !== 'POST') {
    res.writeHead(404).end()
    return
  }
  const chunks: Buffer[] = []
  req.on('data', (chunk: Buffer) => chunks.push(chunk))
  req.on('end', () => {
    let message: string
    try {
      message = String((JSON.parse(Buffer.concat(chunks).toString('utf8')) as { content?: unknown }).content ?? '')
    } catch {
      res.writeHead(400).end()
      return
    }
    const aborted = new AbortController()
    res.on('close', () => aborted.abort())
    request(`${upstream}/v1/chat/completions`, {
      method: 'POST',
      dispatcher: agent,
      signal: aborted.signal,
      headers: { 'content-type': 'application/json', authorization: 'Bearer bench' },
      body: JSON.stringify({
        model: 'gpt-4o-mini',
        messages: [{ role: 'user', content: message }],
        stream: true,
        stream_options: { include_usage: true },
      }),
    }).then(
      ({ statusCode, body }) => {
        if (statusCode !== 200) {
          body.dump().catch(() => {})
          res.writeHead(502).end()
          return
        }
        res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache' })
        res.flushHeaders()
        let pending = ''
        body.setEncoding('utf8')
        body.on('data', (text: string) => {
          pending += text
          let end: number
          while ((end = pending.indexOf('\n\n')) !== -1) {
            const event = pending.slice(0, end)
            pending = pending.slice(end + 2)
            if (!event.startsWith('data: ')) continue
            const data = event.slice(6)
            if (data === '[DONE]') {
              res.end('data: {"type":"done"}\n\n')
              return
            }
            const content = (JSON.parse(data) as { choices: { delta?: { content?: string } }[] }).choices[0]?.delta
              ?.content
            if (content) res.write(`data: ${JSON.stringify({ type: 'content', content })}\n\n`)
          }
        })
        body.on('error', () => res.destroy())
        body.on('end', () => res.end())
      },
      () => {
        if (res.headersSent) res.destroy()
        else res.writeHead(502).end()
      },
    )
  })
})

// Node's default accept queue (511) unless BENCH_LISTEN_BACKLOG asks for a deeper one, as for the app.
const backlog = Number(process.env.BENCH_LISTEN_BACKLOG ?? 511)
server.listen({ host: '127.0.0.1', port: Number(process.env.PORT ?? 0), backlog }, () => {
  process.stdout.write(`READY ${(server.address() as AddressInfo).port}\n`)
})

process.on('SIGTERM', () => {
  server.closeAllConnections()
  server.close(() => void agent.close().finally(() => process.exit(0)))
})
