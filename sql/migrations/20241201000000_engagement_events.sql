-- =============================================================================
-- Migration: 20241201000000_engagement_events.sql
-- Purpose:   Engagement events logging for the BEE core (engagement) module.
--            One generic, append-mostly table that records every behavioural
--            touchpoint (app opens, goal completions, wearable imports, coach
--            messages) as event_type + JSONB payload, protected by per-user
--            row-level security, and published for logical replication so the
--            engagement-relay daemon can stream new rows to WebSocket clients.
--
-- Dependencies:
--   * auth.users(id)                       FK target of user_id
--   * auth.uid()                           used by the RLS policies
--   * roles anon, authenticated, service_role
--   These exist on Supabase; on vanilla PostgreSQL apply
--   20241130000000_supabase_shim.sql first.
--   gen_random_uuid() is core PostgreSQL since 13 (no pgcrypto needed).
--   The publication only carries changes when wal_level = logical.
--
-- Transaction: the migration runner wraps this file in BEGIN/COMMIT, so it
--   contains no transaction control and no CREATE INDEX CONCURRENTLY.
-- Re-running:  the runner applies this file once; even so every statement is
--   guarded (IF NOT EXISTS / catalog checks / OR REPLACE) so a manual
--   re-application is harmless.
-- Rollback:    DROP PUBLICATION IF EXISTS engagement_events_pub;
--              DROP TABLE IF EXISTS public.engagement_events;
--              DROP FUNCTION IF EXISTS public.engagement_events_reject_future_timestamp();
-- =============================================================================

-- -----------------------------------------------------------------------------
-- 1. Table
-- -----------------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS public.engagement_events (
    id          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id     uuid        NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    "timestamp" timestamptz DEFAULT now(),
    event_type  text        NOT NULL,
    value       jsonb       DEFAULT '{}'::jsonb,
    is_deleted  boolean     DEFAULT false
);

-- -----------------------------------------------------------------------------
-- 2. event_type format rule (business rule for valid event types):
--      * non-empty lower snake case: starts with a letter a-z, then letters
--        a-z / digits 0-9, words separated by single underscores; no leading,
--        trailing or double underscores, no upper case, no spaces or dots;
--      * at most 64 characters.
--    Valid:   app_open, goal_complete, steps_import, coach_message, sleep_8h
--    Invalid: AppOpen, app-open, _app_open, app__open, app_open_, '' (empty)
-- -----------------------------------------------------------------------------
DO $constraint$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_catalog.pg_constraint
        WHERE conrelid = 'public.engagement_events'::regclass
          AND conname = 'engagement_events_event_type_format'
    ) THEN
        ALTER TABLE public.engagement_events
            ADD CONSTRAINT engagement_events_event_type_format CHECK (
                event_type ~ '^[a-z][a-z0-9]*(_[a-z0-9]+)*$'
                AND char_length(event_type) <= 64
            );
    END IF;
END
$constraint$;

COMMENT ON CONSTRAINT engagement_events_event_type_format ON public.engagement_events IS
    'event_type must be non-empty lower snake case (^[a-z][a-z0-9]*(_[a-z0-9]+)*$, '
    'e.g. app_open, goal_complete) and at most 64 characters long.';

-- -----------------------------------------------------------------------------
-- 3. Indexes (naming convention idx_engagement_events_<purpose>)
-- -----------------------------------------------------------------------------
-- Per-user timeline queries ("latest events of user X"); also serves the
-- ON DELETE CASCADE lookups from auth.users and the RLS predicate on user_id.
CREATE INDEX IF NOT EXISTS idx_engagement_events_user_timestamp
    ON public.engagement_events (user_id, "timestamp" DESC);

-- Payload searches (value @> '{"goal_type":"steps"}', value ? 'source', ...).
CREATE INDEX IF NOT EXISTS idx_engagement_events_value
    ON public.engagement_events USING gin (value);

-- Filtering / aggregating by event type.
CREATE INDEX IF NOT EXISTS idx_engagement_events_type
    ON public.engagement_events (event_type);

