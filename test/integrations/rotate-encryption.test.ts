import { randomBytes } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { eq } from 'drizzle-orm'
import type { FastifyInstance } from 'fastify'
import t from 'tap'
import { buildApp } from '../../src/app.js'
import { openDatabase } from '../../src/db/client.js'
import { orgCredentials, signingKeys, webhookEndpoints } from '../../src/db/schema/index.js'
import { CryptoBox } from '../../src/lib/crypto-box.js'
import { type Account, account, bearer, callAs, createApiKey, type Test, uniqueAddress } from '../auth/support.js'
import { readChat } from '../chat/support.js'
import { startFakeOpenAI } from '../fakes/openai.js'
import { eventually, LogCapture, testConfig } from '../helper.js'
import { runNodeScript } from '../support/server-process.js'
import { Receiver, verifyDelivery } from '../webhooks/receiver.js'

/**
 * Changing the instance encryption key: `npm run keys:rotate-encryption` re-seals every stored
 * secret (signing keys, webhook endpoint secrets current and previous, org credentials) under the
 * new ENCRYPTION_KEY while the old one is given as ENCRYPTION_KEY_RETIRED. Run against an embedded
 * database in a temp DATA_DIR, which the real app opens before and after, one process at a time.
 */

const KEY_A = randomBytes(32).toString('base64')
const KEY_B = randomBytes(32).toString('base64')
const ID_A = CryptoBox.keyId(Buffer.from(KEY_A, 'base64'))
const ID_B = CryptoBox.keyId(Buffer.from(KEY_B, 'base64'))
const SERVER_KEY = 'sk-server-rotation-5d2e90'
const ORG_KEY = `sk-org-rotation-${randomBytes(12).toString('hex')}`

const dataDir = mkdtempSync(join(tmpdir(), 'backplane-rotate-encryption-'))
t.teardown(() => rmSync(dataDir, { recursive: true, force: true }))
const openai = await startFakeOpenAI(t)
const receiver = await Receiver.start(t)

const appEnv = {
  DATA_DIR: dataDir,
  OPENAI_API_KEY: SERVER_KEY,
  OPENAI_BASE_URL: openai.baseURL,
  CHAT_DEFAULT_MODEL: 'gpt-4o-mini',
  CHAT_FALLBACK_MODELS: 'gpt-4o-mini',
  CHAT_PROVIDER_MAX_RETRIES: '0',
  WEBHOOK_ALLOW_PRIVATE_TARGETS: 'true',
  JOBS_POLL_INTERVAL_MS: '500',
}

/**
 * The real app on the temp DATA_DIR with these encryption keys; closed when `use` ends, since
 * the embedded database admits one process at a time (the CLI runs between two apps).
 */
async function withApp(
  keys: { ENCRYPTION_KEY: string; ENCRYPTION_KEY_RETIRED?: string },
  use: (app: FastifyInstance) => Promise<void>,
  logs?: LogCapture,
): Promise<void> {
  const app = await buildApp(
    testConfig({ ...appEnv, ...keys, ...(logs ? { LOG_LEVEL: 'info' } : {}) }),
    logs ? { logStream: logs } : {},
  )
  try {
    await app.ready()
    await use(app)
  } finally {
    await app.close()
  }
}

const cliEnv = (keys: { ENCRYPTION_KEY: string; ENCRYPTION_KEY_RETIRED?: string }) => ({
  DATA_DIR: dataDir,
  DATABASE_URL: undefined,
  ENCRYPTION_KEY_RETIRED: undefined,
  LOG_LEVEL: 'silent',
  ...keys,
})

async function runCli(t: Test, keys: { ENCRYPTION_KEY: string; ENCRYPTION_KEY_RETIRED?: string }) {
  const cli = runNodeScript(t, 'src/db/rotate-encryption-cli.ts', cliEnv(keys))
  const { code } = await cli.exited
  return { code, stdout: cli.stdout().trim(), stderr: cli.stderr().trim() }
}

