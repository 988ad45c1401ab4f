import { once } from 'node:events'
import { createServer as createHttpServer } from 'node:http'
import { createServer as createNetServer, type AddressInfo, type Server } from 'node:net'
import t from 'tap'
import { Agent, request } from 'undici'
import {
  classifyAddress,
  createTargetGuard,
  TargetRefusedError,
  type ResolvedAddress,
  type TargetRefusal,
} from '../../src/lib/ssrf-guard.js'

/**
 * The canary: a listener on loopback (IPv4, and IPv6 on the same port when the host has it) that
 * records every connection. Every refused case below points at its port, so if a check were
 * missing, the connection would land here instead of failing somewhere unobservable.
 */
const canaryConnections: string[] = []
const canaries: Server[] = []
async function listenCanary(host: string, port: number): Promise<Server | undefined> {
  const server = createNetServer((socket) => {
    canaryConnections.push(`${socket.remoteAddress ?? '?'} -> ${host}`)
    socket.destroy()
  })
  try {
    server.listen(port, host)
    await once(server, 'listening')
    return server
  } catch {
    return undefined
  }
}
const canaryV4 = await listenCanary('127.0.0.1', 0)
if (!canaryV4) throw new Error('canary could not listen on loopback')
canaries.push(canaryV4)
const canaryPort = (canaryV4.address() as AddressInfo).port
const canaryV6 = await listenCanary('::1', canaryPort)
if (canaryV6) canaries.push(canaryV6)

/** DNS as an attacker controls it: fixed answers, plus one name that changes its answer after the first lookup. */
const PUBLIC_V4 = '93.184.216.34'
const PUBLIC_V6 = '2606:4700::1'
const records: Record<string, ResolvedAddress[]> = {
  'public.test': [{ address: PUBLIC_V4, family: 4 }],
  'public6.test': [{ address: PUBLIC_V6, family: 6 }],
  'loopback.test': [{ address: '127.0.0.1', family: 4 }],
  'loopback6.test': [{ address: '::1', family: 6 }],
  localhost: [
    { address: '127.0.0.1', family: 4 },
    { address: '::1', family: 6 },
  ],
  'internal.test': [{ address: '10.1.2.3', family: 4 }],
  'metadata.test': [{ address: '169.254.169.254', family: 4 }],
  'cgnat.test': [{ address: '100.100.100.200', family: 4 }],
  'ula.test': [{ address: 'fd00:ec2::254', family: 6 }],
  'mapped.test': [{ address: '::ffff:127.0.0.1', family: 6 }],
  'mixed.test': [
    { address: PUBLIC_V4, family: 4 },
    { address: '10.0.0.1', family: 4 },
  ],
  'mixed6.test': [
    { address: PUBLIC_V6, family: 6 },
    { address: '127.0.0.1', family: 4 },
  ],
  'sloppy.test': [{ address: '127.1', family: 4 }],
  'empty.test': [],
}
const lookups: string[] = []
let rebindLookups = 0
async function testResolve(hostname: string): Promise<ResolvedAddress[]> {
  lookups.push(hostname)
  if (hostname === 'rebind.test') {
    rebindLookups++
    return [{ address: rebindLookups === 1 ? PUBLIC_V4 : '127.0.0.1', family: 4 }]
  }
  const answer = records[hostname]
  if (answer) return answer
  throw new Error(`getaddrinfo ENOTFOUND ${hostname} via resolver 10.0.0.53`)
}

const guard = createTargetGuard({ allowPrivate: false, resolve: testResolve })
const systemGuard = createTargetGuard({ allowPrivate: false })
const devGuard = createTargetGuard({ allowPrivate: true, resolve: testResolve })

t.teardown(async () => {
  await Promise.all([guard.close(), systemGuard.close(), devGuard.close()])
  for (const server of canaries) server.close()
})

/** The refusal code a promise rejected with, or a description of what happened instead. */
async function refusal(promise: Promise<unknown>): Promise<string> {
  try {
    const result = await promise
    const status = (result as { statusCode?: number } | undefined)?.statusCode
    return status === undefined ? 'accepted' : `answered ${status}`
  } catch (error) {
    if (error instanceof TargetRefusedError) return error.code
    return `failed otherwise: ${error instanceof Error ? error.message : String(error)}`
  }
}

interface RefusedCase {
  name: string
  url: string
  code: TargetRefusal
  /** Also sent through the bare dispatcher, proving it refuses on its own (false: URL-level rule only). */
  dispatcher?: boolean
  system?: boolean
}

