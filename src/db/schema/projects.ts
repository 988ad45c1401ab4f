import { index, integer, jsonb, pgTable, text, timestamp } from 'drizzle-orm/pg-core'
import { orgs } from './auth.js'

/** A JSON document a frontend saves (a node graph, a course outline, a pipeline), owned by an org. */
export const projects = pgTable(
  'projects',
  {
    id: text().primaryKey(),
    orgId: text()
      .notNull()
      .references(() => orgs.id, { onDelete: 'cascade' }),
    name: text().notNull(),
    description: text().notNull().default(''),
    data: jsonb().notNull(),
    // Bumped by every change; the ETag, and the guard of conditional writes.
    version: integer().notNull().default(1),
    // A user id kept as history, without a foreign key: deleting the author's account leaves the
    // project (the org's, not theirs) and its representation, hence its ETag, unchanged.
    createdBy: text().notNull(),
    createdAt: timestamp({ withTimezone: true }).notNull().defaultNow(),
    updatedAt: timestamp({ withTimezone: true }).notNull().defaultNow(),
  },
  // One index per sort order of the list, each ending in the id that makes the keyset total.
  (table) => [
    index('projects_org_updated_idx').on(table.orgId, table.updatedAt, table.id),
    index('projects_org_name_idx').on(table.orgId, table.name, table.id),
  ],
)
