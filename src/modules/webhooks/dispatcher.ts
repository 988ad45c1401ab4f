import type { FastifyBaseLogger } from 'fastify'

/**
 * Runs `work` whenever triggered, never twice at once: a trigger that arrives while it runs makes
 * it run once more afterwards, so a burst of notifications costs one or two runs, and nothing
 * committed during a run is left for the next sweep.
 */
export function coalescingRunner(work: () => Promise<unknown>, log: FastifyBaseLogger, what: string) {
  let running: Promise<void> | null = null
  let again = false
  let stopped = false

  async function loop() {
    do {
      again = false
      try {
        await work()
      } catch (error) {
        // The next trigger or sweep tries again; what failed is still in the database.
        log.warn({ err: error }, `${what} failed`)
      }
    } while (again && !stopped)
  }

  return {
    trigger() {
      if (stopped) return
      if (running) {
        again = true
        return
      }
      running = loop().finally(() => {
        running = null
      })
    },
    /** Waits for a run in progress; no run starts afterwards. */
    async stop() {
      stopped = true
      await running
    },
  }
}
