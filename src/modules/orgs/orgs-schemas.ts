import { Type } from 'typebox'
import { Pagination, RoleRef } from '../auth/auth-schemas.js'

const Timestamp = Type.String({ format: 'date-time' })

export const OrgSchema = Type.Object(
  {
    id: Type.String({ pattern: '^org_' }),
    name: Type.String(),
    personal: Type.Boolean(),
    role: RoleRef,
    createdAt: Timestamp,
  },
  { $id: 'Org', title: 'Org', description: 'An organization, as seen by the caller (with their role)' },
)

export const OrgListSchema = Type.Object(
  { data: Type.Array(Type.Unsafe(Type.Ref('Org'))), nextCursor: Type.Union([Type.String(), Type.Null()]) },
  { $id: 'OrgList', title: 'OrgList' },
)

export const MemberSchema = Type.Object(
  {
    userId: Type.String(),
    email: Type.String(),
    name: Type.Union([Type.String(), Type.Null()]),
    role: RoleRef,
    createdAt: Timestamp,
  },
  { $id: 'Member', title: 'Member' },
)

export const MemberListSchema = Type.Object(
  { data: Type.Array(Type.Unsafe(Type.Ref('Member'))), nextCursor: Type.Union([Type.String(), Type.Null()]) },
  { $id: 'MemberList', title: 'MemberList' },
)

export const AuditEntrySchema = Type.Object(
  {
    id: Type.String(),
    orgId: Type.Union([Type.String(), Type.Null()]),
    action: Type.String({ description: 'e.g. auth.login, auth.login_failed, api_key.created, member.role_changed' }),
    actorUserId: Type.Union([Type.String(), Type.Null()]),
    actorKeyId: Type.Union([Type.String(), Type.Null()]),
    targetType: Type.Union([Type.String(), Type.Null()]),
    targetId: Type.Union([Type.String(), Type.Null()]),
    ip: Type.Union([Type.String(), Type.Null()]),
    metadata: Type.Object({}, { additionalProperties: true }),
    createdAt: Timestamp,
  },
  { $id: 'AuditEntry', title: 'AuditEntry' },
)

export const AuditListSchema = Type.Object(
  { data: Type.Array(Type.Unsafe(Type.Ref('AuditEntry'))), nextCursor: Type.Union([Type.String(), Type.Null()]) },
  { $id: 'AuditList', title: 'AuditList' },
)

export const CreateOrgBody = Type.Object(
  { name: Type.String({ minLength: 1, maxLength: 200 }) },
  { additionalProperties: false },
)

export const AddMemberBody = Type.Object(
  { email: Type.String({ format: 'email', maxLength: 254 }), role: RoleRef },
  { additionalProperties: false },
)

export const ChangeRoleBody = Type.Object({ role: RoleRef }, { additionalProperties: false })

export const OrgParams = Type.Object(
  { orgId: Type.String({ minLength: 1, maxLength: 100 }) },
  { additionalProperties: false },
)
export const MemberParams = Type.Object(
  { orgId: Type.String({ minLength: 1, maxLength: 100 }), userId: Type.String({ minLength: 1, maxLength: 100 }) },
  { additionalProperties: false },
)
export const PageQuery = Type.Object({ ...Pagination }, { additionalProperties: false })

export const orgsSchemas = [OrgSchema, OrgListSchema, MemberSchema, MemberListSchema, AuditEntrySchema, AuditListSchema]
