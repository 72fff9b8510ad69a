-- =============================================================================
-- Migration: 20241210000000_engagement_system.sql
-- Purpose:   Engagement system schema (Story 1.1 "Database Schema Migration").
--            The story names this file fe/scripts/034_engagement_system.sql;
--            this repository uses the Supabase CLI naming (<timestamp>_<name>.sql,
--            recorded in supabase_migrations.schema_migrations), so it lives here
--            under 20241210000000_engagement_system.sql.  Same content.
--
-- Story acceptance criteria and where each is met:
--   AC-1  the migration file exists                       (this file)
--   AC-2  user_engagement_states (id, user_id, state, last_activity_at,
--         goodbye_sent_at, goodbye_expires_at, remind_at, created_at,
--         updated_at)                                     section 2
--   AC-3  engagement_state_transitions (id, user_id, from_state, to_state,
--         trigger, metadata, created_at)                  section 3
--   AC-4  engagement_message_queue (id, user_id, message_type, message_key,
--         message_params, destination, destination_jid, scheduled_for,
--         sent_at, status, retry_count, error_message, idempotency_key,
--         created_at)                                     section 4
--   AC-5  user_profiles gains preferred_destination, reengagement_opt_out,
--         onboarding_tier, onboarding_tier_progress, magic_moment_at
--                                                         section 5
--   AC-6  scheduler indexes (state, last_activity_at, goodbye_expires_at,
--         remind_at; pending queue rows)                  sections 2-4
--   AC-7  RLS on every new table                          section 6
--   AC-8  CHECK constraints on state, message_type, status, destination
--                                                         sections 2-5
--
-- Decisions the story leaves open:
--   * message_type values: the story asks for a CHECK but lists none.  The
--     values are the proactive messages of the engagement epic:
--       welcome        first message after sign-up
--       tier_unlock    an onboarding tier (user_profiles.onboarding_tier) reached
--       goodbye        the "are you still there?" message (state goodbye_sent)
--       weekly_review  the weekly summary
--       reminder       the "remind me later" follow-up (state remind_later)
--       help_restart   restart of the help flow (state help_flow)
--     A new type needs a migration that replaces the CHECK.
--   * NOT NULL: the story gives types and defaults, not nullability.  Every
--     column that has a default, identifies a row or is needed to act on it is
--     NOT NULL; the timestamps of events that may not have happened yet
--     (goodbye_*, remind_at, sent_at, magic_moment_at), from_state (NULL for
--     a user's first transition) and error_message are nullable.
--   * CHECK and UNIQUE constraints carry explicit names
--     (<table>_<column>_check / _key) so tests and later migrations can
--     refer to them.
--
-- Dependencies:
--   * auth.users(id), auth.uid(), roles anon/authenticated/service_role and
--     public.user_profiles(id): Supabase, or 20241130000000_supabase_shim.sql
--   * publication engagement_events_pub: 20241201000000_engagement_events.sql
--
-- Replication: user_engagement_states and engagement_state_transitions are
--   added to engagement_events_pub (insert, update), so engagement-relay
--   streams a user's transitions (inserts) and engagement-state changes
--   (inserts and updates) to that user's sockets, routed by user_id like
--   engagement_events.  engagement_message_queue is never published: it holds
--   WhatsApp JIDs and scheduler bookkeeping that no client should see.
--
-- Transaction: the migration runner wraps this file in BEGIN/COMMIT, so it
--   contains no transaction control and no CREATE INDEX CONCURRENTLY.
-- Re-running:  every statement is guarded (IF NOT EXISTS / catalog checks).
--   On a database that already ran the story's 034 script, existing tables are
--   left as they are (their constraints included); missing indexes, columns,
--   user_profiles CHECKs, policies, grants and publication entries are added.
-- Rollback:    sql/rollback/20241210000000_engagement_system.sql
-- =============================================================================

-- -----------------------------------------------------------------------------
-- 1. Shared trigger function for updated_at columns.
--    One function for every table with an updated_at column (today only
--    user_engagement_states; later tables attach their own trigger to it).
--    Created only if missing, so a project that already has a
--    public.set_updated_at() keeps its own.  now() is the transaction's start
--    time: every row updated by one transaction gets the same updated_at.
-- -----------------------------------------------------------------------------
DO $fn$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_catalog.pg_proc p
        JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = 'public' AND p.proname = 'set_updated_at' AND p.pronargs = 0
    ) THEN
        CREATE FUNCTION public.set_updated_at()
            RETURNS trigger
            LANGUAGE plpgsql
            SET search_path = ''
        AS $body$
        BEGIN
            NEW.updated_at := now();
            RETURN NEW;
        END
        $body$;
        COMMENT ON FUNCTION public.set_updated_at() IS
            'Trigger function (BEFORE UPDATE): sets NEW.updated_at to now(); shared by '
            'every table with an updated_at column (20241210000000_engagement_system.sql).';
    ELSE
        RAISE NOTICE 'public.set_updated_at() already exists; reusing it';
    END IF;
