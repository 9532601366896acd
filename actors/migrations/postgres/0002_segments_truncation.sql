-- SMS segments a message's body takes (GSM-7 or UCS-2; what operators pay for), NULL for
-- invalid payloads and rows from before this migration; and whether an invalid payload was
-- stored cut to `message.max_payload_bytes` (1) or whole (0).
ALTER TABLE messages ADD COLUMN segments INTEGER;
ALTER TABLE messages ADD COLUMN body_truncated INTEGER NOT NULL DEFAULT 0;
