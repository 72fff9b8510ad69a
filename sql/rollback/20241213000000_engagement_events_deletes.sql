-- =============================================================================
-- Rollback:  20241213000000_engagement_events_deletes.sql
-- Undoes:    REPLICA IDENTITY FULL on public.engagement_events (back to
--            DEFAULT, the primary key), deletes in the publication
--            engagement_events_pub (back to publish = 'insert, update') and
--            its comment, and forgets the migration in
--            supabase_migrations.schema_migrations so `engagement-relay
--            migrate` applies it again.
-- Data:      none.  Before running it, remove "delete" from the
--            engagement_events [[tables]] entry of engagement-relay (its
--            default lists it): the relay refuses to start while an entry
--            streams deletes the publication does not publish.
-- Run:       psql --set ON_ERROR_STOP=on -f sql/rollback/20241213000000_engagement_events_deletes.sql
--            (newest migration first; see sql/rollback/README.md).
-- Idempotent: yes.
-- =============================================================================

BEGIN;

-- Newest first: refuse while a later migration of this project is still applied (it may
-- depend on what this script drops). Only this project's versions are looked at: on Supabase
-- the table also records the application's own migrations.
DO $order$
DECLARE
    later text;
BEGIN
    IF to_regclass('supabase_migrations.schema_migrations') IS NOT NULL THEN
        SELECT string_agg(version, ', ' ORDER BY version) INTO later
        FROM supabase_migrations.schema_migrations
        WHERE version IN ('20241214000000', '20241215000000', '20241216000000', '20241217000000');
        IF later IS NOT NULL THEN
            RAISE EXCEPTION 'roll back the later migrations first (still applied: %)', later
                USING HINT = 'Run the scripts in sql/rollback/ newest first.';
        END IF;
    END IF;
END
$order$;

DO $undo$
BEGIN
    IF to_regclass('public.engagement_events') IS NOT NULL THEN
        ALTER TABLE public.engagement_events REPLICA IDENTITY DEFAULT;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_publication
               WHERE pubname = 'engagement_events_pub') THEN
        ALTER PUBLICATION engagement_events_pub SET (publish = 'insert, update');
        COMMENT ON PUBLICATION engagement_events_pub IS
            'INSERT/UPDATE changes of public.engagement_events, public.user_engagement_states and '
            'public.engagement_state_transitions for the engagement-relay daemon.';
    END IF;
END
$undo$;

DO $bookkeeping$
BEGIN
    IF to_regclass('supabase_migrations.schema_migrations') IS NOT NULL THEN
        DELETE FROM supabase_migrations.schema_migrations WHERE version = '20241213000000';
    END IF;
END
$bookkeeping$;

COMMIT;