END
$fn$;

-- -----------------------------------------------------------------------------
-- 2. user_engagement_states: one row per user, the engagement state machine.
-- -----------------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS public.user_engagement_states (
    id                 uuid        NOT NULL DEFAULT gen_random_uuid(),
    user_id            uuid        NOT NULL,
    state              text        NOT NULL DEFAULT 'active',
    last_activity_at   timestamptz NOT NULL DEFAULT now(),
    goodbye_sent_at    timestamptz,
    goodbye_expires_at timestamptz,
    remind_at          timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT user_engagement_states_pkey PRIMARY KEY (id),
    CONSTRAINT user_engagement_states_user_id_key UNIQUE (user_id),
    CONSTRAINT user_engagement_states_user_id_fkey FOREIGN KEY (user_id)
        REFERENCES auth.users (id) ON DELETE CASCADE,
    CONSTRAINT user_engagement_states_state_check CHECK (
        state IN ('active', 'goodbye_sent', 'help_flow', 'remind_later', 'dormant'))
);

-- Scheduler queries: "all users in state X", "inactive since T" (the unique
-- index on user_id already serves per-user lookups and the cascade).
CREATE INDEX IF NOT EXISTS idx_user_engagement_states_state
    ON public.user_engagement_states (state);
CREATE INDEX IF NOT EXISTS idx_user_engagement_states_last_activity_at
    ON public.user_engagement_states (last_activity_at);
-- "goodbye expired" and "reminder due" sweeps; most rows have NULL here, so
-- partial indexes stay small.
CREATE INDEX IF NOT EXISTS idx_user_engagement_states_goodbye_expires_at
    ON public.user_engagement_states (goodbye_expires_at)
    WHERE goodbye_expires_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_user_engagement_states_remind_at
    ON public.user_engagement_states (remind_at)
    WHERE remind_at IS NOT NULL;

-- CREATE OR REPLACE TRIGGER needs PostgreSQL >= 14.
CREATE OR REPLACE TRIGGER user_engagement_states_set_updated_at
    BEFORE UPDATE ON public.user_engagement_states
    FOR EACH ROW
    EXECUTE FUNCTION public.set_updated_at();

-- -----------------------------------------------------------------------------
-- 3. engagement_state_transitions: append-only audit of state changes.
-- -----------------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS public.engagement_state_transitions (
    id         uuid        NOT NULL DEFAULT gen_random_uuid(),
    user_id    uuid        NOT NULL,
    from_state text,
    to_state   text        NOT NULL,
    trigger    text        NOT NULL,
    metadata   jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT engagement_state_transitions_pkey PRIMARY KEY (id),
    CONSTRAINT engagement_state_transitions_user_id_fkey FOREIGN KEY (user_id)
        REFERENCES auth.users (id) ON DELETE CASCADE,
    -- NULL passes a CHECK: from_state is NULL for a user's first transition.
    CONSTRAINT engagement_state_transitions_from_state_check CHECK (
        from_state IN ('active', 'goodbye_sent', 'help_flow', 'remind_later', 'dormant')),
    CONSTRAINT engagement_state_transitions_to_state_check CHECK (
        to_state IN ('active', 'goodbye_sent', 'help_flow', 'remind_later', 'dormant'))
);

CREATE INDEX IF NOT EXISTS idx_engagement_state_transitions_user_id
    ON public.engagement_state_transitions (user_id);
CREATE INDEX IF NOT EXISTS idx_engagement_state_transitions_created_at
    ON public.engagement_state_transitions (created_at);

