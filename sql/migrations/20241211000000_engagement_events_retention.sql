-- =============================================================================
-- Migration: 20241211000000_engagement_events_retention.sql
-- Purpose:   Data retention for engagement events (seed task 6.1, see
--            docs/RETENTION.md):
--              * engagement_events_archive: soft-deleted events moved out of
--                the live table once they are old enough;
--              * archive_old_deleted_events(older_than, batch_size): does the
--                moving, in batches; meant for a daily job;
--              * delete_user_data(target_user): GDPR erasure of a user's
--                engagement data in one transaction, with counts per table.
--
-- Dependencies:
--   * public.engagement_events (20241201000000_engagement_events.sql)
--   * the engagement tables (20241210000000_engagement_system.sql)
--   * auth.users(id), roles anon/authenticated/service_role (Supabase or the
--     shim 20241130000000_supabase_shim.sql)
--
-- Replication: the archive is not published.  Moving a row out of
--   engagement_events is a DELETE, and engagement_events_pub publishes
--   insert and update only, so neither archiving nor delete_user_data sends
--   anything to engagement-relay's clients (the soft delete itself, an UPDATE
--   of is_deleted, was streamed when it happened).
--
-- Indexes: besides the archive's own, two on existing tables so the functions
--   do not scan: soft-deleted events by "timestamp" (archival) and queued
--   messages by user_id (erasure and the ON DELETE CASCADE from auth.users).
--   Created without CONCURRENTLY (the runner wraps the file in a transaction);
--   on a large live engagement_events, create idx_engagement_events_deleted_timestamp
--   by hand first with CREATE INDEX CONCURRENTLY and this file will skip it.
--
-- Transaction: run by the migration runner inside BEGIN/COMMIT.
-- Re-running:  every statement is guarded (IF NOT EXISTS / OR REPLACE).
-- Rollback:    sql/rollback/20241211000000_engagement_events_retention.sql
--              (moves archived rows back into engagement_events first).
-- =============================================================================

-- -----------------------------------------------------------------------------
-- 1. Archive table: the events' columns as they were, plus archived_at.
--    Its rows still belong to their user: deleting the user deletes them.
-- -----------------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS public.engagement_events_archive (
    id          uuid        NOT NULL,
    user_id     uuid        NOT NULL,
    "timestamp" timestamptz,
    event_type  text        NOT NULL,
    value       jsonb,
    is_deleted  boolean,
    archived_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT engagement_events_archive_pkey PRIMARY KEY (id),
    CONSTRAINT engagement_events_archive_user_id_fkey FOREIGN KEY (user_id)
        REFERENCES auth.users (id) ON DELETE CASCADE
);

CREATE INDEX IF NOT EXISTS idx_engagement_events_archive_user_id
    ON public.engagement_events_archive (user_id);
CREATE INDEX IF NOT EXISTS idx_engagement_events_archive_archived_at
    ON public.engagement_events_archive (archived_at);

-- Archival candidates: soft-deleted events, oldest first.
CREATE INDEX IF NOT EXISTS idx_engagement_events_deleted_timestamp
    ON public.engagement_events ("timestamp")
    WHERE is_deleted;

-- Erasure and cascade lookups on the queue (the story gives it no user_id index).
CREATE INDEX IF NOT EXISTS idx_engagement_message_queue_user_id
    ON public.engagement_message_queue (user_id);

-- -----------------------------------------------------------------------------
-- 2. Archive access: service role only (RLS on, no user policy, no grants).
-- -----------------------------------------------------------------------------
ALTER TABLE public.engagement_events_archive ENABLE ROW LEVEL SECURITY;

DO $policies$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_policies
                   WHERE schemaname = 'public' AND tablename = 'engagement_events_archive'
                     AND policyname = 'Service role only') THEN
        CREATE POLICY "Service role only"
            ON public.engagement_events_archive
            FOR ALL TO service_role
            USING (true) WITH CHECK (true);
    END IF;
