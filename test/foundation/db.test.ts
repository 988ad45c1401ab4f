import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { eq, sql } from 'drizzle-orm'
import t from 'tap'
import { buildApp } from '../../src/app.js'
import { type Database, type DatabaseHandle, openDatabase } from '../../src/db/client.js'
import { MIGRATIONS_FOLDER, pendingMigrations, runMigrations } from '../../src/db/migrate.js'
import { systemSettings } from '../../src/db/schema/index.js'
import { buildTestApp, engine, postgresForTest, testConfig } from '../helper.js'
import { createPostgresDatabase } from '../support/databases.js'
import { exitWithin, runNodeScript } from '../support/server-process.js'

const journal = JSON.parse(readFileSync(join(MIGRATIONS_FOLDER, 'meta', '_journal.json'), 'utf8')) as {
  entries: { tag: string }[]
}
const migrationCount = journal.entries.length

type Executable = Pick<Database, 'execute'>

async function rows<T>(db: Executable, query: ReturnType<typeof sql>): Promise<T[]> {
  const result = (await db.execute(query)) as unknown as { rows: T[] }
  return result.rows
}

async function tableExists(db: Executable, name: string): Promise<boolean> {
  const [row] = await rows<{ found: string | null }>(db, sql`select to_regclass(${name})::text as found`)
  return row?.found != null
}

async function appliedMigrations(db: Executable): Promise<number> {
  const [row] = await rows<{ count: number | string }>(
    db,
    sql`select count(*)::int as count from drizzle.__drizzle_migrations`,
  )
  return Number(row?.count)
}

t.test(`database through the app (${engine})`, async (t) => {
  t.ok(migrationCount > 0, 'the journal lists migrations')
  const app = await buildTestApp(t)
  t.equal(app.database.engine, engine, `the app runs on ${engine}`)

  t.test('migrations are applied', async (t) => {
    t.ok(await tableExists(app.db, 'public.system_settings'), 'system_settings exists')
    t.equal(await appliedMigrations(app.db), migrationCount, 'one __drizzle_migrations row per journal entry')
  })

  t.test('pgvector works', async (t) => {
    const [row] = await rows<{ distance: number | string }>(
      app.db,
      sql`select '[1,2,3]'::vector <-> '[1,2,4]'::vector as distance`,
    )
    t.equal(Number(row?.distance), 1)
  })

  t.test('insert and select through app.db', async (t) => {
    await app.db.insert(systemSettings).values({ key: 'test.greeting', value: 'hello' })
    const found = await app.db.select().from(systemSettings).where(eq(systemSettings.key, 'test.greeting'))
    t.equal(found.length, 1)
    t.equal(found[0]?.value, 'hello')
    t.ok(found[0]?.updatedAt instanceof Date, 'updatedAt defaults to now() and maps to a Date')
    await app.db.update(systemSettings).set({ value: 'bye' }).where(eq(systemSettings.key, 'test.greeting'))
    const [updated] = await app.db.select().from(systemSettings).where(eq(systemSettings.key, 'test.greeting'))
    t.equal(updated?.value, 'bye')
  })

  t.test('a transaction that throws rolls back', async (t) => {
    await t.rejects(
      app.db.transaction(async (tx) => {
        await tx.insert(systemSettings).values({ key: 'test.rollback', value: 'never' })
        const inside = await tx.select().from(systemSettings).where(eq(systemSettings.key, 'test.rollback'))
        t.equal(inside.length, 1, 'visible inside the transaction')
        throw new Error('boom')
      }),
      { message: 'boom' },
    )
    const after = await app.db.select().from(systemSettings).where(eq(systemSettings.key, 'test.rollback'))
    t.equal(after.length, 0, 'nothing was committed')

    await app.db.transaction(async (tx) => {
      await tx.insert(systemSettings).values({ key: 'test.commit', value: 'kept' })
    })
    const committed = await app.db.select().from(systemSettings).where(eq(systemSettings.key, 'test.commit'))
    t.equal(committed.length, 1, 'a transaction that returns commits')
  })

  t.test('app.close() closes the database', async (t) => {
    await app.database.ping()
    await app.close()
    await t.rejects(app.database.ping(), 'ping rejects after close')
  })
})

t.test('PGlite on disk keeps rows across reopen', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'backplane-pglite-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const config = { DATABASE_URL: undefined, DATA_DIR: dir, DATABASE_POOL_MAX: 1 }

  let database: DatabaseHandle | null = await openDatabase(config)
  t.teardown(() => database?.close())
  t.equal(database.engine, 'pglite')
  t.ok(existsSync(join(dir, 'pglite')), 'DATA_DIR/pglite is created')
  await runMigrations(database)
  await database.db.insert(systemSettings).values({ key: 'disk.row', value: 'persisted' })
  await database.close()

  database = await openDatabase(config)
  await runMigrations(database)
  const found = await database.db.select().from(systemSettings).where(eq(systemSettings.key, 'disk.row'))
  t.equal(found[0]?.value, 'persisted', 'the row survives a reopen')
  t.equal(await appliedMigrations(database.db), migrationCount, 'migrations are not applied twice')
  await database.close()
  database = null
})

