import type { FastifyBaseLogger } from 'fastify'
import { type Logger, type LoggerOptions, pino } from 'pino'
import t from 'tap'
import { jsonHundredths, jsonString } from '../../src/lib/json.js'
import { redactSecrets } from '../../src/lib/redact.js'
import { RequestLogger, requestLoggerFactory, writeInfoLine } from '../../src/lib/request-logger.js'
import { LogCapture } from '../helper.js'

// A fixed time, so that lines written at different moments can be compared byte for byte.
const FIXED_TIME = () => ',"time":1700000000000'

function rootLogger(options: LoggerOptions = {}) {
  const capture = new LogCapture()
  const logger = pino(
    { level: 'info', timestamp: FIXED_TIME, formatters: { log: redactSecrets }, ...options },
    capture,
  ) as Logger
  // Counts the children built, to show which paths never build one.
  let children = 0
  const child = logger.child
  logger.child = function (this: Logger, ...args: Parameters<Logger['child']>) {
    children += 1
    return child.apply(this, args)
  } as Logger['child']
  return { logger, capture, children: () => children }
}

/** Deterministic pseudo-random numbers in [0, 1), so a failing sample can be reproduced. */
function seededRandom(seed: number): () => number {
  let state = seed
  return () => {
    state = (state * 1103515245 + 12345) % 2 ** 31
    return state / 2 ** 31
  }
}

/** A logger with Fastify's required methods that is not pino; `child` reports its bindings. */
function notPinoLogger(onChild: (bindings: unknown) => void = () => {}) {
  const logger = {
    level: 'info',
    info() {},
    error() {},
    debug() {},
    fatal() {},
    warn() {},
    trace() {},
    silent() {},
    child(bindings: unknown) {
      onChild(bindings)
      return logger
    },
  }
  return logger
}

function requestLogger(logger: Logger, requestId: string): FastifyBaseLogger {
  return requestLoggerFactory.call(null as never, logger, { requestId }, {}, null as never)
}

const FIELDS = { method: 'GET', route: '/items/:id', statusCode: 200, durationMs: 1.25, userId: 'u-1' }
const MEMBERS = `,"method":"GET","route":"/items/:id","statusCode":200,"durationMs":1.25,"userId":"u-1"`

// Ids the app may accept from X-Request-Id, and ones it never would, which must still come out right.
const REQUEST_IDS = [
  '0190c4c4-7a4e-8d82-90bd-fb8bee6ad02c',
  'trace:abc.1-2_3',
  'quote"back\\slash',
  'tab\tnul\u0000',
  'é😀',
]

t.test('the completion line is byte for byte the line pino writes for the same fields', async (t) => {
  for (const requestId of REQUEST_IDS) {
    const { logger, capture, children } = rootLogger()
    const log = requestLogger(logger, requestId)
    t.ok(log instanceof RequestLogger, 'a plain request gets the lazy logger')

    t.equal(writeInfoLine(log, MEMBERS, 'request completed'), true)
    t.equal(children(), 0, 'writing the line builds no child logger')

    logger.child({ requestId }).info(FIELDS, 'request completed')
    t.equal(capture.raw.length, 2)
    t.equal(capture.raw[0], capture.raw[1], `same line for request id ${JSON.stringify(requestId)}`)
    t.equal(capture.lines[0]?.requestId, requestId)
  }
})

t.test('once a handler has logged, the line comes from the child it built', async (t) => {
  const { logger, capture, children } = rootLogger()
  const log = requestLogger(logger, 'r-1')
  log.info({ itemId: 'x' }, 'handling item')
  t.equal(children(), 1)
  writeInfoLine(log, MEMBERS, 'request completed')
  log.info(FIELDS, 'request completed')
  t.equal(children(), 1, 'the child is built once')
  t.same(capture.lines[0], {
    level: 30,
    time: 1700000000000,
    pid: process.pid,
    hostname: capture.lines[0]?.hostname,
    requestId: 'r-1',
    itemId: 'x',
    msg: 'handling item',
  })
  t.equal(capture.raw[1], capture.raw[2])
})

