import { spawnSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import t from 'tap'
import { BlockLogDestination, logDestination } from '../../src/lib/log-destination.js'

const directory = mkdtempSync(join(tmpdir(), 'log-destination-'))
t.teardown(() => rmSync(directory, { recursive: true, force: true }))

const lineOf = (index: number) => `{"n":${index},"msg":"line ${index} ünïcödé ✓"}\n`

t.test('every line reaches the file once, in order, across many blocks', async (t) => {
  const path = join(directory, 'many.log')
  const destination = logDestination(path)
  const count = 20_000
  for (let index = 0; index < count; index++) destination.write(lineOf(index))
  t.ok(readFileSync(path, 'utf8').length > 0, 'full blocks are written as they fill')
  destination.flushSync()
  const lines = readFileSync(path, 'utf8').split('\n').slice(0, -1)
  t.equal(lines.length, count, 'no line lost or repeated')
  t.same(
    lines.slice(0, 3),
    [0, 1, 2].map((index) => lineOf(index).trimEnd()),
  )
  t.ok(
    lines.every((line, index) => line === lineOf(index).trimEnd()),
    'lines keep their order and their multi-byte characters',
  )
  destination.end()
})

t.test('a line longer than a block is written whole, in its place', async (t) => {
  const path = join(directory, 'long.log')
  const destination = logDestination(path)
  // Three-byte characters near the boundary: a line that fits by its length in UTF-16 units
  // but not by its bytes must start a new block rather than be cut.
  const long = `{"msg":"${'✓'.repeat(5000)}"}\n`
  const nearlyFull = `{"msg":"${'x'.repeat(4000)}"}\n`
  const wide = `{"msg":"${'✓'.repeat(30)}"}\n`
  const lines = [lineOf(1), long, lineOf(2), nearlyFull, wide, lineOf(3)]
  for (const line of lines) destination.write(line)
  destination.flushSync()
  t.equal(readFileSync(path, 'utf8'), lines.join(''))
  destination.end()
})

t.test('a block that fails to be written takes no later line with it', async (t) => {
  const written: string[] = []
  let failNext = false
  const file = {
    write(block: Buffer) {
      if (failNext) {
        failNext = false
        throw new Error('EIO: the disk went away')
      }
      written.push(block.toString())
      return true
    },
    end() {},
  }
  const destination = new BlockLogDestination(file as never)
  const filler = `{"msg":"${'x'.repeat(3000)}"}\n`
  destination.write(filler)
  failNext = true
  t.throws(() => destination.write(filler), /EIO/, 'the failure reaches the caller')
  destination.flushSync()
  t.same(written, [filler], 'the line that found the block full is written with the next block')
  destination.end()
})

t.test('a line smaller than a block waits until flushed', async (t) => {
  const path = join(directory, 'small.log')
  const destination = logDestination(path)
  destination.write(lineOf(1))
  destination.flushSync()
  destination.write(lineOf(2))
  await new Promise((resolve) => setTimeout(resolve, 50))
  t.equal(readFileSync(path, 'utf8'), lineOf(1), 'the second line is held back in its block')
  await new Promise<void>((resolve, reject) => destination.flush((error) => (error ? reject(error) : resolve())))
  t.equal(readFileSync(path, 'utf8'), lineOf(1) + lineOf(2), 'flush writes the pending block')
  destination.end()
})

t.test('lines still in a block are written when the process exits', async (t) => {
  const path = join(directory, 'exit.log')
  const module = pathToFileURL(fileURLToPath(new URL('../../src/lib/log-destination.ts', import.meta.url))).href
  const script = `
    const { logDestination } = await import(${JSON.stringify(module)})
    const destination = logDestination(${JSON.stringify(path)})
    await new Promise((resolve) => setTimeout(resolve, 100))
    destination.write('{"msg":"first"}\\n')
    destination.write('{"msg":"last words"}\\n')
    process.exit(3)
  `
  const tsx = pathToFileURL(createRequire(import.meta.url).resolve('tsx')).href
  const result = spawnSync(process.execPath, ['--import', tsx, '--input-type=module', '-e', script], {
    encoding: 'utf8',
    timeout: 30_000,
  })
  t.equal(result.status, 3, result.stderr)
  t.equal(readFileSync(path, 'utf8'), '{"msg":"first"}\n{"msg":"last words"}\n')
})
