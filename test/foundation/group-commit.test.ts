import t from 'tap'
import { createGroupCommit } from '../../src/lib/group-commit.js'

/** A writer whose batches the test releases by hand, recording what each batch held. */
function gatedWriter(fails: (items: number[]) => boolean = () => false) {
  const batches: number[][] = []
  const gates: (() => void)[] = []
  const write = async (items: number[]) => {
    batches.push(items)
    await new Promise<void>((resolve) => gates.push(resolve))
    if (fails(items)) throw new Error(`batch ${items.join(',')} refused`)
    return items.map((item) => item * 10)
  }
  const releaseAll = async () => {
    while (gates.length > 0) {
      gates.shift()?.()
      await new Promise((resolve) => setImmediate(resolve))
    }
  }
  return { batches, write, releaseAll }
}

t.test('items arriving while a batch is written form the next batch; each caller gets its own result', async (t) => {
  const writer = gatedWriter()
  const commit = createGroupCommit({ write: writer.write, maxBatch: 100, writers: 1 })
  const first = commit.submit(1)
  const rest = [2, 3, 4, 5].map((item) => commit.submit(item))
  t.same(writer.batches, [[1]], 'a lone item is written at once')
  const results = Promise.all([first, ...rest])
  await writer.releaseAll()
  t.same(await results, [10, 20, 30, 40, 50])
  t.same(writer.batches, [[1], [2, 3, 4, 5]], 'the four that waited share one batch')
})

t.test('batches hold at most maxBatch items and at most `writers` batches run at once', async (t) => {
  const writer = gatedWriter()
  const commit = createGroupCommit({ write: writer.write, maxBatch: 2, writers: 2 })
  const results = Promise.all([1, 2, 3, 4, 5, 6, 7].map((item) => commit.submit(item)))
  t.same(writer.batches, [[1], [2]], 'two writers busy with the first two items')
  await writer.releaseAll()
  t.same(await results, [10, 20, 30, 40, 50, 60, 70])
  t.ok(
    writer.batches.every((batch) => batch.length <= 2),
    'no batch above maxBatch',
  )
  t.same(writer.batches.flat().sort(), [1, 2, 3, 4, 5, 6, 7], 'every item written once')
})

t.test('a failing batch is retried item by item, so only the bad item fails', async (t) => {
  const writer = gatedWriter((items) => items.includes(3))
  const commit = createGroupCommit({ write: writer.write, maxBatch: 100, writers: 1 })
  const settled = Promise.allSettled([1, 2, 3, 4].map((item) => commit.submit(item)))
  await writer.releaseAll()
  // The retries of the failed batch are gated too.
  await writer.releaseAll()
  const outcomes = await settled
  t.same(
    outcomes.map((outcome) => outcome.status),
    ['fulfilled', 'fulfilled', 'rejected', 'fulfilled'],
  )
  t.same(
    outcomes.map((outcome) => (outcome.status === 'fulfilled' ? outcome.value : null)),
    [10, 20, null, 40],
  )
  t.same(writer.batches, [[1], [2, 3, 4], [2], [3], [4]], 'the batch holding 3 was split')
})

t.test('lingerMs: a lone item is written at once; while busy, items trickling in share the next batch', async (t) => {
  const batches: number[][] = []
  const commit = createGroupCommit({
    write: async (items: number[]) => {
      batches.push(items)
      return items
    },
    maxBatch: 100,
    writers: 1,
    lingerMs: 200,
  })
  const started = performance.now()
  await commit.submit(1)
  t.ok(performance.now() - started < 150, 'the first item did not wait for the linger')
  // One at a time, 5 ms apart, right after a batch: the linger gathers them.
  const trickle: Promise<number>[] = []
  for (const item of [2, 3, 4, 5]) {
    trickle.push(commit.submit(item))
    await new Promise((resolve) => setTimeout(resolve, 5))
  }
  await Promise.all(trickle)
  t.same(batches, [[1], [2, 3, 4, 5]], 'the trickle became one batch')
  await new Promise((resolve) => setTimeout(resolve, 250))
  const quiet = performance.now()
  await commit.submit(6)
  t.ok(performance.now() - quiet < 150, 'after a quiet spell an item is written at once again')
  t.same(batches.at(-1), [6])
})