-- -----------------------------------------------------------------------------
-- 4. "timestamp" must not lie more than 60 seconds in the future.
--    This is a trigger, not a CHECK constraint: CHECK expressions must be
--    immutable (PostgreSQL assumes a row that passed once always passes, e.g.
--    on restore or when validating), and a rule involving now() changes its
--    verdict as time passes.  A BEFORE trigger checks each row exactly when it
--    is written.  The 60 s allowance absorbs client/server clock skew.  The
--    wall clock (clock_timestamp()) is used rather than now(), which is frozen
--    at transaction start and would reject valid rows in long batch imports.
--    On UPDATE the check only runs when "timestamp" actually changes, so soft
--    deletes (is_deleted = true) never trip over it.  NULL is let through
--    (the column is nullable per the spec).
-- -----------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION public.engagement_events_reject_future_timestamp()
    RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = ''
AS $fn$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW."timestamp" IS NOT DISTINCT FROM OLD."timestamp" THEN
        RETURN NEW;
    END IF;

    IF NEW."timestamp" > clock_timestamp() + interval '60 seconds' THEN
        RAISE EXCEPTION USING
            ERRCODE    = 'check_violation',   -- SQLSTATE 23514
            MESSAGE    = format(
                'engagement_events."timestamp" must not be more than 60 seconds '
                'in the future (got %s, server time is %s)',
                NEW."timestamp", clock_timestamp()),
            HINT       = 'Send event timestamps in UTC and check the client clock.',
            SCHEMA     = TG_TABLE_SCHEMA,
            TABLE      = TG_TABLE_NAME,
            COLUMN     = 'timestamp',
            CONSTRAINT = 'engagement_events_timestamp_not_future';
    END IF;

    RETURN NEW;
END
$fn$;

COMMENT ON FUNCTION public.engagement_events_reject_future_timestamp() IS
    'Trigger function: rejects engagement_events rows whose "timestamp" is more '
    'than 60 s ahead of the server clock (SQLSTATE 23514 check_violation).';

-- CREATE OR REPLACE TRIGGER needs PostgreSQL >= 14.
CREATE OR REPLACE TRIGGER engagement_events_timestamp_not_future
    BEFORE INSERT OR UPDATE ON public.engagement_events
    FOR EACH ROW
    EXECUTE FUNCTION public.engagement_events_reject_future_timestamp();

COMMENT ON TRIGGER engagement_events_timestamp_not_future ON public.engagement_events IS
    'Enforces "timestamp" <= server time + 60 s (a CHECK cannot use now()).';

-- -----------------------------------------------------------------------------
-- 5. Row-level security
--    Policies are written as in the spec.  The user policies have no TO clause
--    (they apply to every role); for anon, auth.uid() is NULL so they never
--    match, and anon has no table privileges anyway (section 6).  The table
--    owner and superusers bypass RLS; service_role has BYPASSRLS on Supabase
--    and in the shim, its INSERT policy keeps intent explicit regardless.
-- -----------------------------------------------------------------------------
ALTER TABLE public.engagement_events ENABLE ROW LEVEL SECURITY;

DO $policies$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_policies
                   WHERE schemaname = 'public' AND tablename = 'engagement_events'
                     AND policyname = 'Users can view own events') THEN
        CREATE POLICY "Users can view own events"
            ON public.engagement_events
            FOR SELECT
            USING (auth.uid() = user_id);
    END IF;

    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_policies
                   WHERE schemaname = 'public' AND tablename = 'engagement_events'
                     AND policyname = 'Users can insert own events') THEN
        CREATE POLICY "Users can insert own events"
            ON public.engagement_events
            FOR INSERT
            WITH CHECK (auth.uid() = user_id);
    END IF;

    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_policies
                   WHERE schemaname = 'public' AND tablename = 'engagement_events'
                     AND policyname = 'Service role can insert any events') THEN
        CREATE POLICY "Service role can insert any events"
            ON public.engagement_events
            FOR INSERT
            TO service_role
            WITH CHECK (true);
    END IF;
