import { spawn } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { like } from 'drizzle-orm'
import t from 'tap'
import { openDatabase } from '../../src/db/client.js'
import { systemSettings } from '../../src/db/schema/index.js'

// The README states what this establishes: whether the embedded database keeps every write it
// acknowledged when the process is killed without warning (SIGKILL: no shutdown hook runs).
t.test('PGlite keeps every acknowledged commit through SIGKILL', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'backplane-durability-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))

  for (let round = 0; round < 2; round++) {
    const writer = spawn(process.execPath, ['--import', 'tsx', 'test/support/pglite-writer.ts', dir], {
      stdio: ['ignore', 'pipe', 'inherit'],
    })
    let acknowledged = -1
    const killedAfter = 40 + round * 25
    await new Promise<void>((resolve) => {
      const lines = createInterface({ input: writer.stdout })
      lines.on('line', (line) => {
        const match = /^ack (\d+)$/.exec(line)
        if (!match) return
        acknowledged = Number(match[1])
        if (acknowledged === killedAfter) writer.kill('SIGKILL')
      })
      writer.once('exit', () => resolve())
    })
    t.ok(acknowledged >= killedAfter, `round ${round}: the writer was killed mid-stream after ${acknowledged + 1} acks`)

    const database = await openDatabase({ DATABASE_URL: undefined, DATA_DIR: dir, DATABASE_POOL_MAX: 1 })
    const rows = await database.db
      .select({ key: systemSettings.key })
      .from(systemSettings)
      .where(like(systemSettings.key, 'durable-%'))
    const keys = new Set(rows.map((row) => row.key))
    const missing = Array.from({ length: acknowledged + 1 }, (_, n) => `durable-${n}`).filter((key) => !keys.has(key))
    t.same(missing, [], `round ${round}: no acknowledged row is lost`)
    await database.db.delete(systemSettings).where(like(systemSettings.key, 'durable-%'))
    await database.close()
  }
})
