import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import type { Config } from '../config.js'
import { type Database, type DatabaseHandle, openDatabase } from '../db/client.js'
import { MigrationError, pendingMigrations, runMigrations } from '../db/migrate.js'

declare module 'fastify' {
  interface FastifyInstance {
    /** Drizzle handle; only repositories use it. */
    db: Database
    /** Engine, health check and lifecycle of the database behind `db`. */
    database: DatabaseHandle
  }
}

export interface DbPluginOptions {
  config: Config
  /** A database opened by the caller (tests); the app still owns it and closes it. */
  database?: DatabaseHandle
}

async function dbPlugin(app: FastifyInstance, { config, database: given }: DbPluginOptions) {
  const database =
    given ??
    (await openDatabase(config, {
      onPoolError: (error) => app.log.warn({ err: error }, 'idle database connection failed'),
    }))
  app.addHook('onClose', async () => {
    await database.close()
  })
  // The embedded database belongs to this process, so it is always brought up to date. A shared
  // PostgreSQL is migrated on start only when asked, typically by one release step.
  if (database.engine === 'pglite' || config.MIGRATE_ON_START) {
    try {
      await runMigrations(database)
    } catch (error) {
      await database.close()
      throw error
    }
  } else {
    // Otherwise an unmigrated PostgreSQL would surface later as raw SQL errors about missing tables.
    // An unreachable one is not fatal here: readiness reports it until it comes back.
    const pending = await pendingMigrations(database).catch((error) => {
      app.log.warn({ err: error }, 'could not check the database schema version')
      return 0
    })
    if (pending > 0) {
      await database.close()
      throw new MigrationError(
        `The database lacks ${pending} migration(s) of this release: run \`npm run migrate\` or set MIGRATE_ON_START=true`,
      )
    }
  }
  app.decorate('database', database)
  app.decorate('db', database.db)
}

export default fp(dbPlugin, { name: 'db', fastify: '5.x' })