END
$policies$;

COMMENT ON POLICY "Service role only" ON public.engagement_events_archive IS
    'Only the service role (archival job, erasure) touches the archive.';

REVOKE ALL ON public.engagement_events_archive FROM PUBLIC, anon, authenticated;
GRANT ALL ON public.engagement_events_archive TO service_role;

-- -----------------------------------------------------------------------------
-- 3. archive_old_deleted_events(older_than, batch_size)
--    Moves soft-deleted events whose "timestamp" is older than
--    now() - older_than into the archive, batch_size rows per statement
--    (DELETE ... RETURNING feeding an INSERT), until no batch is full; returns
--    the number of rows moved.  Rows locked by another transaction are skipped
--    (FOR UPDATE SKIP LOCKED) and picked up by the next run, so the job never
--    waits for, nor blocks on, application writes.  Events with a NULL
--    "timestamp" are never archived.  One call is one transaction (that of
--    the caller): the batches bound each statement's work, not the commit.
--    An id already in the archive (an event restored by hand and deleted
--    again) is overwritten with the newer copy.
--    SECURITY INVOKER: the caller needs the table privileges (service_role or
--    the owner, e.g. a pg_cron job run as postgres).
-- -----------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION public.archive_old_deleted_events(
    older_than interval,
    batch_size integer DEFAULT 5000
)
    RETURNS bigint
    LANGUAGE plpgsql
    SECURITY INVOKER
    SET search_path = ''
AS $fn$
DECLARE
    cutoff timestamptz;
    moved  bigint := 0;
    batch  bigint;
BEGIN
    IF older_than IS NULL OR older_than < interval '0' THEN
        RAISE EXCEPTION 'older_than must be a non-negative interval (got %)', older_than
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF batch_size IS NULL OR batch_size < 1 THEN
        RAISE EXCEPTION 'batch_size must be at least 1 (got %)', batch_size
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    cutoff := now() - older_than;

    LOOP
        WITH batch_rows AS (
            DELETE FROM public.engagement_events e
            WHERE e.id IN (
                SELECT c.id
                FROM public.engagement_events c
                WHERE c.is_deleted AND c."timestamp" < cutoff
                ORDER BY c."timestamp"
                LIMIT batch_size
                FOR UPDATE SKIP LOCKED)
            RETURNING e.id, e.user_id, e."timestamp", e.event_type, e.value, e.is_deleted
        )
        INSERT INTO public.engagement_events_archive
            (id, user_id, "timestamp", event_type, value, is_deleted, archived_at)
        SELECT id, user_id, "timestamp", event_type, value, is_deleted, now()
        FROM batch_rows
        ON CONFLICT (id) DO UPDATE SET
            user_id     = EXCLUDED.user_id,
            "timestamp" = EXCLUDED."timestamp",
            event_type  = EXCLUDED.event_type,
            value       = EXCLUDED.value,
            is_deleted  = EXCLUDED.is_deleted,
            archived_at = EXCLUDED.archived_at;
        GET DIAGNOSTICS batch = ROW_COUNT;
        moved := moved + batch;
        EXIT WHEN batch < batch_size;
    END LOOP;

    RETURN moved;
END
$fn$;

COMMENT ON FUNCTION public.archive_old_deleted_events(interval, integer) IS
    'Moves soft-deleted engagement_events older than now() - older_than into '
    'engagement_events_archive, batch_size rows at a time (SKIP LOCKED); returns '
    'the number moved. Service role only. Example: SELECT archive_old_deleted_events(''90 days'').';

