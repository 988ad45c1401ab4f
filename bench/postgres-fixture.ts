import { randomBytes } from 'node:crypto'
import pg from 'pg'
import { withDatabase } from '../test/support/databases.js'
import { type Cluster, findPostgresBinDir, startCluster } from '../test/support/postgres-cluster.js'
import { type RequestHeaders, startServer } from './lib.js'

/** A PostgreSQL database with one user, their project and 10,000 more projects in their org. */
export interface PostgresFixture {
  databaseUrl: string
  orgId: string
  projectId: string
  /** Authenticates as the fixture's user. */
  headers: RequestHeaders
  close(): Promise<void>
}

export const PROJECT_COUNT = 10_000

/** The authenticated routes are rate limited like every API route; the load must not measure 429s. */
export const UNLIMITED = { RATE_LIMIT_MAX: String(1_000_000_000) }

/** Creates an account on a running app and returns the headers that authenticate as it. */
export async function signUp(baseUrl: string): Promise<RequestHeaders> {
  const response = await fetch(`${baseUrl}/api/v1/auth/signup`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      email: `bench-${randomBytes(4).toString('hex')}@example.com`,
      password: 'a long bench password',
    }),
  })
  if (response.status !== 201) throw new Error(`signup failed with ${response.status}`)
  const { accessToken } = (await response.json()) as { accessToken: string }
  return { authorization: `Bearer ${accessToken}` }
}

async function json(response: Response, expected: number) {
  if (response.status !== expected) throw new Error(`${response.url} answered ${response.status}`)
  return response.json() as Promise<Record<string, unknown>>
}

/**
 * BENCH_POSTGRES_URL (a server where databases may be created), else a throwaway cluster from the
 * machine's PostgreSQL binaries; null when neither exists. The app itself migrates the database
 * and creates the user and the measured project; the other projects are bulk-inserted.
 */
export async function postgresFixture(): Promise<PostgresFixture | null> {
  let cluster: Cluster | null = null
  let adminUrl = process.env.BENCH_POSTGRES_URL
  if (!adminUrl) {
    if (!findPostgresBinDir()) return null
    cluster = await startCluster()
    adminUrl = cluster.url
  }
  const name = `backplane_bench_${randomBytes(4).toString('hex')}`
  const dropDatabase = async () => {
    const cleanup = new pg.Client({ connectionString: adminUrl })
    await cleanup.connect()
    await cleanup.query(`drop database if exists ${name} with (force)`)
    await cleanup.end()
  }
  const close = async () => (cluster ? cluster.destroy() : dropDatabase())
  try {
    return { ...(await populate(adminUrl, name)), close }
  } catch (error) {
    // A half-built fixture must not leave a PostgreSQL server or a database behind.
    await close().catch(() => {})
    throw error
  }
}

async function populate(adminUrl: string, name: string) {
  const admin = new pg.Client({ connectionString: adminUrl })
  await admin.connect()
  await admin.query(`create database ${name}`)
  await admin.end()
  const databaseUrl = withDatabase(adminUrl, name)

  const app = await startServer('app', { BENCH_DATABASE_URL: databaseUrl, ...UNLIMITED })
  let headers: RequestHeaders
  let orgId: string
  let projectId: string
  try {
    headers = await signUp(app.baseUrl)
    const me = await json(await fetch(`${app.baseUrl}/api/v1/auth/me`, { headers }), 200)
    orgId = (me.memberships as { orgId: string; personal: boolean }[]).find((org) => org.personal)?.orgId ?? ''
    // A modest document: a small node graph, about 4 KB of JSON.
    const nodes = Array.from({ length: 40 }, (_, i) => ({
      id: `n${i}`,
      type: 'step',
      label: `Step ${i}`,
      x: i * 10,
      y: 0,
    }))
    const project = await json(
      await fetch(`${app.baseUrl}/api/v1/projects`, {
        method: 'POST',
        headers: { ...headers, 'content-type': 'application/json' },
        body: JSON.stringify({ name: 'Benchmark', description: 'The project every read fetches', data: { nodes } }),
      }),
      201,
    )
    projectId = String(project.id)
  } finally {
    await app.stop()
  }

  const client = new pg.Client({ connectionString: databaseUrl })
  await client.connect()
  try {
    await client.query(
      `insert into projects (id, org_id, name, description, data, created_by, created_at, updated_at)
       select 'prj_' || md5(i::text), $1, 'Project ' || i, '', '{"nodes": []}', $2,
              now() - i * interval '1 second', now() - i * interval '1 second'
       from generate_series(1, $3::int) as i`,
      [
        orgId,
        (await client.query('select created_by from projects where id = $1', [projectId])).rows[0].created_by,
        PROJECT_COUNT,
      ],
    )
    // Settled before measuring: no autovacuum run starts in the middle of a measurement.
    await client.query('vacuum analyze')
  } finally {
    await client.end()
  }

  return { databaseUrl, orgId, projectId, headers }
}
