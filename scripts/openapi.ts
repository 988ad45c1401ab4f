/**
 * `npm run openapi` writes openapi/openapi.json from the routes; `--check` fails when the committed
 * file differs from what the routes produce. Building the app also enforces the route contract
 * (operationId, tags, response schemas, closed input objects): a route without them fails here.
 */
import { readFileSync, writeFileSync } from 'node:fs'
import { buildApp } from '../src/app.js'
import { loadConfig } from '../src/config.js'

const OUTPUT = new URL('../openapi/openapi.json', import.meta.url)
const check = process.argv.includes('--check')

// A fixed environment, so the document never depends on the machine that generates it.
const config = loadConfig({
  env: { NODE_ENV: 'production', LOG_LEVEL: 'silent', DATABASE_URL: 'memory://', PUBLIC_URL: 'http://localhost:3000' },
  envFile: false,
})
const app = await buildApp(config)
await app.ready()
const document = `${JSON.stringify(app.swagger(), null, 2)}\n`
await app.close()

if (!check) {
  writeFileSync(OUTPUT, document)
  console.log('openapi/openapi.json written')
} else {
  let committed = ''
  try {
    committed = readFileSync(OUTPUT, 'utf8')
  } catch {
    // missing counts as stale
  }
  if (committed !== document) {
    console.error('openapi/openapi.json is stale: run `npm run openapi` and commit the result.')
    process.exit(1)
  }
  console.log('openapi/openapi.json is up to date')
}