const NOT_PUBLIC = 'TARGET_NOT_PUBLIC'
const matrix: RefusedCase[] = [
  // IPv4 loopback in every spelling the URL parser canonicalises
  { name: 'loopback 127.0.0.1', url: `https://127.0.0.1:${canaryPort}/`, code: NOT_PUBLIC },
  { name: 'loopback as decimal 2130706433', url: `https://2130706433:${canaryPort}/`, code: NOT_PUBLIC },
  { name: 'loopback as hex 0x7f000001', url: `https://0x7f000001:${canaryPort}/`, code: NOT_PUBLIC },
  { name: 'loopback as octal 0177.0.0.1', url: `https://0177.0.0.1:${canaryPort}/`, code: NOT_PUBLIC },
  { name: 'loopback as whole octal 017700000001', url: `https://017700000001:${canaryPort}/`, code: NOT_PUBLIC },
  { name: 'loopback short form 127.1', url: `https://127.1:${canaryPort}/`, code: NOT_PUBLIC },
  { name: 'loopback short hex 0x7f.1', url: `https://0x7f.1:${canaryPort}/`, code: NOT_PUBLIC },
  { name: 'loopback hex first octet 0x7f.0.0.1', url: `https://0x7f.0.0.1:${canaryPort}/`, code: NOT_PUBLIC },
  { name: 'loopback zero-padded 127.000.000.001', url: `https://127.000.000.001:${canaryPort}/`, code: NOT_PUBLIC },
  { name: 'loopback percent-encoded %31%32%37.0.0.1', url: `https://%31%32%37.0.0.1:${canaryPort}/`, code: NOT_PUBLIC },
  { name: 'loopback with trailing dot 127.0.0.1.', url: `https://127.0.0.1.:${canaryPort}/`, code: NOT_PUBLIC },
  {
    name: 'loopback with ideographic full stops',
    url: `https://127\u30020\u30020\u30021:${canaryPort}/`,
    code: NOT_PUBLIC,
  },
  { name: 'loopback elsewhere in 127/8 (127.10.20.30)', url: `https://127.10.20.30:${canaryPort}/`, code: NOT_PUBLIC },
  // unspecified, private, metadata, CGNAT, multicast, broadcast, reserved
  { name: 'unspecified 0.0.0.0', url: `https://0.0.0.0:${canaryPort}/`, code: NOT_PUBLIC },
  { name: 'unspecified as decimal 0', url: `https://0:${canaryPort}/`, code: NOT_PUBLIC },
  { name: 'private 10.0.0.1', url: `https://10.0.0.1:${canaryPort}/`, code: NOT_PUBLIC },
  { name: 'private 172.16.0.1', url: `https://172.16.0.1:${canaryPort}/`, code: NOT_PUBLIC },
  { name: 'private 172.31.255.254', url: `https://172.31.255.254:${canaryPort}/`, code: NOT_PUBLIC },
  { name: 'private 192.168.1.1', url: `https://192.168.1.1:${canaryPort}/`, code: NOT_PUBLIC },
  { name: 'metadata 169.254.169.254', url: `https://169.254.169.254:${canaryPort}/latest/meta-data`, code: NOT_PUBLIC },
  { name: 'metadata as decimal 2852039166', url: `https://2852039166:${canaryPort}/`, code: NOT_PUBLIC },
  { name: 'metadata as hex 0xa9fea9fe', url: `https://0xa9fea9fe:${canaryPort}/`, code: NOT_PUBLIC },
  { name: 'metadata on the default port', url: 'https://169.254.169.254/latest/meta-data', code: NOT_PUBLIC },
  { name: 'CGNAT 100.64.0.1', url: `https://100.64.0.1:${canaryPort}/`, code: NOT_PUBLIC },
  { name: 'multicast 224.0.0.1', url: `https://224.0.0.1:${canaryPort}/`, code: NOT_PUBLIC },
  { name: 'broadcast 255.255.255.255', url: `https://255.255.255.255:${canaryPort}/`, code: NOT_PUBLIC },
  { name: 'reserved 240.0.0.1', url: `https://240.0.0.1:${canaryPort}/`, code: NOT_PUBLIC },
  { name: 'documentation 192.0.2.1', url: `https://192.0.2.1:${canaryPort}/`, code: NOT_PUBLIC },
  { name: 'benchmarking 198.18.0.1', url: `https://198.18.0.1:${canaryPort}/`, code: NOT_PUBLIC },
  { name: 'IETF protocol assignments 192.0.0.8', url: `https://192.0.0.8:${canaryPort}/`, code: NOT_PUBLIC },
  // IPv6 and IPv4 embedded in IPv6
  { name: 'IPv6 loopback [::1]', url: `https://[::1]:${canaryPort}/`, code: NOT_PUBLIC },
  { name: 'IPv6 unspecified [::]', url: `https://[::]:${canaryPort}/`, code: NOT_PUBLIC },
  {
    name: 'IPv4-mapped loopback [::ffff:127.0.0.1]',
    url: `https://[::ffff:127.0.0.1]:${canaryPort}/`,
    code: NOT_PUBLIC,
  },
  {
    name: 'IPv4-mapped loopback in hex [::ffff:7f00:1]',
    url: `https://[::ffff:7f00:1]:${canaryPort}/`,
    code: NOT_PUBLIC,
  },
  {
    name: 'IPv4-mapped loopback long form',
    url: `https://[0:0:0:0:0:ffff:127.0.0.1]:${canaryPort}/`,
    code: NOT_PUBLIC,
  },
  {
    name: 'IPv4-mapped metadata [::ffff:a9fe:a9fe]',
    url: `https://[::ffff:a9fe:a9fe]:${canaryPort}/`,
    code: NOT_PUBLIC,
  },
  { name: 'IPv4-compatible loopback [::127.0.0.1]', url: `https://[::127.0.0.1]:${canaryPort}/`, code: NOT_PUBLIC },
  {
    name: 'IPv4-translated loopback [::ffff:0:7f00:1]',
    url: `https://[::ffff:0:7f00:1]:${canaryPort}/`,
    code: NOT_PUBLIC,
  },
  { name: 'unique local [fc00::1]', url: `https://[fc00::1]:${canaryPort}/`, code: NOT_PUBLIC },
  { name: 'unique local [fd12:3456::1]', url: `https://[fd12:3456::1]:${canaryPort}/`, code: NOT_PUBLIC },
  { name: 'link-local [fe80::1]', url: `https://[fe80::1]:${canaryPort}/`, code: NOT_PUBLIC },
  { name: 'site-local (deprecated) [fec0::1]', url: `https://[fec0::1]:${canaryPort}/`, code: NOT_PUBLIC },
  { name: 'multicast [ff02::1]', url: `https://[ff02::1]:${canaryPort}/`, code: NOT_PUBLIC },
  { name: 'NAT64 of loopback [64:ff9b::7f00:1]', url: `https://[64:ff9b::7f00:1]:${canaryPort}/`, code: NOT_PUBLIC },
  {
    name: 'NAT64 of metadata [64:ff9b::a9fe:a9fe]',
    url: `https://[64:ff9b::a9fe:a9fe]:${canaryPort}/`,
    code: NOT_PUBLIC,
  },
  { name: '6to4 of loopback [2002:7f00:1::]', url: `https://[2002:7f00:1::]:${canaryPort}/`, code: NOT_PUBLIC },
  {
    name: 'Teredo [2001:0:4136:e378:8000:63bf:3fff:fdd2]',
    url: `https://[2001:0:4136:e378:8000:63bf:3fff:fdd2]:${canaryPort}/`,
    code: NOT_PUBLIC,
  },
  { name: 'documentation [2001:db8::1]', url: `https://[2001:db8::1]:${canaryPort}/`, code: NOT_PUBLIC },
  { name: 'discard-only [100::1]', url: `https://[100::1]:${canaryPort}/`, code: NOT_PUBLIC },
  // names that resolve to addresses we refuse
  { name: 'localhost (system resolver)', url: `https://localhost:${canaryPort}/`, code: NOT_PUBLIC, system: true },
  { name: 'localhost (test resolver, v4 and v6)', url: `https://localhost:${canaryPort}/`, code: NOT_PUBLIC },
  { name: 'name resolving to 127.0.0.1', url: `https://loopback.test:${canaryPort}/`, code: NOT_PUBLIC },
  { name: 'name resolving to ::1', url: `https://loopback6.test:${canaryPort}/`, code: NOT_PUBLIC },
  { name: 'name resolving to ::ffff:127.0.0.1', url: `https://mapped.test:${canaryPort}/`, code: NOT_PUBLIC },
  { name: 'name resolving to 10.1.2.3', url: `https://internal.test:${canaryPort}/`, code: NOT_PUBLIC },
  { name: 'name resolving to 169.254.169.254', url: `https://metadata.test:${canaryPort}/`, code: NOT_PUBLIC },
  { name: 'name resolving to CGNAT 100.100.100.200', url: `https://cgnat.test:${canaryPort}/`, code: NOT_PUBLIC },
  { name: 'name resolving to unique local fd00:ec2::254', url: `https://ula.test:${canaryPort}/`, code: NOT_PUBLIC },
  { name: 'name resolving to one public and one private', url: `https://mixed.test:${canaryPort}/`, code: NOT_PUBLIC },
  { name: 'name resolving to public v6 and loopback v4', url: `https://mixed6.test:${canaryPort}/`, code: NOT_PUBLIC },
  { name: 'name resolving to a non-canonical 127.1', url: `https://sloppy.test:${canaryPort}/`, code: NOT_PUBLIC },
  { name: 'name that does not resolve', url: `https://nowhere.test:${canaryPort}/`, code: 'TARGET_UNRESOLVABLE' },
  { name: 'name resolving to nothing', url: `https://empty.test:${canaryPort}/`, code: 'TARGET_UNRESOLVABLE' },
  // URL rules
  { name: 'http to a public address', url: `http://${PUBLIC_V4}/`, code: 'TARGET_INSECURE_SCHEME' },
  { name: 'http to loopback', url: `http://127.0.0.1:${canaryPort}/`, code: 'TARGET_INSECURE_SCHEME' },
  { name: 'user and password', url: `https://user:pass@${PUBLIC_V4}/`, code: 'TARGET_CREDENTIALS', dispatcher: false },
  { name: 'user name only', url: `https://user@${PUBLIC_V4}/`, code: 'TARGET_CREDENTIALS', dispatcher: false },
  { name: 'password only', url: `https://:pass@${PUBLIC_V4}/`, code: 'TARGET_CREDENTIALS', dispatcher: false },
  { name: 'ftp scheme', url: `ftp://127.0.0.1:${canaryPort}/`, code: 'TARGET_INVALID_URL', dispatcher: false },
  { name: 'file scheme', url: 'file:///etc/passwd', code: 'TARGET_INVALID_URL', dispatcher: false },
  { name: 'gopher scheme', url: `gopher://127.0.0.1:${canaryPort}/_`, code: 'TARGET_INVALID_URL', dispatcher: false },
  { name: 'not a URL', url: 'not a url', code: 'TARGET_INVALID_URL', dispatcher: false },
  { name: 'https without a host', url: 'https://', code: 'TARGET_INVALID_URL', dispatcher: false },
]

