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
        WHERE version IN ('20241213000000', '20241214000000', '20241215000000', '20241216000000', '20241217000000');
        IF later IS NOT NULL THEN
            RAISE EXCEPTION 'roll back the later migrations first (still applied: %)', later
                USING HINT = 'Run the scripts in sql/rollback/ newest first.';
        END IF;
    END IF;
END
$order$;

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
