import { getHeapSnapshot, setFlagsFromString } from 'node:v8'

/**
 * Runs ticks between memory-reducing collections (what V8 does to a server that goes quiet), then
 * prints V8's view of `process.nextTick`, whose type feedback shows whether the stores that build
 * each queue entry stayed monomorphic. RETAIN_TICK_SHAPE=1 loads the app's remedy first.
 */
if (process.env.RETAIN_TICK_SHAPE === '1') await import('../../../src/lib/tick-object-shape.js')

// Taking a heap snapshot collects all available garbage, as the memory reducer does.
async function collectAllGarbage() {
  const snapshot = getHeapSnapshot()
  snapshot.resume()
  await new Promise((resolve) => snapshot.once('end', resolve))
}

for (let round = 0; round < 8; round++) {
  for (let tick = 0; tick < 2000; tick++) await new Promise<void>((resolve) => process.nextTick(resolve))
  await new Promise((resolve) => setImmediate(resolve))
  await collectAllGarbage()
}

setFlagsFromString('--allow-natives-syntax')
// Compiled after the flag is set, so the intrinsic parses; it prints to stdout.
const debugPrint = new Function('value', '%DebugPrint(value)') as (value: unknown) => void
debugPrint(process.nextTick)
