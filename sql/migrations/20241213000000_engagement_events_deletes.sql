-- =============================================================================
-- Migration: 20241213000000_engagement_events_deletes.sql
-- Purpose:   Stream deletes of engagement_events (issue 13): GDPR erasure
--            (delete_user_data), the retention archive job and cascades from
--            auth.users become visible to the owner's live sessions, and
--            engagement-relay removes the deleted rows' events from its replay
--            window (docs/RETENTION.md, section 4).
--              * REPLICA IDENTITY FULL on public.engagement_events: pgoutput's
--                Delete message then carries the whole old row ('O' tuple),
--                user_id included, which the relay routes by.  With the
--                default identity it carries only the primary key ('K'), and
--                nobody could tell whose row was deleted.  Updates then carry
--                the old row too.  (PostgreSQL docs: ALTER TABLE … REPLICA
--                IDENTITY; "Logical Replication Message Formats".)
--              * publication engagement_events_pub publishes deletes.  The
--                flag is publication-wide: deletes of
--                engagement_state_transitions and user_engagement_states are
--                sent too (their identity is the primary key); the relay skips
--                them unless their [[tables]] entry lists "delete".
-- Cost:      FULL logs the whole old row of every UPDATE and DELETE in the
--            WAL (rows are small: ~200 bytes).
-- Dependencies: 20241201000000_engagement_events.sql (table, publication).
-- Transaction: run by the migration runner inside BEGIN/COMMIT.
-- Re-running:  idempotent (ALTER … REPLICA IDENTITY FULL and SET (publish)
--              set what they set).
-- Rollback:    sql/rollback/20241213000000_engagement_events_deletes.sql
-- =============================================================================

ALTER TABLE public.engagement_events REPLICA IDENTITY FULL;

DO $publication$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_publication
                   WHERE pubname = 'engagement_events_pub') THEN
        RAISE EXCEPTION 'publication engagement_events_pub does not exist'
            USING HINT = 'Apply 20241201000000_engagement_events.sql first.';
    END IF;
    ALTER PUBLICATION engagement_events_pub SET (publish = 'insert, update, delete');
END
$publication$;

COMMENT ON PUBLICATION engagement_events_pub IS
    'INSERT/UPDATE/DELETE changes of the engagement tables for the engagement-relay daemon.';
