import { setTimeout as sleep } from 'node:timers/promises'
import type { FastifyInstance } from 'fastify'
import pg from 'pg'
import t from 'tap'
import { buildApp } from '../../src/app.js'
import { and, eq } from 'drizzle-orm'
import { memberships } from '../../src/db/schema/index.js'
import { buildTestApp, eventually as eventuallyWithin, postgresForTest, testConfig } from '../helper.js'
import { createPostgresDatabase } from '../support/databases.js'
import { type Account, account, addMember, callAs, createOrg } from './support.js'

// Long enough that only an invalidation, never expiry, can explain a change seen within a test.
const LONG_TTL = { MEMBERSHIP_CACHE_TTL_MS: '600000' }

/** Background work this test waits for finishes within 3000 ms. */
const eventually = (check: () => boolean | Promise<boolean>, ms = 3000) => eventuallyWithin(check, ms)

const projectsOf = (app: FastifyInstance, who: Account, orgId: string) =>
  callAs(app, who, 'GET', `/projects?orgId=${orgId}`)

t.test('on one instance, membership changes apply to the very next request', async (t) => {
  const app = await buildTestApp(t, { env: LONG_TTL })
  const owner = await account(app)
  const user = await account(app)
  const orgId = await createOrg(app, owner)
  // The owner's roles were cached before the org existed (signup, /auth/me); creating it refreshed them.
  t.equal((await projectsOf(app, owner, orgId)).statusCode, 200, 'a new org is usable at once by its creator')

  t.equal((await projectsOf(app, user, orgId)).statusCode, 404, 'not a member yet')
  await addMember(app, owner, orgId, user, 'viewer')
  t.equal((await projectsOf(app, user, orgId)).statusCode, 200, 'added: can read at once')
  const denied = await callAs(app, user, 'POST', '/projects', { orgId, name: 'x' })
  t.equal(denied.statusCode, 403, 'a viewer cannot write')

  const promoted = await callAs(app, owner, 'PATCH', `/orgs/${orgId}/members/${user.userId}`, { role: 'member' })
  t.equal(promoted.statusCode, 200)
  t.equal((await callAs(app, user, 'POST', '/projects', { orgId, name: 'x' })).statusCode, 201, 'promoted: can write')

  const removed = await callAs(app, owner, 'DELETE', `/orgs/${orgId}/members/${user.userId}`)
  t.equal(removed.statusCode, 204)
  t.equal((await projectsOf(app, user, orgId)).statusCode, 404, 'removed: locked out at once')
})

t.test('across instances, the database announces membership changes to every instance', async (t) => {
  const adminUrl = await postgresForTest(t)
  const database = await createPostgresDatabase(adminUrl, { empty: true })
  t.teardown(() => database.drop())
  // No Redis: the notifications travel through PostgreSQL itself.
  const env = { DATABASE_URL: database.url, ...LONG_TTL }
  const first = await buildApp(testConfig({ ...env, MIGRATE_ON_START: 'true' }))
  t.teardown(() => first.close())
  const second = await buildApp(testConfig(env))
  t.teardown(() => second.close())

  const owner = await account(first)
  const user = await account(first)
  const orgId = await createOrg(first, owner)
  await addMember(first, owner, orgId, user, 'member')
  // The second instance caches the user's roles...
  t.equal((await projectsOf(second, user, orgId)).statusCode, 200, 'the member reads through the second instance')

  // ...and the first one changes them.
  const demoted = await callAs(first, owner, 'PATCH', `/orgs/${orgId}/members/${user.userId}`, { role: 'viewer' })
  t.equal(demoted.statusCode, 200)
  t.ok(
    await eventually(
      async () => (await callAs(second, user, 'POST', '/projects', { orgId, name: 'x' })).statusCode === 403,
    ),
    'the demotion reaches the second instance',
  )

  const removed = await callAs(first, owner, 'DELETE', `/orgs/${orgId}/members/${user.userId}`)
  t.equal(removed.statusCode, 204)
  t.ok(
    await eventually(async () => (await projectsOf(second, user, orgId)).statusCode === 404),
    'the removal reaches the second instance',
  )
})

t.test('a membership changed directly in SQL is not served from the cache', async (t) => {
  const app = await buildTestApp(t, { env: LONG_TTL })
  const owner = await account(app)
  const user = await account(app)
  const orgId = await createOrg(app, owner)
  await addMember(app, owner, orgId, user, 'member')
  t.equal((await projectsOf(app, user, orgId)).statusCode, 200, 'cached as a member')

  await app.db.delete(memberships).where(and(eq(memberships.orgId, orgId), eq(memberships.userId, user.userId)))
  t.ok(
    await eventually(async () => (await projectsOf(app, user, orgId)).statusCode === 404),
    'an out-of-band removal locks the user out',
  )
})

t.test('MEMBERSHIP_CACHE_TTL_MS=0 reads roles on every request', async (t) => {
  const app = await buildTestApp(t, { env: { MEMBERSHIP_CACHE_TTL_MS: '0' } })
  const owner = await account(app)
  const user = await account(app)
  const orgId = await createOrg(app, owner)
  await addMember(app, owner, orgId, user, 'member')
  t.equal((await projectsOf(app, user, orgId)).statusCode, 200)
  const removed = await callAs(app, owner, 'DELETE', `/orgs/${orgId}/members/${user.userId}`)
  t.equal(removed.statusCode, 204)
  t.equal((await projectsOf(app, user, orgId)).statusCode, 404)
})

t.test('while the notification connection is down, roles are read from the database', async (t) => {
  const adminUrl = await postgresForTest(t)
  const database = await createPostgresDatabase(adminUrl, { empty: true })
  t.teardown(() => database.drop())
  const app = await buildApp(testConfig({ DATABASE_URL: database.url, MIGRATE_ON_START: 'true', ...LONG_TTL }))
  t.teardown(() => app.close())

  const owner = await account(app)
  const user = await account(app)
  const orgId = await createOrg(app, owner)
  await addMember(app, owner, orgId, user, 'member')
  t.equal((await projectsOf(app, user, orgId)).statusCode, 200, 'cached as a member')

  const admin = new pg.Client({ connectionString: database.url })
  await admin.connect()
  t.teardown(() => admin.end())
  const listeners = async () =>
    Number(
      (
        await admin.query(
          "select count(*) from pg_stat_activity where application_name = 'backplane-listener' and datname = current_database()",
        )
      ).rows[0].count,
    )
  t.equal(await listeners(), 1, 'the instance listens on a connection of its own')

  // Kill the listening connection, then remove the member while nobody listens: the notification
  // is lost, and the roles cached before must not be used.
  await admin.query(
    "select pg_terminate_backend(pid) from pg_stat_activity where application_name = 'backplane-listener' and datname = current_database()",
  )
  t.ok(await eventually(async () => (await listeners()) === 0, 5000), 'the listener is gone')
  await sleep(30)
  await admin.query('delete from memberships where org_id = $1 and user_id = $2', [orgId, user.userId])
  t.equal((await projectsOf(app, user, orgId)).statusCode, 404, 'the removal applies at once')

  t.ok(await eventually(async () => (await listeners()) === 1, 10_000), 'the listener reconnects')
  await addMember(app, owner, orgId, user, 'member')
  t.equal((await projectsOf(app, user, orgId)).statusCode, 200, 'a member again')
  await admin.query('delete from memberships where org_id = $1 and user_id = $2', [orgId, user.userId])
  t.ok(
    await eventually(async () => (await projectsOf(app, user, orgId)).statusCode === 404),
    'notifications flow again after the reconnect',
  )
})
