import { count, eq } from 'drizzle-orm'
import type { LightMyRequestResponse } from 'fastify'
import t from 'tap'
import { billingPlans, ConfigError, loadConfig } from '../../src/config.js'
import { memberships, projects } from '../../src/db/schema/index.js'
import {
  type Account,
  account,
  assertProblem,
  bearer,
  callAs,
  createApiKey,
  createOrg,
  type Test,
} from '../auth/support.js'
import { readChat } from '../chat/support.js'
import { startFakeOpenAI } from '../fakes/openai.js'
import { startFakeStripe } from '../fakes/stripe.js'
import { buildTestApp, TEST_ENCRYPTION_KEY } from '../helper.js'
import {
  addPlanPrices,
  billingEnv,
  deliverAll,
  FREE_LIMITS,
  paidCheckout,
  PLANS,
  PRO_LIMITS,
  PRO_PRICE,
  subscribe,
  subscriptionOf,
  TEAM_PRICE,
} from './support.js'

/**
 * What the plans limit: projects and seats (403 PLAN_LIMIT, checked in the transaction that adds
 * one, so concurrent additions cannot overshoot) and chat tokens per UTC day (429 PLAN_LIMIT with
 * Retry-After); and how BILLING_PLANS is validated at startup.
 */

const fake = await startFakeStripe(t)
addPlanPrices(fake)
const openai = await startFakeOpenAI(t)

const chatEnv = {
  OPENAI_API_KEY: 'sk-openai-billing-test',
  OPENAI_BASE_URL: openai.baseURL,
  CHAT_DEFAULT_MODEL: 'gpt-4o-mini',
  CHAT_FALLBACK_MODELS: '',
  CHAT_PROVIDER_MAX_RETRIES: '0',
}

const app = await buildTestApp(t, { env: billingEnv(fake, chatEnv) })

t.afterEach(() => {
  openai.control.clear()
})

const createProject = (who: Pick<Account, 'headers'>, orgId: string, name: string) =>
  callAs(app, who, 'POST', '/projects', { orgId, name })

const projectsIn = async (orgId: string) =>
  (await app.db.select({ n: count() }).from(projects).where(eq(projects.orgId, orgId)))[0]?.n ?? -1

const membersOf = async (orgId: string) =>
  (await app.db.select({ n: count() }).from(memberships).where(eq(memberships.orgId, orgId)))[0]?.n ?? -1

function addMemberAs(who: Pick<Account, 'headers'>, orgId: string, member: Pick<Account, 'email'>) {
  return callAs(app, who, 'POST', `/orgs/${orgId}/members`, { email: member.email, role: 'member' })
}

function assertPlanLimit(t: Test, response: LightMyRequestResponse, label: string) {
  assertProblem(t, response, 403, 'PLAN_LIMIT', label)
  t.match(response.json().detail, /upgrade/, `${label}: says how to get more`)
}