/** Every sealed value in the database, with what it is bound to. */
async function sealedValues(): Promise<{ label: string; sealed: string; aad: string }[]> {
  const database = await openDatabase({ DATABASE_URL: undefined, DATA_DIR: dataDir, DATABASE_POOL_MAX: 1 })
  try {
    const values: { label: string; sealed: string; aad: string }[] = []
    for (const row of await database.db.select().from(signingKeys)) {
      values.push({ label: `signing key ${row.kid}`, sealed: row.privateJwkSealed, aad: `signing-key:${row.kid}` })
    }
    for (const row of await database.db.select().from(webhookEndpoints)) {
      const aad = `webhook-endpoint:${row.id}`
      values.push({ label: `secret of ${row.id}`, sealed: row.secretSealed, aad })
      if (row.previousSecretSealed) {
        values.push({ label: `previous secret of ${row.id}`, sealed: row.previousSecretSealed, aad })
      }
    }
    for (const row of await database.db.select().from(orgCredentials)) {
      const aad = `org-credential:${row.orgId}:${row.service}`
      values.push({ label: `${row.service} key of ${row.orgId}`, sealed: row.sealedKey, aad })
    }
    return values
  } finally {
    await database.close()
  }
}

async function chatKey(t: Test, app: FastifyInstance, who: Pick<Account, 'headers'>, label: string) {
  const from = openai.requests.length
  const response = await callAs(app, who, 'POST', '/chat', { message: `question: ${label}` })
  t.ok(readChat(t, response, label).done, `${label}: answered`)
  return openai.requests
    .slice(from)
    .filter((request) => request.kind === 'chat')
    .map((request) => request.apiKey)
}

/** What the first app created, for the later ones. */
let owner: Account
let apiKey: string
let endpoint: { id: string; first: string; current: string }

t.test('with ENCRYPTION_KEY=A: an org credential, a webhook endpoint (rotated once), a signing key', async (t) => {
  await withApp({ ENCRYPTION_KEY: KEY_A }, async (app) => {
    owner = await account(app)
    const put = await app.inject({
      method: 'PUT',
      url: `/api/v1/orgs/${owner.personalOrgId}/integrations/openai`,
      headers: owner.headers,
      payload: { apiKey: ORG_KEY },
      remoteAddress: uniqueAddress(),
    })
    t.equal(put.statusCode, 200, `org key stored (${put.body})`)
    t.same(await chatKey(t, app, owner, 'before rotation'), [ORG_KEY], "the org's chat uses its key")

    const created = await callAs(app, owner, 'POST', '/webhook-endpoints', {
      url: receiver.url,
      events: ['project.created'],
    })
    t.equal(created.statusCode, 201, `endpoint created (${created.body.slice(0, 200)})`)
    const rotated = await callAs(app, owner, 'POST', `/webhook-endpoints/${created.json().id}/rotate-secret`)
    t.equal(rotated.statusCode, 200, 'its secret rotated: the previous one is stored (sealed) too')
    endpoint = { id: created.json().id, first: created.json().secret, current: rotated.json().secret }
    apiKey = (await createApiKey(app, owner, owner.personalOrgId, ['chat'])).key
  })

  const values = await sealedValues()
  t.same(
    values.map((value) => value.label.split(' ')[0]),
    ['signing', 'secret', 'previous', 'openai'],
    'one signing key, an endpoint secret and its previous one, an org credential',
  )
  for (const value of values) t.equal(value.sealed.split('.')[1], ID_A, `${value.label}: sealed under A`)
})

/**
 * Seals the stored signing keys under `to` for the length of `use`, then puts back the values
 * sealed under A, so that an app with `to` alone starts and what else it cannot open shows.
 */
async function withSigningKeysUnder(to: string, use: () => Promise<void>): Promise<void> {
  const box = new CryptoBox(Buffer.from(to, 'base64'), [Buffer.from(KEY_A, 'base64')])
  const database = await openDatabase({ DATABASE_URL: undefined, DATA_DIR: dataDir, DATABASE_POOL_MAX: 1 })
  const originals = await database.db.select().from(signingKeys)
  try {
    for (const row of originals) {
      const aad = `signing-key:${row.kid}`
      await database.db
        .update(signingKeys)
        .set({ privateJwkSealed: box.seal(box.open(row.privateJwkSealed, aad), aad) })
        .where(eq(signingKeys.kid, row.kid))
    }
  } finally {
    await database.close()
  }
  try {
    await use()
  } finally {
    const restore = await openDatabase({ DATABASE_URL: undefined, DATA_DIR: dataDir, DATABASE_POOL_MAX: 1 })
    try {
      for (const row of originals) {
        await restore.db
          .update(signingKeys)
          .set({ privateJwkSealed: row.privateJwkSealed })
          .where(eq(signingKeys.kid, row.kid))
      }
    } finally {
      await restore.close()
    }
  }
}

