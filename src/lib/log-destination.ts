import { pino } from 'pino'

/** Lines are handed to the file writer in blocks of at most this many bytes (or one longer line). */
const BLOCK_SIZE = 4096

// In buffer mode sonic-boom takes Buffers, though its types only name strings.
type FileWriter = Omit<ReturnType<typeof pino.destination>, 'write'> & { write(block: Buffer): boolean }

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
 * Where log lines go: pino's file writer (sonic-boom) in synchronous mode, fed blocks of up to
 * 4 KiB rather than single lines, so a busy server makes one write(2) per block instead of one per
 * request. Each line is encoded into the block's buffer as it arrives: once, where sonic-boom's
 * string mode measures the UTF-8 length of a block, then encodes it for the write and again after
 * it (1.5 µs per line under load, as much as assembling the line). Asynchronous mode was measured
 * no faster: it trades the system call for a thread-pool round trip. A partial block is written by
 * `flush` (buildApp calls it every second), by `flushSync` (on close) and when the process exits,
 * so a quiet server's lines are at most a second late and only SIGKILL can lose any. Writing
 * synchronously also keeps lines in order and complete when the process exits mid-write.
 */
export class BlockLogDestination {
  #block = Buffer.allocUnsafeSlow(BLOCK_SIZE)
  #used = 0
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
    // UTF-8 takes at most three bytes per UTF-16 unit: only a long line needs measuring.
    if (line.length * 3 > BLOCK_SIZE - this.#used) {
      const bytes = Buffer.byteLength(line)
      if (bytes > BLOCK_SIZE) {
        this.#handOver()
        this.#file.write(Buffer.from(line))
        return true
      }
      if (bytes > BLOCK_SIZE - this.#used) {
        // The line goes into the next block before the full one is written, so a failed write
        // loses no line that was handed over.
        const full = this.#takeBlock()
        this.#used = this.#block.write(line)
        if (full) this.#file.write(full)
        return true
      }
    }
    this.#used += this.#block.write(line, this.#used)
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
    const block = this.#takeBlock()
    if (block) this.#file.write(block)
  }

  /** The filled part of the current block, if any, replaced by an empty one. */
  #takeBlock(): Buffer | undefined {
    if (this.#used === 0) return undefined
    const block = this.#block.subarray(0, this.#used)
    // A new buffer for each block: the writer may still hold the last one after a failed write.
    this.#block = Buffer.allocUnsafeSlow(BLOCK_SIZE)
    this.#used = 0
    return block
  }
}

/** Log lines to a file descriptor (default: stdout) or a path, written in blocks. */
export function logDestination(dest: number | string = 1): BlockLogDestination {
  return new BlockLogDestination(pino.destination({ dest, sync: true, contentMode: 'buffer' }) as unknown as FileWriter)
}