END
$policies$;

COMMENT ON POLICY "Users can view own events" ON public.engagement_events IS
    'A signed-in user reads only rows whose user_id is their JWT sub.';
COMMENT ON POLICY "Users can insert own events" ON public.engagement_events IS
    'A signed-in user may only insert rows for themself.';
COMMENT ON POLICY "Service role can insert any events" ON public.engagement_events IS
    'Batch imports (Cloud Functions) may insert rows for any user.';

-- -----------------------------------------------------------------------------
-- 6. Privileges
--    Supabase's default privileges give anon and authenticated ALL on new
--    tables in public (including TRUNCATE, which RLS does not restrict), so
--    revoke everything first, then grant exactly what is intended:
--      anon           nothing (permission denied)
--      authenticated  SELECT, INSERT (rows filtered by the policies above)
--      service_role   ALL
--    No UPDATE/DELETE for users: soft deletes are done by the service role.
-- -----------------------------------------------------------------------------
REVOKE ALL ON public.engagement_events FROM PUBLIC, anon, authenticated;
GRANT SELECT, INSERT ON public.engagement_events TO authenticated;
GRANT ALL ON public.engagement_events TO service_role;

-- -----------------------------------------------------------------------------
-- 7. Publication for the engagement-relay logical replication slot
--    (pgoutput).  Inserts and updates only: updates carry soft deletes
--    (is_deleted); deletes (GDPR / ON DELETE CASCADE) are not streamed.
--    REPLICA IDENTITY DEFAULT (the primary key) suffices for updates.
--    Created only if missing; if a publication of that name exists without
--    the table, the table is added to it.  The replication slot itself is
--    created by the daemon/operator: a logical slot cannot be created in a
--    transaction that has already written, i.e. not inside a migration.
-- -----------------------------------------------------------------------------
DO $publication$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_publication
                   WHERE pubname = 'engagement_events_pub') THEN
        CREATE PUBLICATION engagement_events_pub
            FOR TABLE public.engagement_events
            WITH (publish = 'insert, update');
    ELSIF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_publication_tables
                      WHERE pubname = 'engagement_events_pub'
                        AND schemaname = 'public'
                        AND tablename = 'engagement_events') THEN
        RAISE NOTICE 'publication engagement_events_pub exists without public.engagement_events; adding it';
        ALTER PUBLICATION engagement_events_pub ADD TABLE public.engagement_events;
    END IF;
END
$publication$;

COMMENT ON PUBLICATION engagement_events_pub IS
    'INSERT/UPDATE changes of public.engagement_events for the engagement-relay daemon.';

-- -----------------------------------------------------------------------------
-- 8. Documentation
-- -----------------------------------------------------------------------------
COMMENT ON TABLE public.engagement_events IS
    'Every behavioural touchpoint of a user (BEE core engagement module): '
    'generic event_type + JSONB payload. RLS: users see/insert only their own rows.';
COMMENT ON COLUMN public.engagement_events.id IS
    'Event id (random UUID v4).';
COMMENT ON COLUMN public.engagement_events.user_id IS
    'Owner of the event (auth.users.id); events are deleted with the user.';
COMMENT ON COLUMN public.engagement_events."timestamp" IS
    'When the event happened (timestamptz, stored as UTC); defaults to now(); '
    'at most 60 s in the future (trigger engagement_events_timestamp_not_future).';
COMMENT ON COLUMN public.engagement_events.event_type IS
    'Lower snake case event name, max 64 chars, e.g. app_open, goal_complete, '
    'steps_import, coach_message (constraint engagement_events_event_type_format).';
COMMENT ON COLUMN public.engagement_events.value IS
    'Event payload (JSONB, default {}); schema depends on event_type.';
COMMENT ON COLUMN public.engagement_events.is_deleted IS
    'Soft-delete flag (data retention); readers should filter is_deleted = false.';
