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
  /**
   * While busy (a batch ended less than this long ago), the next batch waits this long for more
   * items before it starts; an item arriving after a quiet spell is written at once. Worth it where
   * items trickle in one at a time during a burst and each statement costs the database more than
   * its rows do. 0 (the default) never waits.
   */
  lingerMs?: number
}) {
  interface Pending {
    item: Item
    resolve: (result: Result) => void
    reject: (error: unknown) => void
  }
  const queue: Pending[] = []
  let active = 0
  const lingerMs = options.lingerMs ?? 0
  let lastBatchEnded = Number.NEGATIVE_INFINITY
  let lingering: NodeJS.Timeout | null = null

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
    if (lingering) return
    if (lingerMs > 0 && queue.length > 0 && queue.length < options.maxBatch && active < options.writers) {
      const busyFor = lingerMs - (performance.now() - lastBatchEnded)
      if (busyFor > 0) {
        lingering = setTimeout(() => {
          lingering = null
          start()
        }, lingerMs)
        return
      }
    }
    start()
  }

  function start() {
    while (active < options.writers && queue.length > 0) {
      const batch = queue.splice(0, options.maxBatch)
      active++
      void flush(batch).finally(() => {
        active--
        lastBatchEnded = performance.now()
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
