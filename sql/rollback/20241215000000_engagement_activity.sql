-- =============================================================================
-- Rollback:  20241215000000_engagement_activity.sql
-- Undoes:    the trigger engagement_events_touch_last_activity, its function,
--            public.inactive_users(), and forgets the migration in
--            supabase_migrations.schema_migrations so `engagement-relay
--            migrate` applies it again.
-- Data:      none: user_engagement_states rows the trigger created or updated
--            stay (last_activity_at simply stops following new events).
-- Run:       psql --set ON_ERROR_STOP=on -f sql/rollback/20241215000000_engagement_activity.sql
--            (newest migration first; see sql/rollback/README.md).
-- Idempotent: yes (IF EXISTS everywhere).
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
        WHERE version IN ('20241216000000', '20241217000000');
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
        DROP TRIGGER IF EXISTS engagement_events_touch_last_activity ON public.engagement_events;
    END IF;
END
$undo$;

DROP FUNCTION IF EXISTS public.engagement_events_touch_last_activity();
DROP FUNCTION IF EXISTS public.inactive_users(interval, integer, uuid, boolean);

DO $bookkeeping$
BEGIN
    IF to_regclass('supabase_migrations.schema_migrations') IS NOT NULL THEN
        DELETE FROM supabase_migrations.schema_migrations WHERE version = '20241215000000';
    END IF;
END
$bookkeeping$;

COMMIT;