t.test('BILLING_PLANS and BILLING_FREE_PLAN are validated at startup', async (t) => {
  const base = { NODE_ENV: 'test', LOG_LEVEL: 'silent', ENCRYPTION_KEY: TEST_ENCRYPTION_KEY }
  const load = (env: Record<string, string>) => loadConfig({ env: { ...base, ...env }, envFile: false })
  const plans = (value: unknown) => ({ BILLING_PLANS: typeof value === 'string' ? value : JSON.stringify(value) })

  const cases: [string, Record<string, string>, string][] = [
    ['malformed JSON', plans('{"free": {"projects": 3}'), 'BILLING_PLANS'],
    ['not an object of plans', plans('[1, 2]'), 'BILLING_PLANS'],
    ['an unknown field', plans({ free: { projects: 3, seats: 2 } }), 'BILLING_PLANS'],
    ['a negative limit', plans({ free: { projects: -1 } }), 'BILLING_PLANS'],
    ['no seat at all', plans({ free: { members: 0 } }), 'BILLING_PLANS'],
    ['a price id that is not one', plans({ free: {}, pro: { priceId: 'prod_123' } }), 'BILLING_PLANS'],
    ['a bad plan id', plans({ free: {}, 'Pro Plan': { priceId: 'price_1' } }), 'BILLING_PLANS'],
    // A plan id outside the pattern must not exempt the plan from every other check.
    [
      'an invalid plan under a bad id',
      plans({ free: {}, Pro: { priceId: 'prod_1', projects: 'ten' } }),
      'BILLING_PLANS',
    ],
    [
      'two plans with one price',
      plans({ free: {}, pro: { priceId: 'price_1' }, team: { priceId: 'price_1' } }),
      'BILLING_PLANS',
    ],
    ['a free plan that is missing', { ...plans(PLANS), BILLING_FREE_PLAN: 'basic' }, 'BILLING_FREE_PLAN'],
    ['a free plan with a price', { ...plans(PLANS), BILLING_FREE_PLAN: 'pro' }, 'BILLING_FREE_PLAN'],
    ['no free plan among the plans', plans({ pro: { priceId: 'price_1' } }), 'BILLING_FREE_PLAN'],
    ['a free plan without BILLING_PLANS', { BILLING_FREE_PLAN: 'starter' }, 'BILLING_FREE_PLAN'],
  ]
  for (const [label, env, variable] of cases) {
    let thrown: unknown
    try {
      load(env)
    } catch (error) {
      thrown = error
    }
    t.ok(thrown instanceof ConfigError, `${label}: a ConfigError`)
    t.equal((thrown as ConfigError | undefined)?.variable, variable, `${label}: names ${variable}`)
    t.match(String((thrown as Error | undefined)?.message), variable, `${label}: the message names it too`)
  }

  const config = load({ ...plans(PLANS), CHAT_DAILY_TOKEN_BUDGET: '7' })
  t.same(
    billingPlans(config),
    [
      { id: 'free', priceId: null, ...FREE_LIMITS },
      { id: 'pro', priceId: PRO_PRICE, ...PRO_LIMITS },
      { id: 'team', priceId: TEAM_PRICE, dailyTokens: null, projects: null, members: 50 },
    ],
    'valid plans, a limit left out unlimited (CHAT_DAILY_TOKEN_BUDGET does not apply)',
  )
  t.same(
    billingPlans(load({ CHAT_DAILY_TOKEN_BUDGET: '7' })),
    [{ id: 'free', priceId: null, dailyTokens: 7, projects: null, members: null }],
    'without BILLING_PLANS: one free plan with the chat budget',
  )
  t.same(
    billingPlans(load({ CHAT_DAILY_TOKEN_BUDGET: '0' })),
    [{ id: 'free', priceId: null, dailyTokens: null, projects: null, members: null }],
    'a budget of 0 is no limit',
  )
  t.same(
    billingPlans(load({ ...plans({ basic: { projects: 1 } }), BILLING_FREE_PLAN: 'basic' })).map((plan) => plan.id),
    ['basic'],
    'any unpriced plan may be the free one',
  )
})

t.test("chat stops at the plan's tokens per day with 429 PLAN_LIMIT and Retry-After", async (t) => {
  const user = await account(app)
  const chat = (message: string) => callAs(app, user, 'POST', '/chat', { message })

  openai.next({ usage: { input: 40, output: 20 } })
  const first = readChat(t, await chat('hello')).done
  t.equal(first?.usage.totalTokens, 60, 'admitted with nothing used yet')
  const view = await subscriptionOf(app, user)
  t.equal(view.usage.dailyTokens, 60, 'the usage shows the tokens')
  t.equal(view.limits.dailyTokens, FREE_LIMITS.dailyTokens)

  const calls = openai.requests.length
  const refused = await chat('again')
  assertProblem(t, refused, 429, 'PLAN_LIMIT', 'over the daily tokens')
  const retryAfter = Number(refused.headers['retry-after'])
  t.ok(Number.isInteger(retryAfter) && retryAfter >= 1 && retryAfter <= 86_400, `until UTC midnight (${retryAfter} s)`)
  t.match(refused.json().detail, /free/, 'names the plan')
  t.equal(openai.requests.length, calls, 'the model was not called')

  await subscribe(t, app, fake, user, 'pro')
  openai.next({ usage: { input: 5, output: 5 } })
  t.ok(readChat(t, await chat('upgraded')).done, 'pro allows more at once')
})

t.test('projects beyond the plan are refused; an upgrade by webhook allows more at once', async (t) => {
  const owner = await account(app)
  const orgId = await createOrg(app, owner, 'Projects')
  for (const name of ['one', 'two']) t.equal((await createProject(owner, orgId, name)).statusCode, 201, name)

  assertPlanLimit(t, await createProject(owner, orgId, 'three'), 'the third on free')
  t.equal(await projectsIn(orgId), 2, 'no project created')
  const key = await createApiKey(app, owner, orgId, ['projects:write'])
  assertPlanLimit(t, await createProject({ headers: bearer(key.key) }, orgId, 'by key'), 'an API key too')
  const imported = await callAs(app, owner, 'POST', `/projects/import?orgId=${orgId}`, { name: 'imported' })
  assertPlanLimit(t, imported, 'an import too')
  t.equal(await projectsIn(orgId), 2, 'still two')
  t.equal((await subscriptionOf(app, owner, orgId)).usage.projects, 2)

  const other = await createOrg(app, owner, 'Other')
  t.equal((await createProject(owner, other, 'elsewhere')).statusCode, 201, 'the limit is per org')

  // The refusals above read the free plan (and may have cached it): the webhook's change must
  // apply to the very next request.
  const completion = await subscribe(t, app, fake, owner, 'pro', orgId)
  t.equal((await createProject(owner, orgId, 'three')).statusCode, 201, 'allowed after the upgrade')
  t.equal((await createProject(owner, orgId, 'four')).statusCode, 201)
  assertPlanLimit(t, await createProject(owner, orgId, 'five'), "beyond pro's 4")
  t.equal(await projectsIn(orgId), PRO_LIMITS.projects)

  await deliverAll(t, app, fake, [fake.updateSubscription(completion.subscription?.id ?? '', { priceId: TEAM_PRICE })])
  t.equal((await createProject(owner, orgId, 'five')).statusCode, 201, 'team: unlimited')

  await deliverAll(t, app, fake, [fake.deleteSubscription(completion.subscription?.id ?? '')])
  assertPlanLimit(t, await createProject(owner, orgId, 'six'), 'canceled: free again')
  t.equal(await projectsIn(orgId), 5, 'what exists is kept')
  t.same((await subscriptionOf(app, owner, orgId)).usage.projects, 5, 'and counted beyond the limit')
})

