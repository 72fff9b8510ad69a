-- =============================================================================
-- Rollback:  20241216000000_engagement_analytics.sql
-- Undoes:    the views engagement_weekly_activity and engagement_weekly_cohorts,
--            the BRIN index idx_engagement_events_timestamp_brin, the policy
--            "Analysts can view all events" and analyst's SELECT on
--            engagement_events, then forgets the migration in
--            supabase_migrations.schema_migrations so `engagement-relay
--            migrate` applies it again.
-- Role:      analyst is cluster-wide: it is dropped only if the migration
--            created it (its comment) and nothing in the cluster still uses it
--            (privileges in another database, members: the analysts' login
--            roles); otherwise it is kept with a NOTICE, as the shim's
--            rollback does with its roles.
-- Data:      none.
-- Run:       psql --set ON_ERROR_STOP=on -f sql/rollback/20241216000000_engagement_analytics.sql
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
        WHERE version IN ('20241217000000');
        IF later IS NOT NULL THEN
            RAISE EXCEPTION 'roll back the later migrations first (still applied: %)', later
                USING HINT = 'Run the scripts in sql/rollback/ newest first.';
        END IF;
    END IF;
END
$order$;

DROP VIEW IF EXISTS public.engagement_weekly_cohorts;
DROP VIEW IF EXISTS public.engagement_weekly_activity;
DROP INDEX IF EXISTS public.idx_engagement_events_timestamp_brin;

DO $undo$
BEGIN
    IF to_regclass('public.engagement_events') IS NOT NULL THEN
        DROP POLICY IF EXISTS "Analysts can view all events" ON public.engagement_events;
        IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'analyst') THEN
            REVOKE ALL ON public.engagement_events FROM analyst;
        END IF;
    END IF;
END
$undo$;

DO $role$
DECLARE
    analyst oid := (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = 'analyst');
BEGIN
    IF analyst IS NULL
       OR coalesce(shobj_description(analyst, 'pg_authid'), '') NOT LIKE 'engagement-relay analytics:%' THEN
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_shdepend d
               WHERE d.refclassid = 'pg_catalog.pg_authid'::regclass AND d.refobjid = analyst)
       OR EXISTS (SELECT 1 FROM pg_catalog.pg_auth_members m
                  WHERE m.roleid = analyst OR m.member = analyst) THEN
        RAISE NOTICE 'role analyst kept: other objects or roles in the cluster still use it';
    ELSE
        DROP ROLE analyst;
    END IF;
END
$role$;

DO $bookkeeping$
BEGIN
    IF to_regclass('supabase_migrations.schema_migrations') IS NOT NULL THEN
        DELETE FROM supabase_migrations.schema_migrations WHERE version = '20241216000000';
    END IF;
END
$bookkeeping$;

COMMIT;
