import { type ChildProcess, execFileSync, spawn } from 'node:child_process'
import { chmodSync, chownSync, existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import pg from 'pg'

/**
 * A throwaway PostgreSQL cluster from the machine's own binaries, in a temp dir, on a free port.
 * Used by the test runner (one cluster for the whole suite) and by tests that must stop and
 * restart a server. initdb refuses to run as root, so as root the cluster runs as `postgres`.
 */
export interface Cluster {
  url: string
  port: number
  stop(): Promise<void>
  start(): Promise<void>
  destroy(): Promise<void>
}

export function findPostgresBinDir(): string | null {
  const fromEnv = process.env.POSTGRES_BIN_DIR
  if (fromEnv && existsSync(join(fromEnv, 'initdb'))) return fromEnv
  const root = '/usr/lib/postgresql'
  if (existsSync(root)) {
    const versions = readdirSync(root)
      .filter((v) => /^\d+$/.test(v))
      .sort((a, b) => Number(b) - Number(a))
    for (const version of versions) {
      const dir = join(root, version, 'bin')
      if (existsSync(join(dir, 'initdb')) && existsSync(join(dir, 'postgres'))) return dir
    }
  }
  try {
    const dir = execFileSync('pg_config', ['--bindir'], { encoding: 'utf8' }).trim()
    if (existsSync(join(dir, 'initdb'))) return dir
  } catch {
    // no pg_config on PATH
  }
  return null
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const address = server.address()
      server.close(() => resolve(typeof address === 'object' && address ? address.port : 0))
    })
  })
}

const isRoot = process.getuid?.() === 0

/** As root, the server processes run as the `postgres` user (spawn's uid/gid, no wrapper). */
function postgresIdentity(): { uid?: number; gid?: number } {
  return isRoot ? { uid: uidOf('postgres'), gid: gidOf('postgres') } : {}
}

export async function startCluster(options: { binDir?: string; port?: number } = {}): Promise<Cluster> {
  const binDir = options.binDir ?? findPostgresBinDir()
  if (!binDir) throw new Error('no PostgreSQL server binaries found')
  const dir = mkdtempSync(join(tmpdir(), 'backplane-pg-'))
  const dataDir = join(dir, 'data')
  if (isRoot) {
    chmodSync(dir, 0o700)
    chownSync(dir, uidOf('postgres'), gidOf('postgres'))
  }
  const identity = postgresIdentity()
  execFileSync(
    join(binDir, 'initdb'),
    ['-D', dataDir, '-U', 'postgres', '--auth=trust', '--no-sync', '-E', 'UTF8', '--locale=C'],
    { stdio: 'ignore', ...identity },
  )
  const port = options.port ?? (await freePort())
  let server: ChildProcess | null = null

  const cluster: Cluster = {
    url: `postgres://postgres@127.0.0.1:${port}/postgres`,
    port,
    async start() {
      server = spawn(
        join(binDir, 'postgres'),
        [
          '-D',
          dataDir,
          '-p',
          String(port),
          '-k',
          dir,
          '-c',
          'listen_addresses=127.0.0.1',
          // Test data is disposable; skipping fsync makes the suite several times faster.
          '-c',
          'fsync=off',
          '-c',
          'synchronous_commit=off',
          '-c',
          'full_page_writes=off',
          '-c',
          'max_connections=300',
        ],
        { stdio: 'ignore', ...identity },
      )
      await waitForConnection(cluster.url, 20_000)
    },
    async stop() {
      const running = server
      if (!running || running.exitCode !== null) return
      const exited = new Promise((resolve) => running.once('exit', resolve))
      // SIGINT is PostgreSQL's "fast" shutdown: clients are disconnected, nothing waits.
      running.kill('SIGINT')
      await exited
      server = null
    },
    async destroy() {
      await cluster.stop()
      rmSync(dir, { recursive: true, force: true })
    },
  }
  await cluster.start()
  return cluster
}

async function waitForConnection(url: string, timeoutMs: number) {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const client = new pg.Client({ connectionString: url })
    try {
      await client.connect()
      await client.end()
      return
    } catch (error) {
      await client.end().catch(() => {})
      if (Date.now() > deadline) throw error
      await new Promise((resolve) => setTimeout(resolve, 100))
    }
  }
}

function uidOf(user: string): number {
  return Number(execFileSync('id', ['-u', user], { encoding: 'utf8' }).trim())
}
function gidOf(user: string): number {
  return Number(execFileSync('id', ['-g', user], { encoding: 'utf8' }).trim())
}
