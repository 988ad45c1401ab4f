import type { PGlite } from '@electric-sql/pglite'
import { randomBytes } from 'node:crypto'
import { readFileSync, writeFileSync } from 'node:fs'
import pg from 'pg'
import { type DatabaseHandle, openDatabase, openPglite } from '../../src/db/client.js'
import { runMigrations } from '../../src/db/migrate.js'

export const POSTGRES_TEMPLATE = 'backplane_test_template'

/** Migrates an in-memory PGlite and dumps its data directory, so each test starts from a copy. */
export async function writePgliteTemplate(path: string): Promise<void> {
  const database = await openPglite(undefined)
  await runMigrations(database)
  const dump = await (database.client as PGlite).dumpDataDir('none')
  writeFileSync(path, Buffer.from(await dump.arrayBuffer()))
  await database.close()
}

/** A fresh migrated PGlite: a copy of the runner's template, or migrated from scratch. */
export async function freshPglite(): Promise<DatabaseHandle> {
  const template = process.env.TEST_PGLITE_TEMPLATE
  if (!template) {
    const database = await openPglite(undefined)
    await runMigrations(database)
    return database
  }
  return openPglite(undefined, { pgliteDataDirArchive: new Blob([readFileSync(template)]) })
}

/** Creates (and migrates) the template database that every test database is copied from. */
export async function preparePostgresTemplate(adminUrl: string): Promise<void> {
  const admin = new pg.Client({ connectionString: adminUrl })
  await admin.connect()
  try {
    await admin.query(`DROP DATABASE IF EXISTS ${POSTGRES_TEMPLATE} WITH (FORCE)`)
    await admin.query(`CREATE DATABASE ${POSTGRES_TEMPLATE}`)
  } finally {
    await admin.end()
  }
  const database = await openDatabase({
    DATABASE_URL: withDatabase(adminUrl, POSTGRES_TEMPLATE),
    DATA_DIR: '.',
    DATABASE_POOL_MAX: 2,
  })
  try {
    await runMigrations(database)
  } finally {
    await database.close()
  }
}

export function withDatabase(url: string, database: string): string {
  const parsed = new URL(url)
  parsed.pathname = `/${database}`
  return parsed.toString()
}

/** A new database on the suite's PostgreSQL, copied from the migrated template (or empty). */
export async function createPostgresDatabase(
  adminUrl: string,
  options: { empty?: boolean } = {},
): Promise<{ url: string; drop(): Promise<void> }> {
  const name = `bp_test_${randomBytes(6).toString('hex')}`
  const admin = new pg.Client({ connectionString: adminUrl })
  await admin.connect()
  try {
    const template = options.empty ? 'template0' : POSTGRES_TEMPLATE
    await admin.query(`CREATE DATABASE ${name} TEMPLATE ${template}`)
  } finally {
    await admin.end()
  }
  return {
    url: withDatabase(adminUrl, name),
    async drop() {
      const client = new pg.Client({ connectionString: adminUrl })
      await client.connect()
      try {
        await client.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)
      } finally {
        await client.end()
      }
    },
  }
}
