import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { ConfigError, ConfigSchema, corsOrigins, loadConfig } from '../../src/config.js'
import { exitWithin, isToolNoise, ROOT, runNodeScript } from '../support/server-process.js'

const load = (env: Record<string, string>) => loadConfig({ env, envFile: false })

t.test('defaults', async (t) => {
  const config = load({})
  t.equal(config.PORT, 3000)
  t.equal(config.HOST, '0.0.0.0')
  t.equal(config.DATA_DIR, './data')
  t.equal(config.DATABASE_URL, undefined, 'no DATABASE_URL means embedded PGlite')
  t.equal(config.WORKERS, true)
  t.equal(config.MIGRATE_ON_START, false)
  t.equal(config.WEBHOOK_ALLOW_PRIVATE_TARGETS, false)
  t.equal(config.BODY_LIMIT, 1024 * 1024)
  t.equal(config.TRUST_PROXY, false)
  t.equal(config.LOG_LEVEL, 'info')
  t.equal(config.NODE_ENV, 'development')
  t.equal(config.PUBLIC_URL, 'http://localhost:3000')
  t.equal(load({ PORT: '8081' }).PUBLIC_URL, 'http://localhost:8081', 'PUBLIC_URL follows PORT')
  t.equal(
    load({ PUBLIC_URL: 'https://api.example.com/' }).PUBLIC_URL,
    'https://api.example.com',
    'an explicit PUBLIC_URL wins and loses its trailing slash',
  )
  t.equal(load({ PORT: '' }).PORT, 3000, 'an empty variable counts as unset')
})

t.test('coercion from environment strings', async (t) => {
  t.equal(load({ WORKERS: '0' }).WORKERS, false)
  t.equal(load({ WORKERS: 'false' }).WORKERS, false)
  t.equal(load({ WORKERS: '1' }).WORKERS, true)
  t.equal(load({ MIGRATE_ON_START: 'true' }).MIGRATE_ON_START, true)
  t.equal(load({ MIGRATE_ON_START: 'TRUE' }).MIGRATE_ON_START, true)
  const port = load({ PORT: '8080' }).PORT
  t.equal(port, 8080)
  t.equal(typeof port, 'number')
  t.equal(load({ TRUST_PROXY: '2' }).TRUST_PROXY, 2, 'a number is a hop count')
  t.equal(load({ TRUST_PROXY: '1' }).TRUST_PROXY, 1, '"1" is one hop, not true')
  t.equal(load({ TRUST_PROXY: 'true' }).TRUST_PROXY, true)
  t.equal(load({ TRUST_PROXY: 'false' }).TRUST_PROXY, false)
  t.equal(load({ BODY_LIMIT: '2048' }).BODY_LIMIT, 2048)
  t.equal(load({ DATABASE_URL: 'memory://' }).DATABASE_URL, 'memory://')
  t.equal(load({ DATABASE_URL: 'postgres://u:p@h:5432/db' }).DATABASE_URL, 'postgres://u:p@h:5432/db')
  t.equal(load({ LOG_LEVEL: 'debug' }).LOG_LEVEL, 'debug')
})

t.test('a malformed value throws a ConfigError naming the variable, never echoing the value', async (t) => {
  const cases: Array<{ env: Record<string, string>; variable: string; secret: string | null }> = [
    { env: { PORT: 'abcQz7' }, variable: 'PORT', secret: 'abcQz7' },
    { env: { PORT: '70000' }, variable: 'PORT', secret: '70000' },
    { env: { PORT: '-17' }, variable: 'PORT', secret: '-17' },
    { env: { LOG_LEVEL: 'loudQz7' }, variable: 'LOG_LEVEL', secret: 'loudQz7' },
    { env: { DATABASE_URL: 'mysql://dbuser:Qz7secret@db' }, variable: 'DATABASE_URL', secret: 'Qz7secret' },
    { env: { REDIS_URL: 'http://Qz7redis:6379' }, variable: 'REDIS_URL', secret: 'Qz7redis' },
    { env: { PUBLIC_URL: 'not a url Qz7' }, variable: 'PUBLIC_URL', secret: 'Qz7' },
    { env: { ENCRYPTION_KEY: 'shortQz7' }, variable: 'ENCRYPTION_KEY', secret: 'shortQz7' },
    { env: { CORS_ORIGINS: 'not-an-origin-Qz7' }, variable: 'CORS_ORIGINS', secret: 'Qz7' },
    {
      env: { CORS_ORIGINS: 'https://ok.example.com,https://Qz7.example.com/path' },
      variable: 'CORS_ORIGINS',
      secret: 'Qz7',
    },
    { env: { WORKERS: 'maybeQz7' }, variable: 'WORKERS', secret: 'maybeQz7' },
    { env: { TRUST_PROXY: 'Qz7hops' }, variable: 'TRUST_PROXY', secret: 'Qz7hops' },
    { env: { NODE_ENV: 'stagingQz7' }, variable: 'NODE_ENV', secret: 'stagingQz7' },
    {
      env: { AUTH_EXTERNAL_JWKS_URL: 'https://idp.example.com/Qz7/jwks.json' },
      variable: 'AUTH_EXTERNAL_JWKS_URL',
      secret: 'Qz7',
    },
    {
      env: { AUTH_EXTERNAL_ISSUER: 'https://Qz7.example.com', AUTH_EXTERNAL_AUDIENCE: 'backplane' },
      variable: 'AUTH_EXTERNAL_JWKS_URL',
      secret: 'Qz7',
    },
    {
      env: { WEBHOOK_ALLOW_PRIVATE_TARGETS: 'true', NODE_ENV: 'production' },
      variable: 'WEBHOOK_ALLOW_PRIVATE_TARGETS',
      // The message says "must not be true in production"; the 'yes' case below checks echoing.
      secret: null,
    },
    {
      env: { WEBHOOK_ALLOW_PRIVATE_TARGETS: 'yes', NODE_ENV: 'production' },
      variable: 'WEBHOOK_ALLOW_PRIVATE_TARGETS',
      secret: 'yes',
    },
  ]
  for (const { env, variable, secret } of cases) {
    const label = JSON.stringify(env)
    let thrown: unknown
    try {
      load(env)
    } catch (error) {
      thrown = error
    }
    if (!t.ok(thrown instanceof ConfigError, `${label} throws a ConfigError`)) continue
    const error = thrown as ConfigError
    t.equal(error.variable, variable, `${label} names ${variable}`)
    t.match(error.message, new RegExp(`\\b${variable}\\b`), `${label}: message names ${variable}`)
    if (secret !== null) t.notOk(error.message.includes(secret), `${label}: message does not contain the value`)
    t.notOk(error.message.includes('\n'), `${label}: message is one line`)
  }

  t.doesNotThrow(
    () =>
      load({
        AUTH_EXTERNAL_JWKS_URL: 'https://idp.example.com/.well-known/jwks.json',
        AUTH_EXTERNAL_ISSUER: 'https://idp.example.com/',
        AUTH_EXTERNAL_AUDIENCE: 'backplane',
      }),
    'complete external auth config is accepted',
  )
  t.equal(
    load({ WEBHOOK_ALLOW_PRIVATE_TARGETS: 'true', NODE_ENV: 'test' }).WEBHOOK_ALLOW_PRIVATE_TARGETS,
    true,
    'private webhook targets are allowed outside production',
  )
  t.same(
    corsOrigins(load({ CORS_ORIGINS: 'https://a.example.com, http://localhost:5173' }).CORS_ORIGINS),
    ['https://a.example.com', 'http://localhost:5173'],
    'valid origins are accepted',
  )
  t.equal(
    load({ ENCRYPTION_KEY: 'q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=' }).ENCRYPTION_KEY,
    'q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=',
    'a 32-byte base64 key is accepted',
  )
})

