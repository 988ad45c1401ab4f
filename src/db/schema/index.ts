// Every module's tables, one file per module, re-exported here for Drizzle and drizzle-kit.
export * from './system.js'
