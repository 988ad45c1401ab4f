import { spawnSync } from 'node:child_process'
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import type { Test } from '../auth/support.js'
import { ROOT } from '../support/server-process.js'

/**
 * `src/lib/tick-object-shape.ts` keeps Node's nextTick on its fast path in a long-lived process.
 * The fixture reproduces what a server lives through (ticks, then quiet spells that V8 answers
 * with memory-reducing collections) and prints the type feedback of `nextTick`'s stores.
 */
const directory = mkdtempSync(join(tmpdir(), 'tick-object-shape-'))
t.teardown(() => rmSync(directory, { recursive: true, force: true }))

function tickStoreStates(t: Test, retain: boolean): string[] {
  // V8 prints through C's stdio, which can drop output on a non-blocking pipe: a file keeps all.
  const path = join(directory, `${retain ? 'retained' : 'control'}.out`)
  const stdout = openSync(path, 'w')
  const churn = spawnSync(process.execPath, ['--import', 'tsx', 'test/foundation/support/tick-churn.ts'], {
    cwd: ROOT,
    env: { ...process.env, RETAIN_TICK_SHAPE: retain ? '1' : '0' },
    stdio: ['ignore', stdout, 'pipe'],
    encoding: 'utf8',
    timeout: 60_000,
  })
  closeSync(stdout)
  t.equal(churn.status, 0, `the fixture exits cleanly; stderr: ${churn.stderr.slice(-500)}`)
  return [...readFileSync(path, 'utf8').matchAll(/DefineKeyedOwnPropertyInLiteral (\w+)/g)].map(
    (match) => match[1] ?? '',
  )
}

t.test('without the retained entry, the churn turns the queue-entry stores megamorphic', async (t) => {
  // The control: it shows the fixture reproduces the slow path on this runtime, so the next test
  // measures the remedy rather than a runtime where the problem never arises.
  const states = tickStoreStates(t, false)
  t.ok(states.length >= 3, `the feedback of nextTick's stores is printed (${states.join(', ')})`)
  t.ok(states.includes('MEGAMORPHIC'), `some store went megamorphic (${states.join(', ')})`)
})

t.test('with one queue entry retained, every store stays monomorphic through the churn', async (t) => {
  const states = tickStoreStates(t, true)
  t.ok(states.length >= 3, `the feedback of nextTick's stores is printed (${states.join(', ')})`)
  t.ok(
    states.every((state) => state === 'MONOMORPHIC'),
    `no store is polymorphic or megamorphic (${states.join(', ')})`,
  )
})