t.test(`SSRF matrix: ${matrix.length} targets refused at registration and at connect time`, async (t) => {
  for (const target of matrix) {
    const subject = target.system ? systemGuard : guard
    t.test(target.name, async (t) => {
      t.equal(await refusal(subject.checkUrl(target.url)), target.code, 'refused when registered')
      t.equal(await refusal(subject.request(target.url)), target.code, 'refused by the guarded request')
      if (target.dispatcher !== false) {
        const bare = await refusal(request(target.url, { dispatcher: subject.dispatcher }))
        t.match(bare, /^TARGET_/, `refused by the dispatcher alone (${bare})`)
      }
    })
  }
})

t.test('every IPv4 spelling of loopback canonicalises to 127.0.0.1 before anything is checked', async (t) => {
  for (const host of ['2130706433', '0x7f000001', '0177.0.0.1', '017700000001', '127.1', '0x7f.1', '0x7f.0.0.1']) {
    t.equal(new URL(`https://${host}/`).hostname, '127.0.0.1', host)
  }
  t.equal(new URL('https://2852039166/').hostname, '169.254.169.254', '2852039166')
  t.equal(new URL('https://[::ffff:127.0.0.1]/').hostname, '[::ffff:7f00:1]', '[::ffff:127.0.0.1]')
})

