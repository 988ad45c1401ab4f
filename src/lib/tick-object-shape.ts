import { executionAsyncResource } from 'node:async_hooks'

/**
 * Keeps one of `process.nextTick`'s queue entries reachable for the life of the process.
 *
 * Node builds each entry as an object literal with symbol keys, and V8 holds the hidden classes
 * of such objects only weakly. A memory-reducing collection (V8 runs one when a busy process goes
 * quiet, as a server does at start-up and between bursts) finds no entry queued, drops the
 * classes, and the next entry gets new ones. After a few of those cycles the property stores in
 * `nextTick` have seen more classes than V8 tracks and go megamorphic for good: 300-400 ns a call
 * instead of about 40, some eight calls in every HTTP request. One entry that never dies keeps its
 * classes alive, so every later entry shares them and the stores stay monomorphic.
 *
 * Imported first by the app, before start-up's garbage has been collected.
 */
const retained: object[] = []

process.nextTick(() => {
  // Inside a tick callback the execution resource is the queue entry being run.
  retained.push(executionAsyncResource())
})
