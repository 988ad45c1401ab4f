import t from 'tap'
import { buildTestApp } from '../helper.js'

t.test('GET /health answers without I/O', async (t) => {
  const app = await buildTestApp(t)
  const response = await app.inject({ method: 'GET', url: '/health' })
  t.equal(response.statusCode, 200)
  t.same(response.json(), { status: 'ok' })
})