-- -----------------------------------------------------------------------------
-- 4. delete_user_data(target_user)
--    Deletes everything of one user in the engagement tables, atomically (the
--    function runs inside the caller's transaction), and returns one row per
--    table with the number of rows deleted: a readable result in psql and an
--    easy audit record (jsonb_object_agg(table_name, deleted_rows)).
--    It does not delete auth.users or user_profiles (the account itself);
--    deleting the auth user cascades to every table here as well.
-- -----------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION public.delete_user_data(target_user uuid)
    RETURNS TABLE (table_name text, deleted_rows bigint)
    LANGUAGE plpgsql
    SECURITY INVOKER
    SET search_path = ''
AS $fn$
DECLARE
    n bigint;
BEGIN
    IF target_user IS NULL THEN
        RAISE EXCEPTION 'target_user must not be NULL'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    DELETE FROM public.engagement_message_queue WHERE user_id = target_user;
    GET DIAGNOSTICS n = ROW_COUNT;
    table_name := 'engagement_message_queue'; deleted_rows := n; RETURN NEXT;

    DELETE FROM public.engagement_state_transitions WHERE user_id = target_user;
    GET DIAGNOSTICS n = ROW_COUNT;
    table_name := 'engagement_state_transitions'; deleted_rows := n; RETURN NEXT;

    DELETE FROM public.user_engagement_states WHERE user_id = target_user;
    GET DIAGNOSTICS n = ROW_COUNT;
    table_name := 'user_engagement_states'; deleted_rows := n; RETURN NEXT;

    -- Live events before archived ones: if an archive run holds some of the user's rows,
    -- this DELETE waits for it, and the next statement's snapshot then sees the rows it
    -- moved. The other order would miss them.
    DELETE FROM public.engagement_events WHERE user_id = target_user;
    GET DIAGNOSTICS n = ROW_COUNT;
    table_name := 'engagement_events'; deleted_rows := n; RETURN NEXT;

    DELETE FROM public.engagement_events_archive WHERE user_id = target_user;
    GET DIAGNOSTICS n = ROW_COUNT;
    table_name := 'engagement_events_archive'; deleted_rows := n; RETURN NEXT;
END
$fn$;

COMMENT ON FUNCTION public.delete_user_data(uuid) IS
    'GDPR erasure: deletes the user''s engagement events (live and archived), engagement '
    'state, transitions and queued messages in one transaction; returns (table_name, '
    'deleted_rows) per table. Service role only. Deletes are not streamed by engagement-relay.';

-- -----------------------------------------------------------------------------
-- 5. EXECUTE: service role only.  Functions are executable by PUBLIC by
--    default, and Supabase's default privileges also grant EXECUTE to anon and
--    authenticated directly, so all three are revoked.
-- -----------------------------------------------------------------------------
REVOKE ALL ON FUNCTION public.archive_old_deleted_events(interval, integer)
    FROM PUBLIC, anon, authenticated;
REVOKE ALL ON FUNCTION public.delete_user_data(uuid)
    FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.archive_old_deleted_events(interval, integer) TO service_role;
GRANT EXECUTE ON FUNCTION public.delete_user_data(uuid) TO service_role;

-- -----------------------------------------------------------------------------
-- 6. Documentation
-- -----------------------------------------------------------------------------
COMMENT ON TABLE public.engagement_events_archive IS
    'Soft-deleted engagement_events moved out of the live table by '
    'archive_old_deleted_events(). Service role only; not published.';
COMMENT ON COLUMN public.engagement_events_archive.id IS 'The event''s id.';
COMMENT ON COLUMN public.engagement_events_archive.user_id IS
    'Owner of the event; archived rows are deleted with the user.';
COMMENT ON COLUMN public.engagement_events_archive."timestamp" IS
    'When the event happened (copied).';
COMMENT ON COLUMN public.engagement_events_archive.event_type IS 'The event type (copied).';
COMMENT ON COLUMN public.engagement_events_archive.value IS 'The event payload (copied).';
COMMENT ON COLUMN public.engagement_events_archive.is_deleted IS
    'The soft-delete flag as it was (always true for rows archived by the function).';
COMMENT ON COLUMN public.engagement_events_archive.archived_at IS
    'When the row was moved here; the archive purge goes by this column.';
