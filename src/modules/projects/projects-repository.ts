import { and, asc, desc, eq, ilike, inArray, sql } from 'drizzle-orm'
import { unionAll } from 'drizzle-orm/pg-core'
import type { Executor } from '../../db/client.js'
import { projects } from '../../db/schema/index.js'
import type { Cursor } from '../../lib/cursor.js'

export type ProjectRow = typeof projects.$inferSelect
export type ProjectSummaryRow = Omit<ProjectRow, 'data'>
export type ProjectSort = 'updatedAt' | 'name'

export interface ListOptions {
  orgIds: string[]
  q?: string
  sort: ProjectSort
  order: 'asc' | 'desc'
  after: Cursor | null
  limit: number
}

const summaryColumns = {
  id: projects.id,
  orgId: projects.orgId,
  name: projects.name,
  description: projects.description,
  version: projects.version,
  createdBy: projects.createdBy,
  createdAt: projects.createdAt,
  updatedAt: projects.updatedAt,
}

/** `%`, `_` and `\` match themselves in the name search, not as LIKE wildcards. */
const likePattern = (text: string) => `%${text.replace(/[\\%_]/g, (char) => `\\${char}`)}%`

/** The only code that touches the projects table. */
export function createProjectsRepository(db: Executor) {
  // The read every client repeats, built once: assembling the SQL costs more CPU than PostgreSQL
  // spends answering it, and a named statement is parsed and planned once per connection.
  const findVisible = db
    .select()
    .from(projects)
    .where(and(eq(projects.id, sql.placeholder('id')), sql`${projects.orgId} = any(${sql.placeholder('orgIds')})`))
    .prepare('projects_find_visible')

  return {
    async countInOrg(orgId: string, tx: Executor = db): Promise<number> {
      const [row] = await tx
        .select({ count: sql<number>`count(*)::int` })
        .from(projects)
        .where(eq(projects.orgId, orgId))
      return Number(row?.count ?? 0)
    },

    async insert(values: typeof projects.$inferInsert, tx: Executor = db): Promise<ProjectRow> {
      const [row] = await tx.insert(projects).values(values).returning()
      return row as ProjectRow
    },

    /** A project, only if it belongs to one of `orgIds`: other tenants' rows are never read. */
    async find(id: string, orgIds: string[]): Promise<ProjectRow | null> {
      if (orgIds.length === 0) return null
      const [row] = await findVisible.execute({ id, orgIds })
      return row ?? null
    },

    /** Like `find`, locking the row until the transaction ends, so that writers queue up. */
    async findForUpdate(id: string, orgIds: string[], tx: Executor): Promise<ProjectRow | null> {
      if (orgIds.length === 0) return null
      const [row] = await tx
        .select()
        .from(projects)
        .where(and(eq(projects.id, id), inArray(projects.orgId, orgIds)))
        .for('update')
      return row ?? null
    },

    async update(
      id: string,
      values: Pick<ProjectRow, 'name' | 'description' | 'data'>,
      tx: Executor,
    ): Promise<ProjectRow> {
      const [row] = await tx
        .update(projects)
        // The clock, not now(): now() is when the transaction began, and a writer that queued for
        // the row lock would stamp a time before the change it waited for.
        .set({ ...values, version: sql`${projects.version} + 1`, updatedAt: sql`clock_timestamp()` })
        .where(eq(projects.id, id))
        .returning()
      return row as ProjectRow
    },

    async delete(id: string, tx: Executor): Promise<void> {
      await tx.delete(projects).where(eq(projects.id, id))
    },

    /**
     * One page of summaries in (sort key, id) order, starting after the cursor. The keyset compares
     * row values, so rows inserted or deleted elsewhere in the order never shift the page.
     * `sortKey` is the sort value as text (timestamps with their microseconds) for the next cursor.
     *
     * Each org is read along its own index, at most `limit` rows; several orgs are merged by a
     * UNION ALL of those short reads rather than by sorting every project of every org.
     */
    async list(options: ListOptions, tx: Executor = db): Promise<(ProjectSummaryRow & { sortKey: string })[]> {
      const byName = options.sort === 'name'
      const column = byName ? projects.name : projects.updatedAt
      const direction = options.order === 'asc' ? asc : desc
      const after = options.after
      const afterValue = after ? (byName ? sql`${after.k}` : sql`${after.k}::timestamptz`) : undefined
      const keyset = after
        ? options.order === 'asc'
          ? sql`(${column}, ${projects.id}) > (${afterValue}, ${after.id})`
          : sql`(${column}, ${projects.id}) < (${afterValue}, ${after.id})`
        : undefined
      const pageOf = (orgId: string) =>
        tx
          .select({ ...summaryColumns, sortKey: sql<string>`${column}::text`.as('sort_key') })
          .from(projects)
          .where(
            and(
              eq(projects.orgId, orgId),
              options.q ? ilike(projects.name, likePattern(options.q)) : undefined,
              keyset,
            ),
          )
          .orderBy(direction(column), direction(projects.id))
          .limit(options.limit)
      const [first, second, ...rest] = options.orgIds.map(pageOf)
      if (!first) return []
      if (!second) return first
      const order = options.order === 'asc' ? 'asc' : 'desc'
      return unionAll(first, second, ...rest)
        .orderBy(sql.raw(`"${byName ? 'name' : 'updated_at'}" ${order}, "id" ${order}`))
        .limit(options.limit)
    },
  }
}

export type ProjectsRepository = ReturnType<typeof createProjectsRepository>