t.test('DNS rebinding: public when registered, loopback when connecting', async (t) => {
  rebindLookups = 0
  const url = `https://rebind.test:${canaryPort}/`
  t.equal((await guard.checkUrl(url)).hostname, 'rebind.test', 'registration sees a public address and accepts')
  t.equal(await refusal(guard.request(url)), NOT_PUBLIC, 'the connection resolves again and refuses')
  t.equal(rebindLookups, 2, 'the connect-time check did its own lookup')
})

t.test('refusals do not leak resolver details', async (t) => {
  const error = await guard.checkUrl(`https://nowhere.test/`).catch((error: unknown) => error)
  t.ok(error instanceof TargetRefusedError)
  t.equal((error as Error).message, 'host name could not be resolved')
  const named = await guard.checkUrl(`https://internal.test/`).catch((error: unknown) => error)
  t.equal((named as Error).message, 'host name does not resolve to a public address', 'the range is not named')
  t.notMatch((named as Error).message, /10\.1\.2\.3|private/)
})

t.test('public targets pass registration', async (t) => {
  for (const url of [
    `https://${PUBLIC_V4}/hooks`,
    `https://[${PUBLIC_V6}]/hooks`,
    `https://[::ffff:${PUBLIC_V4}]/hooks`,
    'https://public.test/hooks',
    'https://public6.test:8443/hooks',
  ]) {
    t.equal((await guard.checkUrl(url)).href, new URL(url).href, url)
  }
})