-- -----------------------------------------------------------------------------
-- 4. engagement_message_queue: proactive messages waiting to be sent.
-- -----------------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS public.engagement_message_queue (
    id              uuid        NOT NULL DEFAULT gen_random_uuid(),
    user_id         uuid        NOT NULL,
    message_type    text        NOT NULL,
    message_key     text        NOT NULL,
    message_params  jsonb       NOT NULL DEFAULT '{}'::jsonb,
    destination     text        NOT NULL,
    destination_jid text        NOT NULL,
    scheduled_for   timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz,
    status          text        NOT NULL DEFAULT 'pending',
    retry_count     integer     NOT NULL DEFAULT 0,
    error_message   text,
    idempotency_key text        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT engagement_message_queue_pkey PRIMARY KEY (id),
    CONSTRAINT engagement_message_queue_idempotency_key_key UNIQUE (idempotency_key),
    CONSTRAINT engagement_message_queue_user_id_fkey FOREIGN KEY (user_id)
        REFERENCES auth.users (id) ON DELETE CASCADE,
    CONSTRAINT engagement_message_queue_message_type_check CHECK (
        message_type IN ('welcome', 'tier_unlock', 'goodbye', 'weekly_review',
                         'reminder', 'help_restart')),
    CONSTRAINT engagement_message_queue_destination_check CHECK (
        destination IN ('individual', 'group')),
    CONSTRAINT engagement_message_queue_status_check CHECK (
        status IN ('pending', 'sent', 'failed', 'cancelled')),
    CONSTRAINT engagement_message_queue_retry_count_check CHECK (retry_count >= 0)
);

-- The scheduler only ever looks at pending rows ("what is due now?").
CREATE INDEX IF NOT EXISTS idx_engagement_message_queue_status
    ON public.engagement_message_queue (status)
    WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS idx_engagement_message_queue_scheduled_for
    ON public.engagement_message_queue (scheduled_for)
    WHERE status = 'pending';

-- -----------------------------------------------------------------------------
-- 5. user_profiles: engagement preferences and onboarding progress.
--    Columns first, then the CHECKs by name, so a column that already exists
--    (e.g. from the story's 034 script) still gets its constraint.  ADD COLUMN
--    with a constant default does not rewrite the table (PostgreSQL >= 11).
-- -----------------------------------------------------------------------------
ALTER TABLE public.user_profiles
    ADD COLUMN IF NOT EXISTS preferred_destination    text        NOT NULL DEFAULT 'individual',
    ADD COLUMN IF NOT EXISTS reengagement_opt_out     boolean     NOT NULL DEFAULT false,
    ADD COLUMN IF NOT EXISTS onboarding_tier          integer     NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS onboarding_tier_progress jsonb       NOT NULL DEFAULT '{}'::jsonb,
    ADD COLUMN IF NOT EXISTS magic_moment_at          timestamptz;

DO $constraints$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint
                   WHERE conrelid = 'public.user_profiles'::regclass
                     AND conname = 'user_profiles_preferred_destination_check') THEN
        ALTER TABLE public.user_profiles
            ADD CONSTRAINT user_profiles_preferred_destination_check
            CHECK (preferred_destination IN ('individual', 'group'));
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint
                   WHERE conrelid = 'public.user_profiles'::regclass
                     AND conname = 'user_profiles_onboarding_tier_check') THEN
        ALTER TABLE public.user_profiles
            ADD CONSTRAINT user_profiles_onboarding_tier_check
            CHECK (onboarding_tier BETWEEN 0 AND 3);
    END IF;
END
$constraints$;

-- -----------------------------------------------------------------------------
-- 6. Row-level security (policy names are the story's Task 6 lines).
--    Users read their own state and transitions; they never write them (the
--    engagement service does, as service_role) and never see the queue.
--    service_role has BYPASSRLS on Supabase and in the shim; its policies make
--    the intent explicit regardless.
-- -----------------------------------------------------------------------------
ALTER TABLE public.user_engagement_states ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.engagement_state_transitions ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.engagement_message_queue ENABLE ROW LEVEL SECURITY;

DO $policies$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_policies
                   WHERE schemaname = 'public' AND tablename = 'user_engagement_states'
                     AND policyname = 'Users can SELECT own engagement state') THEN
        CREATE POLICY "Users can SELECT own engagement state"
            ON public.user_engagement_states
            FOR SELECT TO authenticated
            USING (auth.uid() = user_id);
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_policies
                   WHERE schemaname = 'public' AND tablename = 'user_engagement_states'
                     AND policyname = 'Service role can manage all engagement states') THEN
        CREATE POLICY "Service role can manage all engagement states"
            ON public.user_engagement_states
            FOR ALL TO service_role
            USING (true) WITH CHECK (true);
    END IF;

    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_policies
                   WHERE schemaname = 'public' AND tablename = 'engagement_state_transitions'
                     AND policyname = 'Users can SELECT own transitions') THEN
        CREATE POLICY "Users can SELECT own transitions"
            ON public.engagement_state_transitions
            FOR SELECT TO authenticated
            USING (auth.uid() = user_id);
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_policies
                   WHERE schemaname = 'public' AND tablename = 'engagement_state_transitions'
                     AND policyname = 'Service role can manage all transitions') THEN
        CREATE POLICY "Service role can manage all transitions"
            ON public.engagement_state_transitions
            FOR ALL TO service_role
            USING (true) WITH CHECK (true);
    END IF;

    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_policies
                   WHERE schemaname = 'public' AND tablename = 'engagement_message_queue'
                     AND policyname = 'Service role only') THEN
        CREATE POLICY "Service role only"
            ON public.engagement_message_queue
            FOR ALL TO service_role
            USING (true) WITH CHECK (true);
    END IF;
