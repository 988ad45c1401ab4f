import { Type } from 'typebox'
import { IdempotencyKeyHeader } from '../../plugins/idempotency.js'
import { Pagination } from '../auth/auth-schemas.js'

/** Largest `data` document, measured as compact JSON in UTF-8. */
export const MAX_DATA_BYTES = 1024 * 1024
/** Request bodies of project writes: a full-size document plus name, description and syntax. */
export const PROJECT_BODY_LIMIT = MAX_DATA_BYTES + 64 * 1024

const Timestamp = Type.String({ format: 'date-time' })
const Name = Type.String({ minLength: 1, maxLength: 200 })
const Description = Type.String({ maxLength: 2000 })
const DATA_DESCRIPTION = `Any JSON value, at most ${MAX_DATA_BYTES} bytes as compact JSON; nesting is bounded by JSON_MAX_DEPTH.`
const Data = Type.Unknown({ description: DATA_DESCRIPTION })
const OrgId = Type.String({ minLength: 1, maxLength: 100 })

const summaryFields = {
  id: Type.String({ pattern: '^prj_' }),
  orgId: Type.String({ pattern: '^org_' }),
  name: Type.String(),
  description: Type.String(),
  version: Type.Integer({ minimum: 1, description: 'Bumped by every change; the ETag is this number, quoted' }),
  createdBy: Type.String({ description: 'Id of the user who created it (kept after their account is deleted)' }),
  createdAt: Timestamp,
  updatedAt: Timestamp,
}

export const ProjectSchema = Type.Object(
  { ...summaryFields, data: Data },
  { $id: 'Project', title: 'Project', description: 'A JSON document owned by an organization' },
)

export const ProjectSummarySchema = Type.Object(summaryFields, {
  $id: 'ProjectSummary',
  title: 'ProjectSummary',
  description: 'A project without its data, as lists show it',
})

export const ProjectListSchema = Type.Object(
  {
    data: Type.Array(Type.Unsafe(Type.Ref('ProjectSummary'))),
    nextCursor: Type.Union([Type.String(), Type.Null()]),
  },
  { $id: 'ProjectList', title: 'ProjectList' },
)

export const CreateProjectBody = Type.Object(
  {
    orgId: Type.Optional({ ...OrgId, description: "Owner; defaults to the caller's personal org (an API key's org)" }),
    name: Name,
    description: Type.Optional(Description),
    data: Type.Optional(Type.Unknown({ description: `${DATA_DESCRIPTION} Defaults to {}.` })),
  },
  { additionalProperties: false },
)

/**
 * An exported project. The server-owned fields an export carries are accepted and ignored: the
 * import gets a new id, version 1, the importer as author and fresh timestamps.
 */
export const ImportProjectBody = Type.Object(
  {
    name: Name,
    description: Type.Optional(Description),
    data: Type.Optional(Data),
    id: Type.Optional(Type.String({ maxLength: 100 })),
    orgId: Type.Optional(Type.String({ maxLength: 100 })),
    version: Type.Optional(Type.Integer()),
    createdBy: Type.Optional(Type.Union([Type.String({ maxLength: 100 }), Type.Null()])),
    createdAt: Type.Optional(Type.String({ maxLength: 64 })),
    updatedAt: Type.Optional(Type.String({ maxLength: 64 })),
  },
  { additionalProperties: false },
)

export const ImportProjectQuery = Type.Object(
  { orgId: Type.Optional({ ...OrgId, description: "Target org; defaults to the caller's personal org" }) },
  { additionalProperties: false },
)

/** A JSON merge patch (RFC 7396) of the editable fields; `data` merges key by key. */
export const PatchProjectBody = Type.Object(
  {
    name: Type.Optional(Name),
    description: Type.Optional(Type.Union([Description, Type.Null()], { description: 'null clears it' })),
    data: Type.Optional(Type.Unknown({ description: 'Merged into the stored data (RFC 7396): null removes a key' })),
  },
  { additionalProperties: false },
)

export const ProjectParams = Type.Object(
  { id: Type.String({ minLength: 1, maxLength: 100 }) },
  { additionalProperties: false },
)

export const ListProjectsQuery = Type.Object(
  {
    orgId: Type.Optional({ ...OrgId, description: 'Only this org; default: every org the caller belongs to' }),
    q: Type.Optional(
      Type.String({ minLength: 1, maxLength: 200, description: 'Case-insensitive substring of the name' }),
    ),
    sort: Type.Optional(Type.Union([Type.Literal('updatedAt'), Type.Literal('name')], { default: 'updatedAt' })),
    order: Type.Optional(Type.Union([Type.Literal('asc'), Type.Literal('desc')], { default: 'desc' })),
    ...Pagination,
  },
  { additionalProperties: false },
)

const ETagHeader = (description: string) => Type.Optional(Type.String({ maxLength: 1000, description }))

export const WriteHeaders = Type.Object({ ...IdempotencyKeyHeader })
export const ConditionalWriteHeaders = Type.Object({
  'if-match': ETagHeader('Apply only if the current ETag is listed (or "*"); otherwise 412'),
  ...IdempotencyKeyHeader,
})
export const ConditionalDeleteHeaders = Type.Object({
  'if-match': ETagHeader('Delete only if the current ETag is listed (or "*"); otherwise 412'),
})
export const ConditionalReadHeaders = Type.Object({
  'if-none-match': ETagHeader('Answer 304 without a body when the current ETag is listed'),
})

export const projectsSchemas = [ProjectSchema, ProjectSummarySchema, ProjectListSchema]
