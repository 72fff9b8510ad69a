-- 20241205000000_relay_idempotency_keys.sql
--
-- Purpose:      remembers the result of POST /v1/events and POST /v1/events/batch requests
--               sent with an `Idempotency-Key` header, so that a client retrying the same
--               request within 24 hours gets the first result and nothing is inserted twice.
-- Dependencies: none (its own schema `relay`); written only by engagement-relay's API, in
--               the same transaction as the events it inserted.
-- Re-running:   every statement is guarded (IF NOT EXISTS).

CREATE SCHEMA IF NOT EXISTS relay;

CREATE TABLE IF NOT EXISTS relay.idempotency_keys (
    caller      text        NOT NULL,   -- 'service_role' or the user's sub
    key         text        NOT NULL,   -- the Idempotency-Key header (at most 255 characters)
    status      smallint    NOT NULL,   -- HTTP status of the first result
    response    jsonb       NOT NULL,   -- its body
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (caller, key)
);

CREATE INDEX IF NOT EXISTS idx_relay_idempotency_keys_created_at
    ON relay.idempotency_keys (created_at);

-- Not exposed to the Supabase API roles.
REVOKE ALL ON SCHEMA relay FROM PUBLIC;
