-- 20241217000000_relay_console.sql
--
-- Purpose:      the operator's console (issue 16): when each user was last seen
--               (relay.presence), the token revocations every relay node applies
--               (relay.revocations) and the record of every admin action
--               (relay.audit_log).
-- Dependencies: 20241205000000_relay_idempotency_keys.sql (schema relay).
-- Written by:   engagement-relay only, on its API pool: presence when a user's last session
--               closes, revocations by POST /v1/admin/revocations, the audit log by every
--               admin endpoint. Not exposed to the Supabase API roles.
-- Re-running:   every statement is guarded (IF NOT EXISTS).

CREATE SCHEMA IF NOT EXISTS relay;

-- `last_seen`: when the user's last session (on any node) closed. Rows older than
-- `presence.retention` (default 7 days) are deleted by the relay.
CREATE TABLE IF NOT EXISTS relay.presence (
    user_id    uuid        PRIMARY KEY,
    last_seen  timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_relay_presence_last_seen ON relay.presence (last_seen);

-- A user's tokens with an `iat` before `issued_before` (or without `iat`) are refused.
-- `expires_at` is `issued_before` plus `auth.max_token_lifetime`: by then every token the
-- revocation covers has expired, and the relay deletes the row.
CREATE TABLE IF NOT EXISTS relay.revocations (
    user_id        uuid        PRIMARY KEY,
    issued_before  timestamptz NOT NULL,
    expires_at     timestamptz NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    created_by     text,
    CHECK (expires_at >= issued_before)
);
CREATE INDEX IF NOT EXISTS idx_relay_revocations_expires_at ON relay.revocations (expires_at);

-- One row per admin action: who (the service token's sub and kid), what, to whom, when.
CREATE TABLE IF NOT EXISTS relay.audit_log (
    id           bigserial   PRIMARY KEY,
    at           timestamptz NOT NULL DEFAULT now(),
    actor_sub    text,
    actor_kid    text,
    action       text        NOT NULL,
    target_user  uuid,
    detail       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    node         text
);
CREATE INDEX IF NOT EXISTS idx_relay_audit_log_at ON relay.audit_log (at);
CREATE INDEX IF NOT EXISTS idx_relay_audit_log_target_user ON relay.audit_log (target_user, at);

REVOKE ALL ON relay.presence, relay.revocations, relay.audit_log FROM PUBLIC;
REVOKE ALL ON SEQUENCE relay.audit_log_id_seq FROM PUBLIC;
