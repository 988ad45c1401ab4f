import { defineConfig } from 'drizzle-kit'

// Only `drizzle-kit generate` uses this file; migrations are applied by src/db/migrate.ts on both
// engines, because drizzle-kit's own migrate cannot load pgvector into PGlite.
export default defineConfig({
  dialect: 'postgresql',
  schema: './src/db/schema/index.ts',
  out: './migrations',
  casing: 'snake_case',
})
