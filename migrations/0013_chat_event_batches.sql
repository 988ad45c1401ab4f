-- Rows written before hold one event each.
ALTER TABLE "chat_message_events" ADD COLUMN "last_seq" integer;--> statement-breakpoint
UPDATE "chat_message_events" SET "last_seq" = "seq";--> statement-breakpoint
ALTER TABLE "chat_message_events" ALTER COLUMN "last_seq" SET NOT NULL;--> statement-breakpoint
-- Should two answers of one conversation be streaming, the older ends as interrupted before the index holds.
UPDATE "chat_messages" AS m SET "status" = 'incomplete', "error_code" = 'STREAM_INTERRUPTED', "heartbeat_at" = NULL
WHERE m."status" = 'streaming' AND EXISTS (
  SELECT 1 FROM "chat_messages" AS n
  WHERE n."conversation_id" = m."conversation_id" AND n."status" = 'streaming'
    AND (n."created_at", n."id") > (m."created_at", m."id")
);--> statement-breakpoint
CREATE UNIQUE INDEX "chat_messages_one_streaming_idx" ON "chat_messages" USING btree ("conversation_id") WHERE status = 'streaming';