t.test('PostgreSQL specifics', async (t) => {
  const adminUrl = await postgresForTest(t)

  async function emptyDatabase(t: { teardown(fn: () => unknown): void }) {
    const created = await createPostgresDatabase(adminUrl, { empty: true })
    t.teardown(() => created.drop())
    return created
  }

  t.test('MIGRATE_ON_START decides whether the app migrates PostgreSQL', async (t) => {
    const plain = await emptyDatabase(t)
    const inspect = await openDatabase({ DATABASE_URL: plain.url, DATA_DIR: '.', DATABASE_POOL_MAX: 1 })
    t.teardown(() => inspect.close())
    // Without MIGRATE_ON_START the app leaves the schema alone, and refuses to run on a database
    // that lacks this release's migrations, saying what to do instead of failing on missing tables.
    const refused = await buildApp(testConfig({ DATABASE_URL: plain.url })).then(
      async (app) => {
        await app.close()
        return null
      },
      (error: Error) => error,
    )
    t.equal(refused?.name, 'MigrationError', 'an unmigrated database stops start-up')
    t.match(refused?.message, /npm run migrate/, 'naming `npm run migrate`')
    t.match(refused?.message, /MIGRATE_ON_START=true/, 'and MIGRATE_ON_START=true')
    t.notOk(await tableExists(inspect.db, 'public.system_settings'), 'without MIGRATE_ON_START: no tables')
    t.notOk(await tableExists(inspect.db, 'drizzle.__drizzle_migrations'), 'and no migrations journal')
    t.equal(await pendingMigrations(inspect), migrationCount, 'every migration is pending')

    await runMigrations(inspect)
    t.equal(await pendingMigrations(inspect), 0, 'none after migrating')
    const started = await buildApp(testConfig({ DATABASE_URL: plain.url }))
    t.teardown(() => started.close())
    await started.ready()
    const health = await started.inject({ method: 'GET', url: '/ready' })
    t.equal(health.statusCode, 200, 'a migrated database starts without MIGRATE_ON_START')
    await started.close()

    const target = await emptyDatabase(t)
    const migrated = await buildApp(testConfig({ DATABASE_URL: target.url, MIGRATE_ON_START: 'true' }))
    t.teardown(() => migrated.close())
    await migrated.ready()
    t.ok(await tableExists(migrated.db, 'public.system_settings'), 'with MIGRATE_ON_START=true: migrated')
    t.equal(await appliedMigrations(migrated.db), migrationCount)
    const [vector] = await rows<{ distance: number }>(
      migrated.db,
      sql`select '[0,0]'::vector <-> '[3,4]'::vector as distance`,
    )
    t.equal(Number(vector?.distance), 5, 'the migration itself created the vector extension')
    await migrated.close()
  })

  t.test('concurrent runMigrations apply each migration once', async (t) => {
    const target = await emptyDatabase(t)
    const config = { DATABASE_URL: target.url, DATA_DIR: '.', DATABASE_POOL_MAX: 2 }
    const first = await openDatabase(config)
    const second = await openDatabase(config)
    t.teardown(async () => {
      await first.close()
      await second.close()
    })
    const results = await Promise.allSettled([runMigrations(first), runMigrations(second)])
    t.same(
      results.map((result) => result.status),
      ['fulfilled', 'fulfilled'],
      `both succeed ${JSON.stringify(results.map((r) => (r.status === 'rejected' ? String(r.reason) : 'ok')))}`,
    )
    t.equal(await appliedMigrations(first.db), migrationCount, 'one journal row per migration')
    const [row] = await rows<{ hashes: number | string }>(
      first.db,
      sql`select count(distinct hash)::int as hashes from drizzle.__drizzle_migrations`,
    )
    t.equal(Number(row?.hashes), migrationCount, 'no migration recorded twice')
    t.ok(await tableExists(second.db, 'public.system_settings'))
    await t.resolves(runMigrations(second), 'running again is a no-op')
    t.equal(await appliedMigrations(second.db), migrationCount)
  })

  t.test('npm run migrate migrates an empty database', async (t) => {
    const target = await emptyDatabase(t)
    const cli = runNodeScript(t, 'src/db/migrate-cli.ts', { DATABASE_URL: target.url, LOG_LEVEL: 'info' })
    const exit = await exitWithin(cli, 60_000)
    t.same(exit, { code: 0, signal: null }, `exits 0 (stderr: ${cli.stderr()})`)
    t.match(cli.stdout(), /Migrations applied/)
    const check = await openDatabase({ DATABASE_URL: target.url, DATA_DIR: '.', DATABASE_POOL_MAX: 1 })
    t.teardown(() => check.close())
    t.ok(await tableExists(check.db, 'public.system_settings'))
    t.equal(await appliedMigrations(check.db), migrationCount)
  })
})
