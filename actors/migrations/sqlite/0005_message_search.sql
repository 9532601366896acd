-- The operator console's reads: messages newest first page by page (keyset on created_at,
-- id), and a message found by its correlation id or its recipient ("my code never arrived").
CREATE INDEX messages_created_at_id ON messages (created_at, id);
CREATE INDEX messages_correlation_id ON messages (correlation_id);
CREATE INDEX messages_recipient ON messages (recipient);
