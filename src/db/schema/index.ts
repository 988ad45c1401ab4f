// Every module's tables, one file per module, re-exported here for Drizzle and drizzle-kit.
export * from './auth.js'
export * from './billing.js'
export * from './chat.js'
export * from './documents.js'
export * from './projects.js'
export * from './system.js'
export * from './webhooks.js'
