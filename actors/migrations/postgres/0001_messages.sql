-- drover's message ledger (PostgreSQL).
--
-- Times are Unix milliseconds (BIGINT) taken from drover's clock, not the database's, so that
-- tests with a paused clock stay deterministic. Ids are UUIDs in their canonical text form.

CREATE TABLE messages (
    id                  TEXT    PRIMARY KEY,
    correlation_id      TEXT    NOT NULL,
    -- Empty for invalid messages, which have no usable recipient.
    recipient           TEXT    NOT NULL,
    -- For invalid messages: the raw payload, decoded as lossy UTF-8.
    body                TEXT    NOT NULL,
    sender              TEXT,
    status              TEXT    NOT NULL
        CHECK (status IN ('queued', 'sending', 'sent', 'retry_scheduled', 'failed', 'invalid')),
    -- Attempts spent against the retry budget (deferred attempts are given back).
    attempts            INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at     BIGINT,
    last_error          TEXT,
    last_error_class    TEXT,
    provider_message_id TEXT,
    created_at          BIGINT  NOT NULL,
    updated_at          BIGINT  NOT NULL,
    -- Set while a scheduler holds a `queued` row it is republishing; lapses at this time.
    claimed_until       BIGINT
);

CREATE INDEX messages_status_next_attempt_at ON messages (status, next_attempt_at);
CREATE INDEX messages_status_claimed_until ON messages (status, claimed_until);

CREATE TABLE attempts (
    message_id          TEXT    NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    -- Per-message sequence number of the try (1, 2, ...), never reused.
    attempt             INTEGER NOT NULL CHECK (attempt > 0),
    started_at          BIGINT  NOT NULL,
    finished_at         BIGINT,
    -- NULL while the attempt is in flight.
    outcome             TEXT
        CHECK (outcome IN ('sent', 'retry', 'failed', 'deferred', 'ambiguous')),
    error_class         TEXT,
    error               TEXT,
    latency_ms          BIGINT,
    provider_message_id TEXT,
    PRIMARY KEY (message_id, attempt)
);
