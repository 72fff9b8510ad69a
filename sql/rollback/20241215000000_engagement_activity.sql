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