END
$policies$;

COMMENT ON POLICY "Users can SELECT own engagement state" ON public.user_engagement_states IS
    'A signed-in user reads only their own state row (JWT sub = user_id).';
COMMENT ON POLICY "Service role can manage all engagement states" ON public.user_engagement_states IS
    'The engagement service (service_role) reads and writes every state row.';
COMMENT ON POLICY "Users can SELECT own transitions" ON public.engagement_state_transitions IS
    'A signed-in user reads only their own transitions (read-only).';
COMMENT ON POLICY "Service role can manage all transitions" ON public.engagement_state_transitions IS
    'The engagement service (service_role) records and reads every transition.';
COMMENT ON POLICY "Service role only" ON public.engagement_message_queue IS
    'Only the scheduler (service_role) touches the queue; users have no access.';

-- -----------------------------------------------------------------------------
-- 7. Privileges.  Supabase's default privileges give anon and authenticated
--    ALL on new tables in public (TRUNCATE included, which RLS does not
--    restrict), so revoke everything first, then grant exactly what is meant:
--      anon           nothing
--      authenticated  SELECT on states and transitions (rows filtered by RLS),
--                     nothing on the queue
--      service_role   ALL
-- -----------------------------------------------------------------------------
REVOKE ALL ON public.user_engagement_states,
              public.engagement_state_transitions,
              public.engagement_message_queue
    FROM PUBLIC, anon, authenticated;
GRANT SELECT ON public.user_engagement_states, public.engagement_state_transitions
    TO authenticated;
GRANT ALL ON public.user_engagement_states,
             public.engagement_state_transitions,
             public.engagement_message_queue
    TO service_role;

-- -----------------------------------------------------------------------------
-- 8. Publication: stream states and transitions to their owners (see header).
--    REPLICA IDENTITY DEFAULT (the primary key) suffices for updates.
-- -----------------------------------------------------------------------------
DO $publication$
DECLARE
    t text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_publication
                   WHERE pubname = 'engagement_events_pub') THEN
        RAISE EXCEPTION 'publication engagement_events_pub does not exist'
            USING HINT = 'Apply 20241201000000_engagement_events.sql first.';
    END IF;
    FOREACH t IN ARRAY ARRAY['user_engagement_states', 'engagement_state_transitions'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_publication_tables
                       WHERE pubname = 'engagement_events_pub'
                         AND schemaname = 'public' AND tablename = t) THEN
            EXECUTE format('ALTER PUBLICATION engagement_events_pub ADD TABLE public.%I', t);
        END IF;
    END LOOP;
END
$publication$;

COMMENT ON PUBLICATION engagement_events_pub IS
    'INSERT/UPDATE changes of public.engagement_events, public.user_engagement_states and '
    'public.engagement_state_transitions for the engagement-relay daemon.';

-- -----------------------------------------------------------------------------
-- 9. Documentation
-- -----------------------------------------------------------------------------
COMMENT ON TABLE public.user_engagement_states IS
    'Engagement state machine, one row per user (ADR-001). RLS: users read their own row; '
    'the service role writes. Published to engagement-relay (insert, update).';
COMMENT ON COLUMN public.user_engagement_states.id IS 'Row id (random UUID).';
COMMENT ON COLUMN public.user_engagement_states.user_id IS
    'The user (auth.users.id); one row per user; deleted with the user.';
COMMENT ON COLUMN public.user_engagement_states.state IS
    'active | goodbye_sent | help_flow | remind_later | dormant; new users start active.';