t.test('the lazy logger logs as pino would and builds no child for a disabled level', async (t) => {
  const { logger, capture, children } = rootLogger({ level: 'warn' })
  const log = requestLogger(logger, 'r-2')
  log.info({ a: 1 }, 'dropped')
  log.debug('dropped too')
  t.equal(writeInfoLine(log, MEMBERS, 'request completed'), true, 'a disabled level is handled, not passed back')
  t.equal(children(), 0)
  t.equal(capture.raw.length, 0)
  t.equal(log.level, 'warn')

  log.warn({ password: 'hunter2', n: 2 }, 'kept %s', 'here')
  t.equal(children(), 1)
  t.match(capture.lines[0], { level: 40, requestId: 'r-2', password: '[REDACTED]', n: 2, msg: 'kept here' })

  log.level = 'debug'
  log.debug('now written')
  t.equal(logger.level, 'warn', 'a request changing its level leaves the parent alone')
  t.match(capture.lines[1], { level: 20, requestId: 'r-2', msg: 'now written' })
  t.equal(writeInfoLine(log, MEMBERS, 'request completed'), true)
  t.match(
    capture.lines[2],
    { level: 30, requestId: 'r-2', route: '/items/:id', msg: 'request completed' },
    'the request’s own level decides',
  )

  const nested = log.child({ step: 'inner' })
  nested.warn('from a grandchild')
  t.match(capture.lines[3], { requestId: 'r-2', step: 'inner', msg: 'from a grandchild' })
})

t.test('a route with its own level or serialisers gets pino’s child at once', async (t) => {
  const { logger, capture } = rootLogger()
  const log = requestLoggerFactory.call(null as never, logger, { requestId: 'r-3' }, { level: 'error' }, null as never)
  t.notOk(log instanceof RequestLogger)
  log.warn('below the route level')
  t.equal(capture.raw.length, 0)
  t.equal(writeInfoLine(log, MEMBERS, 'request completed'), true)
  t.equal(capture.raw.length, 0, 'the line respects the child’s level')
})

t.test('lines go back to pino when the logger has features they would miss', async (t) => {
  const setups: Record<string, LoggerOptions> = {
    mixin: { mixin: () => ({ extra: 1 }) },
    'a message prefix': { msgPrefix: '[api] ' },
    'a nested key': { nestedKey: 'payload' },
    'redaction paths': { redact: ['userId'] },
    'a stream write hook': { hooks: { streamWrite: (line: string) => line } },
    'a log method hook': {
      hooks: {
        logMethod(this: Logger, args: Parameters<Logger['info']>, method: Logger['info']) {
          method.apply(this, args)
        },
      },
    },
  }
  for (const [name, options] of Object.entries(setups)) {
    const { logger, capture } = rootLogger(options)
    t.equal(writeInfoLine(requestLogger(logger, 'r-4'), MEMBERS, 'request completed'), false, name)
    t.equal(writeInfoLine(logger, MEMBERS, 'request completed'), false, `${name}, on the root logger`)
    t.equal(capture.raw.length, 0)
  }

  const bindingSerializer = rootLogger({ serializers: { requestId: (id: string) => id.toUpperCase() } })
  const log = requestLogger(bindingSerializer.logger, 'r-5')
  t.equal(writeInfoLine(log, MEMBERS, 'request completed'), true)
  bindingSerializer.logger.child({ requestId: 'r-5' }).info(FIELDS, 'request completed')
  t.equal(bindingSerializer.capture.raw[0], bindingSerializer.capture.raw[1], 'a serialised binding is left to pino')
  t.match(bindingSerializer.capture.lines[0], { requestId: 'R-5' })

  t.equal(writeInfoLine(notPinoLogger() as FastifyBaseLogger, MEMBERS, 'x'), false)
})

