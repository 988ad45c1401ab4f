import { Type } from 'typebox'
import { SCOPES } from './authorization.js'

const Timestamp = Type.String({ format: 'date-time' })

export const UserSchema = Type.Object(
  {
    id: Type.String({ pattern: '^usr_' }),
    email: Type.String({ format: 'email' }),
    name: Type.Union([Type.String(), Type.Null()]),
    createdAt: Timestamp,
  },
  { $id: 'User', title: 'User' },
)

export const TokenResponseSchema = Type.Object(
  {
    user: Type.Unsafe(Type.Ref('User')),
    accessToken: Type.String({ description: 'EdDSA-signed JWT, valid for expiresIn seconds' }),
    refreshToken: Type.String({ description: 'Opaque; single use, rotated by POST /auth/refresh; valid 30 days' }),
    tokenType: Type.Literal('Bearer'),
    expiresIn: Type.Integer({ description: 'Seconds until the access token expires' }),
  },
  { $id: 'TokenResponse', title: 'TokenResponse' },
)

export const RoleSchema = Type.Union(
  [Type.Literal('owner'), Type.Literal('admin'), Type.Literal('member'), Type.Literal('viewer')],
  { $id: 'Role', title: 'Role', description: 'owner > admin > member > viewer' },
)
export const RoleRef = Type.Unsafe<'owner' | 'admin' | 'member' | 'viewer'>(Type.Ref('Role'))

export const ScopeSchema = Type.Union(
  SCOPES.map((scope) => Type.Literal(scope)),
  { $id: 'Scope', title: 'Scope' },
)
export const ScopeRef = Type.Unsafe<(typeof SCOPES)[number]>(Type.Ref('Scope'))

const Email = Type.String({ format: 'email', minLength: 3, maxLength: 254 })

export const SignupBody = Type.Object(
  {
    email: Email,
    // Length is checked in code so that it counts characters, not UTF-16 units.
    password: Type.String({
      minLength: 1,
      maxLength: 4096,
      description: '8 to 1024 characters, not a common password',
    }),
    name: Type.Optional(Type.String({ minLength: 1, maxLength: 200 })),
  },
  { additionalProperties: false },
)

export const LoginBody = Type.Object(
  { email: Email, password: Type.String({ minLength: 1, maxLength: 4096 }) },
  { additionalProperties: false },
)

export const RefreshBody = Type.Object(
  { refreshToken: Type.String({ minLength: 1, maxLength: 200 }) },
  { additionalProperties: false },
)

export const MeSchema = Type.Object(
  {
    user: Type.Unsafe(Type.Ref('User')),
    memberships: Type.Array(
      Type.Object({ orgId: Type.String(), orgName: Type.String(), personal: Type.Boolean(), role: RoleRef }),
    ),
    authenticatedVia: Type.Union([
      Type.Literal('access-token'),
      Type.Literal('external-token'),
      Type.Literal('api-key'),
    ]),
    scopes: Type.Union([Type.Array(ScopeRef), Type.Null()], { description: 'null: a user session, all scopes' }),
  },
  { $id: 'Me', title: 'Me' },
)

export const JwksSchema = Type.Object(
  { keys: Type.Array(Type.Object({}, { additionalProperties: true })) },
  { $id: 'Jwks', title: 'Jwks' },
)

export const ApiKeySchema = Type.Object(
  {
    id: Type.String({ pattern: '^key_' }),
    name: Type.String(),
    orgId: Type.String(),
    prefix: Type.String({ description: 'The first characters of the key, to tell keys apart' }),
    scopes: Type.Array(ScopeRef),
    createdBy: Type.String(),
    createdAt: Timestamp,
    expiresAt: Type.Union([Timestamp, Type.Null()]),
    lastUsedAt: Type.Union([Timestamp, Type.Null()]),
  },
  { $id: 'ApiKey', title: 'ApiKey' },
)

export const CreatedApiKeySchema = Type.Object(
  {
    ...ApiKeySchema.properties,
    key: Type.String({ description: 'The secret key. Shown only in this response; store it now.' }),
  },
  { $id: 'CreatedApiKey', title: 'CreatedApiKey' },
)

export const CreateApiKeyBody = Type.Object(
  {
    name: Type.String({ minLength: 1, maxLength: 200 }),
    orgId: Type.String({ minLength: 1, maxLength: 100 }),
    scopes: Type.Array(ScopeRef, { minItems: 1, maxItems: 20 }),
    expiresAt: Type.Optional(Type.String({ format: 'date-time' })),
  },
  { additionalProperties: false },
)

export const Pagination = {
  limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 100, default: 20 })),
  cursor: Type.Optional(Type.String({ minLength: 1, maxLength: 500 })),
}

export const ListApiKeysQuery = Type.Object(
  { orgId: Type.String({ minLength: 1, maxLength: 100 }), ...Pagination },
  { additionalProperties: false },
)

export const ApiKeyListSchema = Type.Object(
  { data: Type.Array(Type.Unsafe(Type.Ref('ApiKey'))), nextCursor: Type.Union([Type.String(), Type.Null()]) },
  { $id: 'ApiKeyList', title: 'ApiKeyList' },
)

export const IdParams = Type.Object(
  { id: Type.String({ minLength: 1, maxLength: 100 }) },
  { additionalProperties: false },
)

export const authSchemas = [
  UserSchema,
  TokenResponseSchema,
  RoleSchema,
  ScopeSchema,
  MeSchema,
  JwksSchema,
  ApiKeySchema,
  CreatedApiKeySchema,
  ApiKeyListSchema,
]

/**
 * Runs before validation on routes that take an email: surrounding whitespace (autofill, pasted
 * text) is not part of the address, and trimming first lets `format: email` judge the address itself.
 */
export async function trimEmailField(request: { body: unknown }) {
  const body = request.body as { email?: unknown } | null
  if (body && typeof body === 'object' && typeof body.email === 'string') body.email = body.email.trim()
}
