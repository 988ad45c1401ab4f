import { lookup as dnsLookup } from 'node:dns/promises'
import { isIP, type LookupFunction } from 'node:net'
import ipaddr from 'ipaddr.js'
import { Agent, buildConnector, request, type Dispatcher } from 'undici'

/**
 * Guard for outbound HTTP calls to URLs a customer chose (webhook endpoints first).
 *
 * The threat is server-side request forgery: a customer registers a URL that points back into our
 * network (loopback, the cloud metadata service at 169.254.169.254, private ranges) and uses our
 * server to reach it. Three gaps have to be closed, and each one is closed in a different place:
 *
 * 1. Spelling. `http://2130706433/`, `http://0x7f.1/` and `http://[::ffff:7f00:1]/` are all
 *    loopback. We never interpret host strings ourselves: the WHATWG URL parser canonicalises every
 *    IPv4 spelling to dotted decimal, and only canonical literals (as `net.isIP` accepts them) are
 *    classified, by ipaddr.js rather than hand-written prefix lists.
 * 2. Time of check against time of use. A name can resolve to a public address when the endpoint is
 *    registered and to 127.0.0.1 a second later (DNS rebinding). So the check at registration is
 *    only there to give the customer an early error; the check that counts runs inside the
 *    connection: the dispatcher resolves the name itself, checks every address, and hands only
 *    those checked addresses to the socket. Node's `net.connect` skips `lookup` entirely for IP
 *    literals, so literals are checked in a connector wrapped around undici's own.
 * 3. Redirects. A public endpoint can answer `302 Location: http://169.254.169.254/`. undici's
 *    `request` never follows redirects (it has no option to), so a 3xx comes back to the caller as
 *    a response. Whoever adds `fetch` later must pass `redirect: 'manual'` as well as this
 *    dispatcher, because `fetch` follows redirects by default.
 *
 * `allowPrivate` (WEBHOOK_ALLOW_PRIVATE_TARGETS, refused by config in production) turns off the
 * address check and allows plain http so tests and local development can reach loopback receivers.
 * Credentials in URLs and non-HTTP schemes stay refused either way.
 */

export type AddressVerdict = { allowed: true } | { allowed: false; reason: string }

/**
 * 2000::/3 is the only IPv6 block IANA allocates for global unicast. ipaddr.js calls everything it
 * has no name for "unicast", which includes the deprecated IPv4-compatible block ::/96, so
 * `[::127.0.0.1]` would otherwise pass.
 */
const GLOBAL_UNICAST_V6 = ipaddr.IPv6.parseCIDR('2000::/3')

/**
 * Allows only ordinary public unicast addresses. Refusing every named range, rather than listing
 * the dangerous ones, means a range ipaddr.js learns about later is refused by default. This also
 * refuses the translation ranges (NAT64 64:ff9b::/96, 6to4 2002::/16, Teredo 2001::/32) outright,
 * since each can embed a private IPv4 address that a gateway on the path would unwrap.
 */
export function classifyAddress(address: string): AddressVerdict {
  // ipaddr.js also accepts '0x7f.1' and '0177.0.0.1'; an address in such a form did not come from a
  // resolver or the URL parser, so it is refused rather than interpreted a second way.
  if (isIP(address) === 0) return { allowed: false, reason: 'not a canonical IP address' }
  let parsed: ipaddr.IPv4 | ipaddr.IPv6
  try {
    // `process` turns ::ffff:a.b.c.d into a.b.c.d, so mapped addresses meet the IPv4 rules.
    parsed = ipaddr.process(address)
  } catch {
    return { allowed: false, reason: 'not a canonical IP address' }
  }
  const range = parsed.range()
  if (range !== 'unicast') return { allowed: false, reason: range }
  if (parsed instanceof ipaddr.IPv6) {
    if (parsed.zoneId) return { allowed: false, reason: 'scoped' }
    if (!parsed.match(GLOBAL_UNICAST_V6)) return { allowed: false, reason: 'not global unicast' }
  }
  return { allowed: true }
}

export type TargetRefusal =
  'TARGET_INVALID_URL' | 'TARGET_INSECURE_SCHEME' | 'TARGET_CREDENTIALS' | 'TARGET_NOT_PUBLIC' | 'TARGET_UNRESOLVABLE'

/**
 * The message is safe to show the customer who supplied the URL. It never carries resolver errors,
 * and for names it does not say which private range they resolved to: that would turn endpoint
 * registration into a probe of our internal DNS.
 */
export class TargetRefusedError extends Error {
  constructor(
    readonly code: TargetRefusal,
    message: string,
  ) {
    super(message)
    this.name = 'TargetRefusedError'
  }
}

export interface ResolvedAddress {
  address: string
  family: number
}

export type Resolve = (hostname: string) => Promise<ResolvedAddress[]>

export interface TargetGuardOptions {
  allowPrivate: boolean
  /** Name resolution for both checks; swapped in tests to simulate hostile DNS. */
  resolve?: Resolve
  /** Covers name resolution, TCP and TLS together. */
  connectTimeoutMs?: number
  headersTimeoutMs?: number
  bodyTimeoutMs?: number
}

export type GuardedRequestOptions = Omit<Dispatcher.RequestOptions<null>, 'origin' | 'path' | 'method'> &
  Partial<Pick<Dispatcher.RequestOptions, 'method'>>

export interface TargetGuard {
  /** For registration: refuses a URL that could not be delivered to. Returns the parsed URL. */
  checkUrl(url: string): Promise<URL>
  /** One request through `dispatcher`; a 3xx is returned, never followed. */
  request(url: string | URL, options?: GuardedRequestOptions): Promise<Dispatcher.ResponseData>
  /** Checks every address at connect time and connects only to checked addresses. */
  readonly dispatcher: Dispatcher
  close(): Promise<void>
}

