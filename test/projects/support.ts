/** A project as the API renders it. */
export interface Project {
  id: string
  orgId: string
  name: string
  description: string
  data: unknown
  version: number
  createdBy: string | null
  createdAt: string
  updatedAt: string
}

/** A project as lists show it: without its data. */
export type ProjectSummary = Omit<Project, 'data'>
