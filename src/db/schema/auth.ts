import { sql } from 'drizzle-orm'
import { boolean, index, jsonb, pgEnum, pgTable, primaryKey, text, timestamp, uniqueIndex } from 'drizzle-orm/pg-core'

const createdAt = () => timestamp({ withTimezone: true }).notNull().defaultNow()

export const users = pgTable(
  'users',
  {
    id: text().primaryKey(),
    // Normalised (NFKC, trimmed, lower-cased) so that one mailbox is one account.
    email: text().notNull(),
    name: text(),
    // Null for users provisioned by an external identity provider.
    passwordHash: text(),
    // Operators of this deployment (inbound webhook events, replays); granted by `npm run admin:grant`.
    platformAdmin: boolean().notNull().default(false),
    createdAt: createdAt(),
    updatedAt: timestamp({ withTimezone: true }).notNull().defaultNow(),
  },
  (table) => [uniqueIndex('users_email_key').on(table.email)],
)

export const externalIdentities = pgTable(
  'external_identities',
  {
    issuer: text().notNull(),
    subject: text().notNull(),
    userId: text()
      .notNull()
      .references(() => users.id, { onDelete: 'cascade' }),
    createdAt: createdAt(),
  },
  (table) => [primaryKey({ columns: [table.issuer, table.subject] })],
)

export const roleEnum = pgEnum('org_role', ['owner', 'admin', 'member', 'viewer'])

export const orgs = pgTable('orgs', {
  id: text().primaryKey(),
  name: text().notNull(),
  // Every user has exactly one personal org, created at sign-up.
  personalFor: text().references(() => users.id, { onDelete: 'cascade' }),
  createdAt: createdAt(),
})

export const memberships = pgTable(
  'memberships',
  {
    orgId: text()
      .notNull()
      .references(() => orgs.id, { onDelete: 'cascade' }),
    userId: text()
      .notNull()
      .references(() => users.id, { onDelete: 'cascade' }),
    role: roleEnum().notNull(),
    createdAt: createdAt(),
  },
  (table) => [primaryKey({ columns: [table.orgId, table.userId] }), index('memberships_user_idx').on(table.userId)],
)

export const refreshTokens = pgTable(
  'refresh_tokens',
  {
    id: text().primaryKey(),
    // Every token descended from one login shares a family; reuse of a rotated token revokes it.
    familyId: text().notNull(),
    userId: text()
      .notNull()
      .references(() => users.id, { onDelete: 'cascade' }),
    tokenHash: text().notNull(),
    expiresAt: timestamp({ withTimezone: true }).notNull(),
    rotatedAt: timestamp({ withTimezone: true }),
    revokedAt: timestamp({ withTimezone: true }),
    createdAt: createdAt(),
  },
  (table) => [
    uniqueIndex('refresh_tokens_hash_key').on(table.tokenHash),
    index('refresh_tokens_family_idx').on(table.familyId),
  ],
)

export const signingKeys = pgTable('signing_keys', {
  kid: text().primaryKey(),
  alg: text().notNull(),
  publicJwk: jsonb().notNull(),
  // The private JWK, sealed with the instance encryption key (see lib/crypto-box).
  privateJwkSealed: text().notNull(),
  createdAt: createdAt(),
  // Set when a newer key takes over signing; the public key stays published until tokens expire.
  retiredAt: timestamp({ withTimezone: true }),
})

export const apiKeys = pgTable(
  'api_keys',
  {
    id: text().primaryKey(),
    orgId: text()
      .notNull()
      .references(() => orgs.id, { onDelete: 'cascade' }),
    createdBy: text()
      .notNull()
      .references(() => users.id, { onDelete: 'cascade' }),
    name: text().notNull(),
    // First characters of the key, shown in lists so people can tell keys apart.
    prefix: text().notNull(),
    keyHash: text().notNull(),
    scopes: text()
      .array()
      .notNull()
      .default(sql`'{}'::text[]`),
    expiresAt: timestamp({ withTimezone: true }),
    lastUsedAt: timestamp({ withTimezone: true }),
    revokedAt: timestamp({ withTimezone: true }),
    createdAt: createdAt(),
  },
  (table) => [uniqueIndex('api_keys_hash_key').on(table.keyHash), index('api_keys_org_idx').on(table.orgId)],
)

export const auditLog = pgTable(
  'audit_log',
  {
    id: text().primaryKey(),
    orgId: text(),
    actorUserId: text(),
    actorKeyId: text(),
    action: text().notNull(),
    targetType: text(),
    targetId: text(),
    ip: text(),
    metadata: jsonb().notNull().default({}),
    createdAt: createdAt(),
  },
  (table) => [index('audit_log_org_idx').on(table.orgId, table.createdAt, table.id)],
)