COMMENT ON COLUMN public.user_engagement_states.last_activity_at IS
    'Last time the user did anything; drives the inactivity (goodbye) sweep.';
COMMENT ON COLUMN public.user_engagement_states.goodbye_sent_at IS
    'When the goodbye message was sent (state goodbye_sent), else NULL.';
COMMENT ON COLUMN public.user_engagement_states.goodbye_expires_at IS
    'When an unanswered goodbye moves the user to dormant, else NULL.';
COMMENT ON COLUMN public.user_engagement_states.remind_at IS
    'When to remind a user who chose "remind me later" (state remind_later), else NULL.';
COMMENT ON COLUMN public.user_engagement_states.created_at IS 'When the row was created.';
COMMENT ON COLUMN public.user_engagement_states.updated_at IS
    'Last update of the row; maintained by trigger user_engagement_states_set_updated_at.';

COMMENT ON TABLE public.engagement_state_transitions IS
    'Append-only log of engagement state changes. RLS: users read their own rows; '
    'the service role writes. Published to engagement-relay (insert).';
COMMENT ON COLUMN public.engagement_state_transitions.id IS 'Row id (random UUID).';
COMMENT ON COLUMN public.engagement_state_transitions.user_id IS
    'The user (auth.users.id); deleted with the user.';
COMMENT ON COLUMN public.engagement_state_transitions.from_state IS
    'State before the change; NULL for the first transition of a user.';
COMMENT ON COLUMN public.engagement_state_transitions.to_state IS 'State after the change.';
COMMENT ON COLUMN public.engagement_state_transitions.trigger IS
    'What caused the change (e.g. inactivity_timeout, user_message, goodbye_expired).';
COMMENT ON COLUMN public.engagement_state_transitions.metadata IS
    'Details of the change (JSONB, default {}).';
COMMENT ON COLUMN public.engagement_state_transitions.created_at IS 'When the change happened.';

COMMENT ON TABLE public.engagement_message_queue IS
    'Proactive WhatsApp messages waiting to be sent (ADR-003). Service role only; '
    'never published (holds JIDs and scheduler bookkeeping).';
COMMENT ON COLUMN public.engagement_message_queue.id IS 'Row id (random UUID).';
COMMENT ON COLUMN public.engagement_message_queue.user_id IS
    'The recipient (auth.users.id); deleted with the user.';
COMMENT ON COLUMN public.engagement_message_queue.message_type IS
    'welcome | tier_unlock | goodbye | weekly_review | reminder | help_restart.';
COMMENT ON COLUMN public.engagement_message_queue.message_key IS
    'Localization key of the message text.';
COMMENT ON COLUMN public.engagement_message_queue.message_params IS
    'Variables for the localized text (JSONB, default {}).';
COMMENT ON COLUMN public.engagement_message_queue.destination IS
    'individual (direct chat) or group.';
COMMENT ON COLUMN public.engagement_message_queue.destination_jid IS
    'WhatsApp JID the message is sent to.';
COMMENT ON COLUMN public.engagement_message_queue.scheduled_for IS
    'Not to be sent before this time.';
COMMENT ON COLUMN public.engagement_message_queue.sent_at IS 'When it was sent, else NULL.';
COMMENT ON COLUMN public.engagement_message_queue.status IS
    'pending | sent | failed | cancelled; the scheduler reads pending rows only.';
COMMENT ON COLUMN public.engagement_message_queue.retry_count IS
    'Failed send attempts so far (>= 0).';
COMMENT ON COLUMN public.engagement_message_queue.error_message IS
    'Last send error, else NULL.';
COMMENT ON COLUMN public.engagement_message_queue.idempotency_key IS
    'Unique per intended message, so a message is never queued twice (NFR7).';
COMMENT ON COLUMN public.engagement_message_queue.created_at IS 'When it was queued.';

COMMENT ON COLUMN public.user_profiles.preferred_destination IS
    'Where proactive messages go: individual (default) or group.';
COMMENT ON COLUMN public.user_profiles.reengagement_opt_out IS
    'true: the user opted out of re-engagement messages (goodbye, reminders).';
COMMENT ON COLUMN public.user_profiles.onboarding_tier IS
    'Onboarding tier reached, 0 (none) to 3.';
COMMENT ON COLUMN public.user_profiles.onboarding_tier_progress IS
    'Progress towards the next tier (JSONB, default {}).';
COMMENT ON COLUMN public.user_profiles.magic_moment_at IS
    'When the user first reached the "magic moment", else NULL.';
