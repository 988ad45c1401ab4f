import type { FastifyBaseLogger, FastifyServerOptions } from 'fastify'
import { type Bindings, type ChildLoggerOptions, type Logger, pino } from 'pino'
import { jsonString } from './json.js'

// pino publishes these symbols for integrations: the parts its lines are assembled from.
const P = pino.symbols

interface PinoParts {
  [P.chindingsSym]: string
  [P.endSym]: string
  [P.hooksSym]: { logMethod?: unknown; streamWrite?: unknown }
  [P.lsCacheSym]: Record<number, string>
  [P.messageKeySym]: string
  [P.mixinSym]: unknown
  [P.nestedKeySym]: unknown
  [P.serializersSym]: Record<string, unknown>
  [P.streamSym]: { write(line: string): unknown; [P.needsMetadataGsym]?: boolean }
  [P.stringifiersSym]: object
  [P.timeSym]: () => string
}

const parts = (logger: Logger) => logger as unknown as PinoParts

const INFO = pino.levels.values.info as number

// Keys pino's child() leaves out of the bindings or treats as options.
const PINO_OPTION_KEYS = new Set(['level', 'serializers', 'formatters', 'customLevels'])

/**
 * What every info line of one pino logger shares, read once: pino keeps these on the logger under
 * symbols, many of them, and a logger with that many properties answers each lookup slowly.
 */
class LinePlan {
  readonly logger: Logger
  /** False when the logger has features lines assembled here would miss: then pino writes them. */
  readonly plain: boolean
  readonly #levelPrefix: string
  readonly #time: () => string
  // pino's default time member, `,"time":<epoch ms>`, made once per millisecond: a number that
  // large costs about 100 ns to format, and a busy server writes dozens of lines a millisecond.
  readonly #epochTime: boolean
  #timeAt = -1
  #timeMember = ''
  readonly #end: string
  readonly #stream: PinoParts[typeof P.streamSym]
  readonly #messageKey: string
  readonly #messages = new Map<string, string>()
  // `,"key":` per binding key, or null for keys pino's child() alone serialises correctly.
  readonly #bindingPrefixes = new Map<string, string | null>()

  constructor(logger: Logger) {
    const internals = parts(logger)
    this.logger = logger
    this.plain =
      !internals[P.mixinSym] &&
      !internals[P.nestedKeySym] &&
      !internals[P.hooksSym].logMethod &&
      !internals[P.hooksSym].streamWrite &&
      !logger.msgPrefix &&
      // pino's redact option: its paths would apply to the fields
      Reflect.ownKeys(internals[P.stringifiersSym]).length === 0 &&
      internals[P.streamSym][P.needsMetadataGsym] !== true
    this.#levelPrefix = internals[P.lsCacheSym][INFO] as string
    this.#time = internals[P.timeSym]
    this.#epochTime = this.#time === pino.stdTimeFunctions.epochTime
    this.#end = internals[P.endSym]
    this.#stream = internals[P.streamSym]
    this.#messageKey = JSON.stringify(internals[P.messageKeySym])
  }

  /** The logger's own bindings followed by more, serialised as pino's child() would; undefined where it differs. */
  bindingsWith(bindings: Bindings): string | undefined {
    const internals = parts(this.logger)
    // pino's child() passes its bindings through no formatter of the parent's (it resets the
    // bindings formatter for children), so neither is this.
    let serialized = internals[P.chindingsSym]
    for (const key in bindings) {
      if (!Object.hasOwn(bindings, key)) continue
      const value: unknown = bindings[key]
      if (value === undefined) continue
      let prefix = this.#bindingPrefixes.get(key)
      if (prefix === undefined) {
        prefix = PINO_OPTION_KEYS.has(key) || internals[P.serializersSym][key] ? null : `,${JSON.stringify(key)}:`
        this.#bindingPrefixes.set(key, prefix)
      }
      if (prefix === null || typeof value !== 'string') return undefined
      serialized += prefix + jsonString(value)
    }
    return serialized
  }

  #timeNow(): string {
    if (!this.#epochTime) return this.#time.call(this.logger)
    const now = Date.now()
    if (now !== this.#timeAt) {
      this.#timeAt = now
      this.#timeMember = `,"time":${now}`
    }
    return this.#timeMember
  }