t.test('jsonString is JSON.stringify for every string', async (t) => {
  const samples = [
    '',
    'plain',
    '/api/v1/projects/:id',
    'quote " inside',
    'back \\ slash',
    'line\nbreak',
    '\u0000\u001f\u007f',
    'é ü ß 中文',
    '😀 pair',
    'lone \ud800 high',
    'lone \udc00 low',
    '\u2028\u2029',
  ]
  // Random strings over the ranges where escaping changes: control, ASCII, Latin-1, surrogates.
  const random = seededRandom(7)
  const ranges = [0x00, 0x20, 0x22, 0x5c, 0x7f, 0xe9, 0xd800, 0xdbff, 0xdc00, 0xdfff, 0xfffd]
  for (let i = 0; i < 2000; i++) {
    let text = ''
    const length = Math.floor(random() * 12)
    for (let j = 0; j < length; j++) {
      const base = ranges[Math.floor(random() * ranges.length)] as number
      text += String.fromCharCode(base + Math.floor(random() * 3))
    }
    samples.push(text)
  }
  const wrong = samples.filter((text) => jsonString(text) !== JSON.stringify(text))
  t.same(wrong, [])
})

t.test('jsonHundredths is JSON.stringify of the value rounded to hundredths', async (t) => {
  const values = [
    0,
    0.001,
    0.004,
    0.005,
    0.01,
    0.05,
    0.1,
    0.125,
    0.995,
    1,
    1.005,
    1.1,
    9.99,
    10,
    12.345,
    99.999,
    1e6 + 0.07,
  ]
  const random = seededRandom(11)
  for (let i = 0; i < 20_000; i++) values.push(random() * 10 ** (i % 7))
  const wrong = values.filter((value) => jsonHundredths(value) !== JSON.stringify(Math.round(value * 100) / 100))
  t.same(wrong, [])
})

t.test('lines written in the same millisecond share a time, and the time moves on', async (t) => {
  const capture = new LogCapture()
  const logger = pino({ level: 'info' }, capture) as Logger
  const log = requestLogger(logger, 'r-6')
  const before = Date.now()
  for (let i = 0; i < 3; i++) writeInfoLine(log, `,"i":${i}`, 'tick')
  await new Promise((resolve) => setTimeout(resolve, 5))
  writeInfoLine(log, ',"i":3', 'tick')
  const after = Date.now()
  const times = capture.lines.map((line) => line.time as number)
  t.equal(times.length, 4)
  t.ok(times.every((time) => time >= before && time <= after))
  t.ok((times[3] as number) > (times[2] as number), 'a later line has a later time')
  logger.child({ requestId: 'r-6' }).info({ i: 4 }, 'tick')
  t.same(Object.keys(capture.lines[4] ?? {}), Object.keys(capture.lines[0] ?? {}), 'the same fields as pino writes')
})

t.test('request bindings pass through no bindings formatter, as in pino’s children', async (t) => {
  const { logger, capture } = rootLogger({
    formatters: { log: redactSecrets, bindings: (bindings) => ({ ...bindings, tag: 'root' }) },
  })
  t.equal(writeInfoLine(requestLogger(logger, 'r-7'), MEMBERS, 'request completed'), true)
  logger.child({ requestId: 'r-7' }).info(FIELDS, 'request completed')
  t.equal(capture.raw[0], capture.raw[1])
  t.equal(capture.lines[0]?.tag, 'root', 'the root’s own bindings went through it once')
})

t.test('a logger that is not pino keeps its own children', async (t) => {
  const calls: unknown[] = []
  const nullLogger = notPinoLogger((bindings) => calls.push(bindings))
  const log = requestLoggerFactory.call(null as never, nullLogger as never, { requestId: 'r-8' }, {}, null as never)
  t.equal(log, nullLogger)
  t.same(calls, [{ requestId: 'r-8' }])
})