t.test('classifyAddress', async (t) => {
  const cases: [string, boolean][] = [
    [PUBLIC_V4, true],
    ['8.8.8.8', true],
    [PUBLIC_V6, true],
    [`::ffff:${PUBLIC_V4}`, true],
    ['127.0.0.1', false],
    ['169.254.169.254', false],
    ['::ffff:169.254.169.254', false],
    ['::7f00:1', false],
    ['fe80::1%eth0', false],
    ['2606:4700::1%eth0', false],
    ['127.1', false],
    ['0x7f000001', false],
    ['2130706433', false],
    ['', false],
    ['example.com', false],
  ]
  for (const [address, allowed] of cases) {
    t.equal(classifyAddress(address).allowed, allowed, `${JSON.stringify(address)} ${allowed ? 'allowed' : 'refused'}`)
  }
  t.same(classifyAddress('10.0.0.1'), { allowed: false, reason: 'private' })
  t.same(classifyAddress('::ffff:7f00:1'), { allowed: false, reason: 'loopback' })
})

t.test('redirects are returned, never followed', async (t) => {
  const received: string[] = []
  const receiver = createHttpServer((req, res) => {
    received.push(req.url ?? '')
    if (req.url === '/to-metadata') res.writeHead(302, { location: 'http://169.254.169.254/latest/meta-data' })
    else if (req.url === '/to-canary') res.writeHead(307, { location: `http://127.0.0.1:${canaryPort}/` })
    else res.writeHead(200, { 'content-type': 'text/plain' })
    res.end(req.url === '/hello' ? 'hello' : '')
  })
  receiver.listen(0, '127.0.0.1')
  await once(receiver, 'listening')
  t.teardown(() => receiver.close())
  const port = (receiver.address() as AddressInfo).port

  const toMetadata = await devGuard.request(`http://127.0.0.1:${port}/to-metadata`)
  await toMetadata.body.dump()
  t.equal(toMetadata.statusCode, 302, 'the 302 comes back to the caller')
  t.equal(toMetadata.headers.location, 'http://169.254.169.254/latest/meta-data')

  const toCanary = await devGuard.request(`http://127.0.0.1:${port}/to-canary`, { method: 'POST', body: '{}' })
  await toCanary.body.dump()
  t.equal(toCanary.statusCode, 307)
  t.same(received, ['/to-metadata', '/to-canary'], 'one request each, no follow-up')
  t.equal(await refusal(guard.checkUrl(toMetadata.headers.location as string)), 'TARGET_INSECURE_SCHEME')
  t.equal(await refusal(guard.checkUrl(`https://169.254.169.254/latest/meta-data`)), NOT_PUBLIC)

  t.test('allowPrivate reaches loopback receivers, through the injected resolver too', async (t) => {
    const direct = await devGuard.request(`http://127.0.0.1:${port}/hello`)
    t.equal(direct.statusCode, 200)
    t.equal(await direct.body.text(), 'hello')
    lookups.length = 0
    const named = await devGuard.request(`http://loopback.test:${port}/hello`)
    t.equal(await named.body.text(), 'hello', 'a name the system resolver does not know')
    t.same(lookups, ['loopback.test'], 'resolved once, by the guard, at connect time')
    t.equal((await devGuard.checkUrl(`http://localhost:${port}/`)).port, String(port), 'checkUrl allows http')
    t.equal(await refusal(devGuard.checkUrl(`http://user:pw@127.0.0.1:${port}/`)), 'TARGET_CREDENTIALS')
    t.equal(await refusal(devGuard.checkUrl(`ftp://127.0.0.1:${port}/`)), 'TARGET_INVALID_URL')
  })
})

t.test('the canary received no connection from any refused target', async (t) => {
  t.same(canaryConnections, [], 'zero connections')
})

t.test('control: without the guard the same target does reach the canary', async (t) => {
  const before = canaryConnections.length
  const plain = new Agent()
  t.teardown(() => plain.close())
  await request(`https://2130706433:${canaryPort}/`, { dispatcher: plain }).catch(() => undefined)
  t.equal(canaryConnections.length, before + 1, 'the canary detects a connection when one is made')
})
