import { pino } from 'pino'

/** Lines are handed to the file writer in blocks of about this many characters. */
const BLOCK_SIZE = 4096

type FileWriter = ReturnType<typeof pino.destination>

// Weak, so that destinations dropped without end() (tests build many apps) can be collected.
const flushedOnExit = new Set<WeakRef<BlockLogDestination>>()
let exitListening = false

function flushAllOnExit(): void {
  for (const entry of flushedOnExit) {
    try {
      entry.deref()?.flushSync()
    } catch {
      // a closed or broken stream has nowhere to write
    }
  }
}

/**
 * Where log lines go: pino's file writer (sonic-boom) in synchronous mode, fed blocks of about
 * 4 KiB rather than single lines, so a busy server makes one write(2) per block instead of one per
 * request. Asynchronous mode was measured no faster: it trades the system call for a thread-pool
 * round trip, and its buffer measures its own UTF-8 length on every append (2-3 µs per line under
 * load). A partial block is written by `flush` (buildApp calls it every second), by `flushSync`
 * (on close) and when the process exits, so a quiet server's lines are at most a second late and
 * only SIGKILL can lose any. Writing synchronously also keeps lines in order and complete when the
 * process exits mid-write.
 */
export class BlockLogDestination {
  #lines: string[] = []
  #size = 0
  readonly #file: FileWriter
  readonly #exitEntry = new WeakRef(this)

  constructor(file: FileWriter) {
    this.#file = file
    for (const entry of flushedOnExit) if (entry.deref() === undefined) flushedOnExit.delete(entry)
    flushedOnExit.add(this.#exitEntry)
    if (!exitListening) {
      exitListening = true
      process.once('exit', flushAllOnExit)
    }
  }

  write(line: string): boolean {
    this.#lines.push(line)
    this.#size += line.length
    if (this.#size >= BLOCK_SIZE) this.#handOver()
    return true
  }

  flush(callback?: (error?: Error) => void): void {
    try {
      this.#handOver()
    } catch (error) {
      if (callback) return callback(error as Error)
      throw error
    }
    callback?.()
  }

  flushSync(): void {
    this.#handOver()
  }

  end(): void {
    flushedOnExit.delete(this.#exitEntry)
    this.#handOver()
    this.#file.end()
  }

  #handOver(): void {
    if (this.#size === 0) return
    const block = this.#lines.length === 1 ? (this.#lines[0] as string) : this.#lines.join('')
    this.#lines = []
    this.#size = 0
    this.#file.write(block)
  }
}

/** Log lines to a file descriptor (default: stdout) or a path, written in blocks. */
export function logDestination(dest: number | string = 1): BlockLogDestination {
  return new BlockLogDestination(pino.destination({ dest, sync: true }))
}
