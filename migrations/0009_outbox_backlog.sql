DROP INDEX "webhook_deliveries_due_idx";--> statement-breakpoint
CREATE INDEX "webhook_deliveries_pending_idx" ON "webhook_deliveries" USING btree ("endpoint_id","seq") WHERE "webhook_deliveries"."status" = 'pending';--> statement-breakpoint
-- Events recorded before outbound deliveries existed were never meant for endpoints: without this,
-- the first dispatch would send an installation's whole history to its endpoints.
UPDATE "outbox_events" SET "dispatched_at" = now() WHERE "dispatched_at" IS NULL;
