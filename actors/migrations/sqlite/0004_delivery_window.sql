-- The delivery-rate monitor reads, once a sample, the receipts of a recent window and the
-- messages sent in one: both by time. The partial index holds only rows in `sent`, so the
-- send path pays one index entry per message and nothing else.
CREATE INDEX receipts_received_at ON receipts (received_at);
CREATE INDEX messages_sent_updated_at ON messages (updated_at) WHERE status = 'sent';
