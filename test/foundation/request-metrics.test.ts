import { Registry } from 'prom-client'
import t from 'tap'
import { RequestMetrics } from '../../src/lib/request-metrics.js'

const NAMES = {
  counter: 'requests_total',
  counterHelp: 'Requests answered',
  histogram: 'request_seconds',
  histogramHelp: 'Time to answer',
}

/** The exposition's sample lines, by their text before the value. */
function samples(text: string): Map<string, number> {
  const found = new Map<string, number>()
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue
    const space = line.lastIndexOf(' ')
    found.set(line.slice(0, space), Number(line.slice(space + 1)))
  }
  return found
}

t.test('counts and cumulative buckets per method, route and status', async (t) => {
  const registry = new Registry()
  // Bounds given out of order are sorted, as Prometheus buckets must be.
  const metrics = new RequestMetrics(registry, NAMES, [0.1, 0.01, 1])
  for (const seconds of [0.005, 0.01, 0.05, 0.5, 3]) metrics.record('GET', '/items/:id', 200, seconds)
  metrics.record('POST', '/items', 201, 0.02)
  metrics.record('GET', '/items/:id', 404, 0.001)

  const text = await registry.metrics()
  t.match(text, /^# HELP requests_total Requests answered$/m)
  t.match(text, /^# TYPE requests_total counter$/m)
  t.match(text, /^# TYPE request_seconds histogram$/m)
  const found = samples(text)
  const labels = 'method="GET",route="/items/:id",status_code="200"'
  t.equal(found.get(`requests_total{${labels}}`), 5)
  t.equal(found.get(`requests_total{method="POST",route="/items",status_code="201"}`), 1)
  t.equal(found.get(`requests_total{method="GET",route="/items/:id",status_code="404"}`), 1)
  // An observation equal to a bound counts in that bucket (le is "less than or equal").
  t.equal(found.get(`request_seconds_bucket{le="0.01",${labels}}`), 2)
  t.equal(found.get(`request_seconds_bucket{le="0.1",${labels}}`), 3)
  t.equal(found.get(`request_seconds_bucket{le="1",${labels}}`), 4)
  t.equal(found.get(`request_seconds_bucket{le="+Inf",${labels}}`), 5)
  t.equal(found.get(`request_seconds_count{${labels}}`), 5)
  t.ok(Math.abs((found.get(`request_seconds_sum{${labels}}`) ?? 0) - 3.565) < 1e-9, 'the sum of durations')
  t.equal(found.get('request_seconds_bucket{le="0.01",method="POST",route="/items",status_code="201"}'), 0)
  t.equal(found.get('request_seconds_bucket{le="0.1",method="POST",route="/items",status_code="201"}'), 1)
})

t.test('series are exported as prom-client metrics: single reads, JSON and reset', async (t) => {
  const registry = new Registry()
  const metrics = new RequestMetrics(registry, NAMES, [0.01])
  metrics.record('GET', '/health', 200, 0.002)

  t.match(await registry.getSingleMetricAsString('requests_total'), /^requests_total\{.*\} 1$/m)
  const json = await registry.getMetricsAsJSON()
  const counter = json.find((metric) => metric.name === 'requests_total')
  t.same(counter?.values, [{ labels: { method: 'GET', route: '/health', status_code: '200' }, value: 1 }])
  t.throws(() => new RequestMetrics(registry, NAMES, [0.01]), /already been registered/, 'names stay unique')

  registry.resetMetrics()
  t.notMatch(await registry.metrics(), /^requests_total\{/m, 'reset empties the series')
  metrics.record('GET', '/health', 200, 0.002)
  t.match(await registry.metrics(), /^requests_total\{.*\} 1$/m, 'and counting starts again')
})
