/**
 * Group commit: callers submit items one at a time and each waits for its own result, while the
 * items are written in batches, one transaction per batch. A batch starts as soon as a writer is
 * free, with everything that arrived meanwhile, so a lone item waits for nothing and a burst
 * shares its round trips. If a batch fails, its items are retried one by one, so that a single
 * bad item fails alone.
 */
export function createGroupCommit<Item, Result>(options: {
  /** Writes the batch and returns one result per item, in order. */
  write: (items: Item[]) => Promise<Result[]>
  maxBatch: number
  /** Batches written at the same time (each takes a database connection). */
  writers: number
}) {
  interface Pending {
    item: Item
    resolve: (result: Result) => void
    reject: (error: unknown) => void
  }
  const queue: Pending[] = []
  let active = 0

  async function flush(batch: Pending[]) {
    try {
      const results = await options.write(batch.map((pending) => pending.item))
      batch.forEach((pending, index) => pending.resolve(results[index] as Result))
    } catch (error) {
      if (batch.length === 1) {
        batch[0]?.reject(error)
        return
      }
      for (const pending of batch) {
        await options.write([pending.item]).then(
          ([result]) => pending.resolve(result as Result),
          (itemError: unknown) => pending.reject(itemError),
        )
      }
    }
  }

  function drain() {
    while (active < options.writers && queue.length > 0) {
      const batch = queue.splice(0, options.maxBatch)
      active++
      void flush(batch).finally(() => {
        active--
        drain()
      })
    }
  }

  return {
    submit(item: Item): Promise<Result> {
      return new Promise<Result>((resolve, reject) => {
        queue.push({ item, resolve, reject })
        drain()
      })
    },
  }
}
