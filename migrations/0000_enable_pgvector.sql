-- pgvector backs retrieval (chat module). PostgreSQL needs the extension installed on the server;
-- PGlite loads it from @electric-sql/pglite-pgvector.
CREATE EXTENSION IF NOT EXISTS vector;