  write(bindings: string, members: string, message: string): void {
    let messageMember = this.#messages.get(message)
    if (messageMember === undefined) {
      messageMember = `,${this.#messageKey}:${JSON.stringify(message)}`
      if (this.#messages.size < 100) this.#messages.set(message, messageMember)
    }
    this.#stream.write(this.#levelPrefix + this.#timeNow() + bindings + members + messageMember + this.#end)
  }
}

const plans = new WeakMap<Logger, LinePlan>()

function linePlan(logger: Logger): LinePlan {
  let plan = plans.get(logger)
  if (plan === undefined) {
    plan = new LinePlan(logger)
    plans.set(logger, plan)
  }
  return plan
}

type LevelMethod = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace'

type LogArguments = [object: unknown, message?: string, ...interpolated: unknown[]]

/**
 * A request's logger whose pino child is built on first use. Fastify gives every request a child
 * logger bound to its request id, and building one (a bindings object, pino's option handling, a
 * formatter rebuild, the bindings serialised) measured as about 4% of a `/health` request; most
 * requests log nothing but their completion line, which `writeInfoLine` writes from the bindings
 * without a child.
 */
export class RequestLogger implements FastifyBaseLogger {
  #child: Logger | undefined
  readonly #plan: LinePlan
  readonly #bindings: Bindings

  constructor(plan: LinePlan, bindings: Bindings) {
    this.#plan = plan
    this.#bindings = bindings
  }

  /** The pino child logger this stands for. */
  materialize(): Logger {
    this.#child ??= this.#plan.logger.child(this.#bindings)
    return this.#child
  }

  fatal(...args: LogArguments): void {
    this.#write('fatal', args)
  }

  error(...args: LogArguments): void {
    this.#write('error', args)
  }

  warn(...args: LogArguments): void {
    this.#write('warn', args)
  }

  info(...args: LogArguments): void {
    this.#write('info', args)
  }

  debug(...args: LogArguments): void {
    this.#write('debug', args)
  }

  trace(...args: LogArguments): void {
    this.#write('trace', args)
  }

  silent(): void {}

  #write(level: LevelMethod, args: LogArguments): void {
    // A disabled level costs no child.
    if (this.isLevelEnabled(level)) this.materialize()[level](...(args as [unknown, string?, ...unknown[]]))
  }

  get level(): string {
    return (this.#child ?? this.#plan.logger).level
  }

  set level(level: string) {
    this.materialize().level = level
  }

  child(bindings: Bindings, options?: ChildLoggerOptions): FastifyBaseLogger {
    return this.materialize().child(bindings, options)
  }

  /** Whether a line at this level would be written, without building the child to find out. */
  isLevelEnabled(level: string): boolean {
    return (this.#child ?? this.#plan.logger).isLevelEnabled(level)
  }

  /**
   * `writeInfoLine` for this logger, through the parent's plan: the child is built without options,
   * so it has the parent's features and differs only in bindings and, if one was set, its level.
   */
  writeInfo(members: string, message: string): boolean {
    const plan = this.#plan
    if (!this.isLevelEnabled('info')) return true
    if (!plan.plain) return false
    let bindings = this.#child ? parts(this.#child)[P.chindingsSym] : plan.bindingsWith(this.#bindings)
    bindings ??= parts(this.materialize())[P.chindingsSym]
    plan.write(bindings, members, message)
    return true
  }
}

function hasOwnKeys(object: object): boolean {
  for (const key in object) if (Object.hasOwn(object, key)) return true
  return false
}

/**
 * Fastify's `childLoggerFactory`: a lazy request logger, or the logger's own child when the route
 * asks for its own level or serialisers, which the lazy logger does not apply, or the logger is
 * not pino.
 */
export const requestLoggerFactory: NonNullable<FastifyServerOptions['childLoggerFactory']> = function (
  logger,
  bindings,
  options,
) {
  // Anything but pino (Fastify's null logger when logging is off) keeps its own children.
  if (hasOwnKeys(options) || typeof (logger as Partial<PinoParts>)[P.chindingsSym] !== 'string')
    return logger.child(bindings, options)
  return new RequestLogger(linePlan(logger as Logger), bindings)
}

/**
 * Writes an info line whose fields arrive already serialised as JSON members (`,"key":value`),
 * byte for byte as `logger.info(fields, message)` would, without pino's generic per-key
 * serialisation, which costs a microsecond or more per line. The fields skip the log formatter
 * (secret redaction) and serialisers, so only fields the caller knows hold no secret and have no
 * serialiser belong here. Returns false when the logger has features this does not reproduce
 * (mixins, hooks, prefixes, a nested key, redaction paths, a stream that wants metadata, or not
 * being pino at all): the caller then logs the usual way.
 */
export function writeInfoLine(logger: FastifyBaseLogger, members: string, message: string): boolean {
  if (logger instanceof RequestLogger) return logger.writeInfo(members, message)
  const bindings = (logger as Partial<PinoParts>)[P.chindingsSym]
  if (typeof bindings !== 'string') return false
  const pinoLogger = logger as Logger
  if (!pinoLogger.isLevelEnabled('info')) return true
  const plan = linePlan(pinoLogger)
  if (!plan.plain) return false
  plan.write(bindings, members, message)
  return true
}