t.test('with ENCRYPTION_KEY=B alone, before re-sealing: the org credential does not open', async (t) => {
  const logs = new LogCapture()
  // The server would not start with signing keys B cannot open (the next test): this one looks
  // at an org credential alone.
  await withSigningKeysUnder(KEY_B, () =>
    withApp(
      { ENCRYPTION_KEY: KEY_B },
      async (app) => {
        t.same(await chatKey(t, app, { headers: bearer(apiKey) }, 'unopenable'), [SERVER_KEY], "the server's key")
        const refused = logs.lines.filter((line) => line.msg === 'an org credential cannot be opened')
        t.equal(refused.length, 1, 'logged once')
        t.match(refused[0], { level: 50, orgId: owner.personalOrgId, service: 'openai' }, 'as an error, naming the org')
      },
      logs,
    ),
  )
  t.notOk(
    logs.raw.some((line) => line.includes(ORG_KEY)),
    'the key is not in the log',
  )
  const values = await sealedValues()
  t.ok(
    values.every((value) => value.sealed.split('.')[1] === ID_A),
    'nothing was sealed anew under B meanwhile',
  )
})

t.test('the CLI without the retired key fails and changes nothing', async (t) => {
  const before = await sealedValues()
  const run = await runCli(t, { ENCRYPTION_KEY: KEY_B })
  t.equal(run.code, 1, 'exits 1')
  t.match(run.stderr, /unknown key/, `says why (${run.stderr.slice(0, 300)})`)
  t.same(await sealedValues(), before, 'every value as it was')
})

t.test('the server refuses to start when ENCRYPTION_KEY does not open the stored signing keys', async (t) => {
  const before = await sealedValues()
  await t.rejects(
    buildApp(testConfig({ ...appEnv, ENCRYPTION_KEY: KEY_B })),
    { name: 'ConfigError', variable: 'ENCRYPTION_KEY', message: /ENCRYPTION_KEY_RETIRED/ },
    'building the app fails with a configuration error',
  )
  const server = runNodeScript(t, 'src/server.ts', {
    ...cliEnv({ ENCRYPTION_KEY: KEY_B }),
    PORT: '0',
    HOST: '127.0.0.1',
  })
  const { code } = await server.exited
  t.equal(code, 1, 'the server exits 1 before listening')
  const lines = server.stderr().trim().split('\n')
  t.equal(lines.length, 1, `one line (${server.stderr().slice(0, 500)})`)
  t.match(
    lines[0],
    new RegExp(`^Invalid configuration: ENCRYPTION_KEY .*unknown key \\(${ID_A}\\).*ENCRYPTION_KEY_RETIRED`),
  )
  t.notMatch(server.stdout(), /listening/i, 'never listened')
  const worker = runNodeScript(t, 'src/worker.ts', cliEnv({ ENCRYPTION_KEY: KEY_B }))
  t.equal((await worker.exited).code, 1, 'the worker exits 1 as well')
  t.match(
    worker.stderr().trim(),
    /^Invalid configuration: ENCRYPTION_KEY [^\n]*ENCRYPTION_KEY_RETIRED[^\n]*$/,
    'in one line',
  )
  t.same(await sealedValues(), before, 'nothing was sealed anew')
})