t.test('.env file', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'backplane-config-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const envFile = join(dir, '.env')
  writeFileSync(
    envFile,
    ['# comment', 'PORT=4100', 'LOG_LEVEL=debug', 'WORKERS=false', 'HOST=127.0.0.1', ''].join('\n'),
  )

  const fromFile = loadConfig({ env: {}, envFile })
  t.equal(fromFile.PORT, 4100, 'values from the file are used')
  t.equal(fromFile.LOG_LEVEL, 'debug')
  t.equal(fromFile.WORKERS, false)
  t.equal(fromFile.HOST, '127.0.0.1')
  t.equal(fromFile.PUBLIC_URL, 'http://localhost:4100')

  const overridden = loadConfig({ env: { PORT: '4200', WORKERS: 'true' }, envFile })
  t.equal(overridden.PORT, 4200, 'the real environment overrides the file')
  t.equal(overridden.WORKERS, true)
  t.equal(overridden.LOG_LEVEL, 'debug', 'variables only in the file still apply')

  t.equal(loadConfig({ env: {}, envFile: join(dir, 'missing.env') }).PORT, 3000, 'a missing file is ignored')
  t.equal(loadConfig({ env: {}, envFile: false }).PORT, 3000, 'envFile: false reads no file')

  writeFileSync(envFile, 'PORT=notaportQz7\n')
  t.throws(() => loadConfig({ env: {}, envFile }), ConfigError, 'a bad value in the file is reported too')
  try {
    loadConfig({ env: {}, envFile })
  } catch (error) {
    t.notOk((error as Error).message.includes('Qz7'), 'without echoing it')
  }
})

t.test('.env.example documents every variable with its default', async (t) => {
  const examplePath = join(ROOT, '.env.example')
  let text: string
  try {
    text = readFileSync(examplePath, 'utf8')
  } catch {
    t.fail('.env.example exists at the repository root')
    return
  }
  for (const key of Object.keys(ConfigSchema.properties)) {
    t.match(text, new RegExp(`^#?\\s*${key}=`, 'm'), `.env.example lists ${key}`)
  }
  // Copying the example to .env must give a working configuration equal to the defaults.
  t.same(loadConfig({ env: {}, envFile: examplePath }), load({}), 'the example values are the defaults')
})

t.test('process: a malformed variable stops start-up with one line naming it', async (t) => {
  const server = runNodeScript(t, 'src/server.ts', {
    PORT: 'abcQz7',
    HOST: '127.0.0.1',
    DATABASE_URL: 'memory://',
    LOG_LEVEL: 'info',
  })
  const exit = await exitWithin(server, 15_000)
  if (!t.ok(exit, 'the process exits on its own')) return
  t.not(exit?.code, 0, 'with a non-zero code')
  t.not(exit?.code, null, 'by exiting, not by a signal')
  const lines = server
    .stderr()
    .split('\n')
    .filter((line) => line.trim() !== '' && !isToolNoise(line))
  t.equal(lines.length, 1, `exactly one stderr line (got ${JSON.stringify(lines)})`)
  t.match(lines[0], /\bPORT\b/, 'naming PORT')
  t.notOk(lines[0]?.includes('Qz7'), 'without the value')
  t.notMatch(server.stdout(), /listening/i, 'never starts listening')
})
