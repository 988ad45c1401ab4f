/**
 * Child process for the durability test: writes rows to an on-disk PGlite one commit at a time
 * and prints `ack <n>` only after each commit has returned, i.e. after it was acknowledged.
 */
import { openDatabase } from '../../src/db/client.js'
import { runMigrations } from '../../src/db/migrate.js'
import { systemSettings } from '../../src/db/schema/index.js'

const dataDir = process.argv[2]
if (!dataDir) throw new Error('usage: pglite-writer <data dir>')
const database = await openDatabase({ DATABASE_URL: undefined, DATA_DIR: dataDir, DATABASE_POOL_MAX: 1 })
await runMigrations(database)
process.stdout.write('ready\n')
for (let n = 0; ; n++) {
  await database.db.insert(systemSettings).values({ key: `durable-${n}`, value: String(n) })
  process.stdout.write(`ack ${n}\n`)
}