const defaultResolve: Resolve = (hostname) => dnsLookup(hostname, { all: true, order: 'verbatim' })

function parseTarget(input: string, allowPrivate: boolean): URL {
  let url: URL
  try {
    url = new URL(input)
  } catch {
    throw new TargetRefusedError('TARGET_INVALID_URL', 'URL is not valid')
  }
  if (url.protocol === 'http:') {
    if (!allowPrivate) throw new TargetRefusedError('TARGET_INSECURE_SCHEME', 'URL must use https')
  } else if (url.protocol !== 'https:') {
    throw new TargetRefusedError('TARGET_INVALID_URL', 'URL must use https')
  }
  // Credentials would be sent to the target on every call and stored in our logs and database.
  if (url.username !== '' || url.password !== '') {
    throw new TargetRefusedError('TARGET_CREDENTIALS', 'URL must not contain a user name or password')
  }
  if (hostOf(url) === '') throw new TargetRefusedError('TARGET_INVALID_URL', 'URL has no host')
  return url
}

function hostOf(url: URL): string {
  const { hostname } = url
  return hostname.startsWith('[') && hostname.endsWith(']') ? hostname.slice(1, -1) : hostname
}

function refuseLiteral(address: string, allowPrivate: boolean): TargetRefusedError | undefined {
  if (allowPrivate) return undefined
  const verdict = classifyAddress(address)
  if (verdict.allowed) return undefined
  return new TargetRefusedError('TARGET_NOT_PUBLIC', `${address} is not a public address (${verdict.reason})`)
}

function unresolvable(): TargetRefusedError {
  return new TargetRefusedError('TARGET_UNRESOLVABLE', 'host name could not be resolved')
}

function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(unresolvable()), ms)
  })
  return Promise.race([promise, expired]).finally(() => clearTimeout(timer))
}

export function createTargetGuard(options: TargetGuardOptions): TargetGuard {
  const { allowPrivate, resolve = defaultResolve } = options
  const connectTimeoutMs = options.connectTimeoutMs ?? 10_000
  const headersTimeoutMs = options.headersTimeoutMs ?? 15_000
  const bodyTimeoutMs = options.bodyTimeoutMs ?? 15_000

  /**
   * Resolves a name and refuses it if ANY address is not public: which address a client ends up
   * using is not ours to predict (address ordering, happy eyeballs, a retry), so one bad answer
   * makes the whole name unusable.
   */
  async function resolveChecked(hostname: string): Promise<ResolvedAddress[]> {
    const family = isIP(hostname)
    if (family !== 0) {
      const refusal = refuseLiteral(hostname, allowPrivate)
      if (refusal) throw refusal
      return [{ address: hostname, family }]
    }
    let addresses: ResolvedAddress[]
    try {
      addresses = await withTimeout(resolve(hostname), connectTimeoutMs)
    } catch {
      throw unresolvable()
    }
    if (addresses.length === 0) throw unresolvable()
    if (!allowPrivate && addresses.some(({ address }) => !classifyAddress(address).allowed)) {
      throw new TargetRefusedError('TARGET_NOT_PUBLIC', 'host name does not resolve to a public address')
    }
    return addresses
  }

  // Called by net.connect for names only; what it returns is exactly what the socket connects to.
  const lookup: LookupFunction = (hostname, lookupOptions, callback) => {
    const wanted = lookupOptions.family === 'IPv4' ? 4 : lookupOptions.family === 'IPv6' ? 6 : lookupOptions.family
    resolveChecked(hostname).then(
      (addresses) => {
        const usable = wanted === 4 || wanted === 6 ? addresses.filter((entry) => entry.family === wanted) : addresses
        const first = usable[0]
        if (first === undefined) callback(unresolvable(), '')
        else if (lookupOptions.all) callback(null, usable)
        else callback(null, first.address, first.family)
      },
      (error: Error) => callback(error, ''),
    )
  }

  const baseConnect = buildConnector({ timeout: connectTimeoutMs, lookup })
  const connect: buildConnector.connector = (connectOptions, callback) => {
    let refusal: TargetRefusedError | undefined
    if (connectOptions.protocol !== 'https:' && !(allowPrivate && connectOptions.protocol === 'http:')) {
      refusal = new TargetRefusedError('TARGET_INSECURE_SCHEME', 'URL must use https')
    } else if (connectOptions.hostname === '') {
      // net.connect would quietly fall back to localhost.
      refusal = new TargetRefusedError('TARGET_INVALID_URL', 'URL has no host')
    } else if (isIP(connectOptions.hostname) !== 0) {
      // undici hands IPv6 literals over without brackets, which is what isIP and net expect.
      refusal = refuseLiteral(connectOptions.hostname, allowPrivate)
    }
    if (refusal) process.nextTick(callback, refusal, null)
    else baseConnect(connectOptions, callback)
  }

  const agent = new Agent({ connect, headersTimeout: headersTimeoutMs, bodyTimeout: bodyTimeoutMs })

  return {
    dispatcher: agent,
    async checkUrl(input) {
      const url = parseTarget(input, allowPrivate)
      await resolveChecked(hostOf(url))
      return url
    },
    async request(input, requestOptions) {
      // The dispatcher does the address check; the URL rules (credentials, scheme) live here.
      const url = parseTarget(String(input), allowPrivate)
      return request(url, { ...requestOptions, dispatcher: agent })
    },
    close: () => agent.close(),
  }
}
