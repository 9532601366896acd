-- Delivery receipts: what the provider later said became of a message it accepted (Twilio's
-- status callbacks), every one as it came, oldest first by `seq`. A callback names the
-- message by the provider's id, hence the index on it.
CREATE TABLE receipts (
    seq         BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id  TEXT    NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    received_at BIGINT  NOT NULL,
    -- The provider's word: queued, sending, sent, delivered, undelivered, failed, read, ...
    status      TEXT    NOT NULL,
    -- The provider's error code (Twilio 30003-30008: carrier failures), if any.
    error_code  BIGINT
);
CREATE INDEX receipts_message_id ON receipts (message_id);
CREATE INDEX messages_provider_message_id ON messages (provider_message_id)
    WHERE provider_message_id IS NOT NULL;
