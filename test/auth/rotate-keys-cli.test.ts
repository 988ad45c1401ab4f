import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { isNull } from 'drizzle-orm'
import t from 'tap'
import { openDatabase } from '../../src/db/client.js'
import { signingKeys } from '../../src/db/schema/index.js'
import { TEST_ENCRYPTION_KEY } from '../helper.js'
import { runNodeScript } from '../support/server-process.js'

// `npm run keys:rotate` against an embedded database in a temp DATA_DIR: the first run creates the
// initial key and rotates once; the second rotates again. Exactly one key signs afterwards and the
// retired ones stay stored (and so published) for tokens they signed.
t.test('npm run keys:rotate adds a signing key and retires the previous one', async (t) => {
  const dataDir = mkdtempSync(join(tmpdir(), 'backplane-rotate-'))
  t.teardown(() => rmSync(dataDir, { recursive: true, force: true }))
  const env = { DATA_DIR: dataDir, DATABASE_URL: undefined, ENCRYPTION_KEY: TEST_ENCRYPTION_KEY, LOG_LEVEL: 'silent' }

  const kids: string[] = []
  for (let run = 0; run < 2; run++) {
    const cli = runNodeScript(t, 'src/modules/auth/rotate-keys-cli.ts', env)
    const { code } = await cli.exited
    t.equal(code, 0, `run ${run + 1} exits 0 (stderr: ${cli.stderr().trim()})`)
    const match = /New signing key (\S+) is active/.exec(cli.stdout())
    t.ok(match, `run ${run + 1} names the new key`)
    if (match?.[1]) kids.push(match[1])
  }
  t.equal(new Set(kids).size, 2, 'each run created a different key')

  const database = await openDatabase({ DATABASE_URL: undefined, DATA_DIR: dataDir, DATABASE_POOL_MAX: 1 })
  t.teardown(() => database.close())
  const rows = await database.db.select().from(signingKeys)
  const active = await database.db.select().from(signingKeys).where(isNull(signingKeys.retiredAt))
  t.equal(rows.length, 3, 'the initial key and two rotations are stored')
  t.same(
    active.map((row) => row.kid),
    [kids[1]],
    'only the newest key signs',
  )
  for (const row of rows) {
    t.notOk(row.privateJwkSealed.includes('"d"'), `the private key of ${row.kid} is sealed at rest`)
  }
})