t.test('npm run keys:rotate-encryption re-seals everything under B', async (t) => {
  const run = await runCli(t, { ENCRYPTION_KEY: KEY_B, ENCRYPTION_KEY_RETIRED: KEY_A })
  t.equal(run.code, 0, `exits 0 (stderr: ${run.stderr.slice(0, 500)})`)
  t.equal(
    run.stdout,
    `Re-sealed under key ${ID_B}: 1 signing keys, 1 webhook endpoint secrets, 1 previous webhook endpoint secrets, 1 org credentials.`,
    'prints the counts by kind',
  )
  t.notOk(`${run.stdout}\n${run.stderr}`.includes(ORG_KEY), 'the key is not printed')

  const values = await sealedValues()
  t.equal(values.length, 4)
  const onlyB = new CryptoBox(Buffer.from(KEY_B, 'base64'))
  for (const value of values) {
    t.equal(value.sealed.split('.')[1], ID_B, `${value.label}: names B's key id`)
    t.doesNotThrow(() => onlyB.open(value.sealed, value.aad), `${value.label}: opens with B alone`)
  }
  const opened = new Map(values.map((value) => [value.label.split(' ')[0], onlyB.open(value.sealed, value.aad)]))
  t.equal(opened.get('openai'), ORG_KEY, 'the org key is the same key')
  t.equal(opened.get('secret'), endpoint.current, "the endpoint's secret is the same")
  t.equal(opened.get('previous'), endpoint.first, 'and its previous one')
  t.match(JSON.parse(opened.get('signing') ?? '{}'), { kty: 'OKP', crv: 'Ed25519', d: String }, 'a private JWK')
})

t.test('with ENCRYPTION_KEY=B alone after re-sealing, everything works', async (t) => {
  const logs = new LogCapture()
  await withApp(
    { ENCRYPTION_KEY: KEY_B },
    async (app) => {
      const login = await app.inject({
        method: 'POST',
        url: '/api/v1/auth/login',
        payload: { email: owner.email, password: owner.password },
        remoteAddress: uniqueAddress(),
      })
      t.equal(login.statusCode, 200, `login works: the signing key opens (${login.body.slice(0, 200)})`)
      const session = { headers: bearer(login.json().accessToken) }
      const me = await callAs(app, session, 'GET', '/auth/me')
      t.equal(me.statusCode, 200, 'the new token is accepted')
      t.equal((await callAs(app, owner, 'GET', '/auth/me')).statusCode, 200, 'so is the one signed before')

      t.same(await chatKey(t, app, session, 'after rotation'), [ORG_KEY], "the org's chat uses its key again")
      t.same(
        await chatKey(t, app, { headers: bearer(apiKey) }, 'after rotation, API key'),
        [ORG_KEY],
        'with an API key too',
      )

      const from = receiver.received.length
      const test = await callAs(app, session, 'POST', `/webhook-endpoints/${endpoint.id}/test`)
      t.equal(test.statusCode, 202, `a test delivery is queued (${test.body.slice(0, 200)})`)
      t.ok(await eventually(() => receiver.received.length > from, 20_000), 'and delivered')
      const delivery = receiver.nth(from)
      t.doesNotThrow(() => verifyDelivery(delivery, endpoint.current), "signed with the endpoint's secret")
      t.doesNotThrow(() => verifyDelivery(delivery, endpoint.first), 'and its previous one, still overlapping')
      const rotated = await callAs(app, session, 'POST', `/webhook-endpoints/${endpoint.id}/rotate-secret`)
      t.equal(rotated.statusCode, 200, 'the secret can be rotated')
    },
    logs,
  )
  t.notOk(
    logs.lines.some((line) => line.msg === 'an org credential cannot be opened'),
    'no credential failed to open',
  )
  t.notOk(
    logs.lines.some((line) => line.msg === 'signing keys not loaded yet'),
    'the signing keys loaded at start',
  )
})

t.test('running the CLI again re-seals nothing', async (t) => {
  const before = await sealedValues()
  const run = await runCli(t, { ENCRYPTION_KEY: KEY_B, ENCRYPTION_KEY_RETIRED: KEY_A })
  t.equal(run.code, 0, `exits 0 (stderr: ${run.stderr.slice(0, 500)})`)
  t.equal(
    run.stdout,
    `Re-sealed under key ${ID_B}: 0 signing keys, 0 webhook endpoint secrets, 0 previous webhook endpoint secrets, 0 org credentials.`,
  )
  const after = await sealedValues()
  t.same(after, before, 'every value as it was')
  t.ok(
    after.every((value) => value.sealed.split('.')[1] === ID_B),
    'all under B',
  )
})
