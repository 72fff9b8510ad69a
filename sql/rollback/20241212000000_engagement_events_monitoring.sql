-- =============================================================================
-- Rollback:  20241212000000_engagement_events_monitoring.sql
-- Undoes:    the views engagement_events_performance and
--            engagement_events_index_usage (their grants go with them), and
--            forgets the migration in supabase_migrations.schema_migrations so
--            `engagement-relay migrate` applies it again.
-- Data:      none (the views only read statistics).
-- Run:       psql --set ON_ERROR_STOP=on -f sql/rollback/20241212000000_engagement_events_monitoring.sql
--            (newest migration first; see sql/rollback/README.md).
-- Idempotent: yes (IF EXISTS everywhere).
-- =============================================================================

BEGIN;

DROP VIEW IF EXISTS public.engagement_events_index_usage;
DROP VIEW IF EXISTS public.engagement_events_performance;

DO $bookkeeping$
BEGIN
    IF to_regclass('supabase_migrations.schema_migrations') IS NOT NULL THEN
        DELETE FROM supabase_migrations.schema_migrations WHERE version = '20241212000000';
    END IF;
END
$bookkeeping$;

COMMIT;