t.test('members beyond the seats are refused; an upgrade allows more', async (t) => {
  const owner = await account(app)
  const orgId = await createOrg(app, owner, 'Seats')
  const [first, second, third] = [await account(app), await account(app), await account(app)]
  if (!first || !second || !third) throw new Error('no accounts')

  t.equal((await addMemberAs(owner, orgId, first)).statusCode, 201, 'the second seat')
  assertPlanLimit(t, await addMemberAs(owner, orgId, second), 'the third seat on free')
  t.equal(await membersOf(orgId), FREE_LIMITS.members, 'nobody added')
  t.equal((await callAs(app, second, 'GET', `/billing/subscription?orgId=${orgId}`)).statusCode, 404, 'not a member')
  assertProblem(t, await addMemberAs(owner, orgId, first), 409, 'ALREADY_MEMBER', 'an existing member is a conflict')

  await subscribe(t, app, fake, owner, 'pro', orgId)
  t.equal((await addMemberAs(owner, orgId, second)).statusCode, 201, 'allowed after the upgrade')
  t.equal((await addMemberAs(owner, orgId, third)).statusCode, 201)
  t.equal((await subscriptionOf(app, owner, orgId)).usage.members, 4)
})

t.test('concurrent additions at the limit never exceed it', async (t) => {
  const owner = await account(app)
  const orgId = await createOrg(app, owner, 'Racing')
  t.equal((await createProject(owner, orgId, 'seed')).statusCode, 201)

  const attempts = await Promise.all(Array.from({ length: 8 }, (_, i) => createProject(owner, orgId, `racer ${i}`)))
  const statuses = attempts.map((response) => response.statusCode).sort()
  t.same(statuses, [201, 403, 403, 403, 403, 403, 403, 403], 'one more project, the rest refused')
  for (const refused of attempts.filter((response) => response.statusCode !== 201)) {
    t.equal(refused.json().code, 'PLAN_LIMIT')
  }
  t.equal(await projectsIn(orgId), FREE_LIMITS.projects, 'exactly the limit')

  const people = await Promise.all(Array.from({ length: 5 }, () => account(app)))
  const joins = await Promise.all(people.map((person) => addMemberAs(owner, orgId, person)))
  t.same(
    joins.map((response) => response.statusCode).sort(),
    [201, 403, 403, 403, 403],
    'one seat taken, the rest refused',
  )
  t.equal(await membersOf(orgId), FREE_LIMITS.members, 'exactly the seats')
})

t.test('a checkout that is not paid yet changes no limit', async (t) => {
  const owner = await account(app)
  const orgId = await createOrg(app, owner, 'Unpaid')
  await paidCheckout(t, app, fake, owner, 'pro', orgId)
  for (const name of ['one', 'two']) t.equal((await createProject(owner, orgId, name)).statusCode, 201)
  assertPlanLimit(t, await createProject(owner, orgId, 'three'), 'still free until Stripe says so')
})

t.test('additions on a cold plan cache with a small connection pool all succeed', async (t) => {
  // The plan is read while the addition's transaction holds its connection: read on another
  // connection, N concurrent additions would wait forever for an (N+1)th.
  const roomy = { ...PLANS, free: { ...PLANS.free, projects: 100 } }
  const small = await buildTestApp(t, {
    env: billingEnv(fake, { DATABASE_POOL_MAX: '2', BILLING_PLANS: JSON.stringify(roomy) }),
  })
  const owner = await account(small)
  const orgId = await createOrg(small, owner, 'Small pool')
  const created = await Promise.all(
    [0, 1, 2, 3].map((i) => callAs(small, owner, 'POST', '/projects', { orgId, name: `pooled ${i}` })),
  )
  t.same(
    created.map((response) => response.statusCode),
    [201, 201, 201, 201],
    'every one created',
  )
})
