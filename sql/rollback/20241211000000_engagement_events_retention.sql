-- =============================================================================
-- Rollback:  20241211000000_engagement_events_retention.sql
-- Undoes:    engagement_events_archive (its policy, grants and indexes),
--            archive_old_deleted_events(interval, integer),
--            delete_user_data(uuid), the indexes
--            idx_engagement_events_deleted_timestamp and
--            idx_engagement_message_queue_user_id, and forgets the migration in
--            supabase_migrations.schema_migrations so `engagement-relay migrate`
--            applies it again.
-- Data:      nothing is lost: archived events are first moved back into
--            public.engagement_events (still soft-deleted, is_deleted = true),
--            which is where they were before the archival job moved them.
--            Those re-inserts are INSERTs on a published table: a running
--            engagement-relay streams them to their owners' sockets (as rows
--            with is_deleted = true, which clients hide).  Stop the relay first
--            if that is unwanted.  Events whose id is already live are skipped.
-- Differs from the seed's rollback_engagement_events.sql: the seed drops the
--            archive (and its data) with CASCADE and logs to a deployment_log
--            table this project does not have; here the data is returned and
--            nothing is dropped by CASCADE, so an unexpected dependent object
--            stops the rollback instead of vanishing with it.
-- Run:       psql --set ON_ERROR_STOP=on -f sql/rollback/20241211000000_engagement_events_retention.sql
--            (newest migration first; see sql/rollback/README.md).
-- Idempotent: yes (IF EXISTS everywhere; the data move runs only while the
--            archive exists).
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
        WHERE version IN ('20241212000000', '20241213000000', '20241214000000', '20241215000000', '20241216000000', '20241217000000');
        IF later IS NOT NULL THEN
            RAISE EXCEPTION 'roll back the later migrations first (still applied: %)', later
                USING HINT = 'Run the scripts in sql/rollback/ newest first.';
        END IF;
    END IF;
END
$order$;

DO $restore$
DECLARE
    n bigint;
BEGIN
    IF to_regclass('public.engagement_events_archive') IS NOT NULL
       AND to_regclass('public.engagement_events') IS NOT NULL THEN
        INSERT INTO public.engagement_events (id, user_id, "timestamp", event_type, value, is_deleted)
        SELECT id, user_id, "timestamp", event_type, value, is_deleted
        FROM public.engagement_events_archive
        ON CONFLICT (id) DO NOTHING;
        GET DIAGNOSTICS n = ROW_COUNT;
        RAISE NOTICE 'moved % archived events back into public.engagement_events', n;
    END IF;
END
$restore$;

DROP FUNCTION IF EXISTS public.delete_user_data(uuid);
DROP FUNCTION IF EXISTS public.archive_old_deleted_events(interval, integer);
DROP TABLE IF EXISTS public.engagement_events_archive;
DROP INDEX IF EXISTS public.idx_engagement_events_deleted_timestamp;
DROP INDEX IF EXISTS public.idx_engagement_message_queue_user_id;

DO $bookkeeping$
BEGIN
    IF to_regclass('supabase_migrations.schema_migrations') IS NOT NULL THEN
        DELETE FROM supabase_migrations.schema_migrations WHERE version = '20241211000000';
    END IF;
END
$bookkeeping$;

COMMIT;
