-- =============================================================================
-- Rollback:  20241201000000_engagement_events.sql
-- Undoes:    removes public.engagement_events from the publication
--            engagement_events_pub and drops the publication once it holds no
--            table, drops the table (its indexes, CHECK, trigger, policies and
--            grants go with it) and its trigger function
--            engagement_events_reject_future_timestamp(), and forgets the
--            migration in supabase_migrations.schema_migrations so
--            `engagement-relay migrate` applies it again.
--            This is the seed's "Schema Rollback" (rollback_engagement_events.sql)
--            split per migration: the archive and the two functions it also
--            drops belong to 20241211000000 and have their own rollback.
-- Data:      LOST: every engagement event.  Take the pre-rollback snapshot first
--            (deployment procedures, "Create Deployment Snapshot").
-- Relay:     stop engagement-relay first.  Its replication slot is not dropped
--            here (the relay created it, and a slot cannot be dropped inside a
--            transaction block); drop it if the relay is retired:
--              SELECT pg_drop_replication_slot('engagement_relay');
-- Differs from the seed: no CASCADE (an unexpected dependent object stops the
--            rollback instead of vanishing with it; the newer rollbacks remove
--            ours first), the indexes are not dropped one by one (they go with
--            the table), and nothing is written to a deployment_log table
--            (this project has none; the migration row is deleted instead).
-- Run:       psql --set ON_ERROR_STOP=on -f sql/rollback/20241201000000_engagement_events.sql
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
        WHERE version IN ('20241205000000', '20241210000000', '20241211000000', '20241212000000', '20241213000000', '20241214000000', '20241215000000', '20241216000000', '20241217000000');
        IF later IS NOT NULL THEN
            RAISE EXCEPTION 'roll back the later migrations first (still applied: %)', later
                USING HINT = 'Run the scripts in sql/rollback/ newest first.';
        END IF;
    END IF;
END
$order$;

DO $publication$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_publication_tables
               WHERE pubname = 'engagement_events_pub'
                 AND schemaname = 'public' AND tablename = 'engagement_events') THEN
        ALTER PUBLICATION engagement_events_pub DROP TABLE public.engagement_events;
    END IF;
END
$publication$;

DROP TABLE IF EXISTS public.engagement_events;
DROP FUNCTION IF EXISTS public.engagement_events_reject_future_timestamp();

-- The migration created the publication only if it was missing; drop it only
-- when nothing is left in it (tables of later migrations are removed by their
-- own rollbacks, which run first).
DO $publication$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_publication
               WHERE pubname = 'engagement_events_pub' AND NOT puballtables)
       AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_publication_tables
                       WHERE pubname = 'engagement_events_pub') THEN
        DROP PUBLICATION engagement_events_pub;
    ELSIF EXISTS (SELECT 1 FROM pg_catalog.pg_publication
                  WHERE pubname = 'engagement_events_pub') THEN
        RAISE NOTICE 'publication engagement_events_pub still publishes other tables; kept';
    END IF;
END
$publication$;

DO $bookkeeping$
BEGIN
    IF to_regclass('supabase_migrations.schema_migrations') IS NOT NULL THEN
        DELETE FROM supabase_migrations.schema_migrations WHERE version = '20241201000000';
    END IF;
END
$bookkeeping$;

COMMIT;
