-- =============================================================================
-- Rollback:  20241210000000_engagement_system.sql (Story 1.1, "034")
-- Undoes:    removes user_engagement_states and engagement_state_transitions
--            from the publication engagement_events_pub (and restores its
--            comment), drops the three engagement tables (their indexes,
--            constraints, trigger, policies and grants go with them), drops
--            public.set_updated_at() when this migration created it and no
--            other trigger uses it, drops the five user_profiles columns and
--            their CHECKs, and forgets the migration in
--            supabase_migrations.schema_migrations so `engagement-relay migrate`
--            applies it again.
-- Data:      LOST: engagement states, transitions, queued messages and the
--            five profile columns.  Take the pre-rollback snapshot first
--            (deployment procedures, "Create Deployment Snapshot").  On a
--            database where the story's own 034 script created these tables,
--            this drops them all the same.
-- Run:       psql --set ON_ERROR_STOP=on -f sql/rollback/20241210000000_engagement_system.sql
--            (newest migration first: roll back 20241212000000 and
--            20241211000000 before this one; see sql/rollback/README.md).
-- Idempotent: yes (IF EXISTS everywhere, catalog checks in the DO blocks).
-- No CASCADE: an object of someone else's that depends on these tables
--            stops the rollback instead of disappearing with it.
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
        WHERE version IN ('20241211000000', '20241212000000', '20241213000000', '20241214000000', '20241215000000', '20241216000000', '20241217000000');
        IF later IS NOT NULL THEN
            RAISE EXCEPTION 'roll back the later migrations first (still applied: %)', later
                USING HINT = 'Run the scripts in sql/rollback/ newest first.';
        END IF;
    END IF;
END
$order$;

DO $publication$
DECLARE
    t text;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = 'engagement_events_pub') THEN
        FOREACH t IN ARRAY ARRAY['user_engagement_states', 'engagement_state_transitions'] LOOP
            IF EXISTS (SELECT 1 FROM pg_catalog.pg_publication_tables
                       WHERE pubname = 'engagement_events_pub'
                         AND schemaname = 'public' AND tablename = t) THEN
                EXECUTE format('ALTER PUBLICATION engagement_events_pub DROP TABLE public.%I', t);
            END IF;
        END LOOP;
        COMMENT ON PUBLICATION engagement_events_pub IS
            'INSERT/UPDATE changes of public.engagement_events for the engagement-relay daemon.';
    END IF;
END
$publication$;

DROP TABLE IF EXISTS public.engagement_message_queue;
DROP TABLE IF EXISTS public.engagement_state_transitions;
DROP TABLE IF EXISTS public.user_engagement_states;

-- The shared updated_at function: only if this migration created it (its
-- comment says so) and no trigger of another table still uses it.
DO $fn$
DECLARE
    fn oid := to_regprocedure('public.set_updated_at()');
BEGIN
    IF fn IS NULL THEN
        RETURN;
    END IF;
    IF coalesce(obj_description(fn, 'pg_proc'), '')
           NOT LIKE '%(20241210000000_engagement_system.sql)%' THEN
        RAISE NOTICE 'public.set_updated_at() was not created by 20241210000000; kept';
    ELSIF EXISTS (SELECT 1 FROM pg_catalog.pg_trigger WHERE tgfoid = fn) THEN
        RAISE NOTICE 'public.set_updated_at() is still used by other triggers; kept';
    ELSE
        DROP FUNCTION public.set_updated_at();
    END IF;
END
$fn$;

ALTER TABLE IF EXISTS public.user_profiles
    DROP CONSTRAINT IF EXISTS user_profiles_preferred_destination_check,
    DROP CONSTRAINT IF EXISTS user_profiles_onboarding_tier_check,
    DROP COLUMN IF EXISTS preferred_destination,
    DROP COLUMN IF EXISTS reengagement_opt_out,
    DROP COLUMN IF EXISTS onboarding_tier,
    DROP COLUMN IF EXISTS onboarding_tier_progress,
    DROP COLUMN IF EXISTS magic_moment_at;

DO $bookkeeping$
BEGIN
    IF to_regclass('supabase_migrations.schema_migrations') IS NOT NULL THEN
        DELETE FROM supabase_migrations.schema_migrations WHERE version = '20241210000000';
    END IF;
END
$bookkeeping$;

COMMIT;
