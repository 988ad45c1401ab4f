import t from 'tap'
import { requestIdGenerator } from '../../src/lib/ids.js'

const UUID_V8 = /^[0-9a-f]{8}-[0-9a-f]{4}-8[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/

t.test('request ids are UUIDs of version 8 with the RFC 9562 variant', async (t) => {
  const next = requestIdGenerator()
  for (let index = 0; index < 1000; index++) {
    const id = next()
    if (!UUID_V8.test(id)) return t.fail(`${id} is not a version 8 UUID`)
  }
  t.pass('1,000 ids have the layout')
})

t.test('one generator never repeats an id', async (t) => {
  const next = requestIdGenerator()
  const seen = new Set<string>()
  for (let index = 0; index < 200_000; index++) seen.add(next())
  t.equal(seen.size, 200_000)
})

t.test('each generator draws its own random part', async (t) => {
  const randomParts = new Set<string>()
  for (let index = 0; index < 50; index++) randomParts.add(requestIdGenerator()().slice(0, 28))
  t.equal(randomParts.size, 50, 'no two generators share their random bits')
})
