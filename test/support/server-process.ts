import { type ChildProcess, spawn } from 'node:child_process'
import { fileURLToPath } from 'node:url'

/** The repository root: where `src/server.ts` and `package.json` live. */
export const ROOT = fileURLToPath(new URL('../..', import.meta.url))

interface Teardown {
  teardown(fn: () => unknown): void
}

export interface NodeProcess {
  child: ChildProcess
  stdout(): string
  stderr(): string
  /** Resolves with the exit code (or the signal name) once the process has exited. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>
  /** Resolves with the first stdout line matching `pattern`; rejects on exit or after `timeoutMs`. */
  waitForStdout(pattern: RegExp, timeoutMs: number): Promise<string>
}

/**
 * Runs `node --import tsx <script>` from the repository root with the current environment plus
 * `env`, collecting its output. The process is killed (SIGKILL) at teardown if still running.
 */
export function runNodeScript(t: Teardown, script: string, env: Record<string, string | undefined>): NodeProcess {
  const child = spawn(process.execPath, ['--import', 'tsx', script], {
    cwd: ROOT,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let out = ''
  let err = ''
  child.stdout?.setEncoding('utf8').on('data', (chunk: string) => {
    out += chunk
  })
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
    err += chunk
  })
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('exit', (code, signal) => resolve({ code, signal }))
  })
  t.teardown(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL')
      await exited
    }
  })

  return {
    child,
    stdout: () => out,
    stderr: () => err,
    exited,
    waitForStdout(pattern, timeoutMs) {
      return new Promise((resolve, reject) => {
        const find = () => out.split('\n').find((line) => pattern.test(line))
        const found = find()
        if (found !== undefined) return resolve(found)
        const onData = () => {
          const line = find()
          if (line !== undefined) finish(() => resolve(line))
        }
        const onExit = () =>
          finish(() => reject(new Error(`process exited before printing ${pattern}; stderr: ${err.slice(-2000)}`)))
        const timer = setTimeout(
          () => finish(() => reject(new Error(`no ${pattern} on stdout within ${timeoutMs} ms; stderr: ${err}`))),
          timeoutMs,
        )
        const finish = (settle: () => void) => {
          clearTimeout(timer)
          child.stdout?.off('data', onData)
          child.off('exit', onExit)
          settle()
        }
        child.stdout?.on('data', onData)
        child.once('exit', onExit)
      })
    },
  }
}

/** Resolves with the exit status, or null if the process is still running after `ms`. */
export function exitWithin(proc: NodeProcess, ms: number) {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<null>((resolve) => {
    timer = setTimeout(() => resolve(null), ms)
  })
  return Promise.race([proc.exited, timeout]).finally(() => clearTimeout(timer))
}

/** Output lines that are not the process's own: npm and Node.js warnings. */
export function isToolNoise(line: string): boolean {
  return (
    /^npm (warn|notice) /i.test(line) ||
    /^\(node:\d+\) (\[\w+\] )?\w*Warning: /.test(line) ||
    /^\(Use `node --trace-/.test(line)
  )
}
