-- =============================================================================
-- Migration: 20241215000000_engagement_activity.sql
-- Purpose:   "Is this user inactive for 48 h?" (PRD section 3, the nudge
--            engine; issue 15) answered from user_engagement_states instead of
--            scanning engagement_events:
--              1. trigger engagement_events_touch_last_activity keeps
--                 user_engagement_states.last_activity_at (story 1.1) at the
--                 newest event "timestamp" of each user;
--              2. public.inactive_users(p_for, p_limit, p_after,
--                 p_include_opted_out) pages through the users whose
--                 last_activity_at is older than now() - p_for, skipping
--                 those with user_profiles.reengagement_opt_out unless asked.
--
-- 1. The trigger
--    * FOR EACH STATEMENT with a transition table (REFERENCING NEW TABLE), not
--      FOR EACH ROW: a 5,000-event batch (POST /v1/events/batch) then does one
--      upsert per user in the batch, with max("timestamp") per user, instead
--      of 5,000 upserts on a few hot rows (each a row lock, and an index and
--      heap visit).
--    * Upsert: a user without a state row gets one with the defaults of story
--      1.1 (state 'active': the seed's initial state; every NOT NULL column
--      has a default) and last_activity_at = the newest event.
--    * Never backwards, and at most one write per user per minute of event
--      time: the ON CONFLICT update only happens when the new time is more
--      than 1 minute after the stored one.  An older, late-arriving event
--      changes nothing; an active user's row is written (and its update
--      streamed by engagement-relay, whose default [[tables]] streams
--      user_engagement_states updates) at most once a minute.  The price:
--      last_activity_at may lag the newest event by up to 1 minute, which an
--      inactivity threshold of minutes to days does not notice.
--    * Rows are upserted in user_id order, so two concurrent batches lock
--      their common users' rows in the same order and cannot deadlock.
--    * SECURITY DEFINER, search_path = '': POST /v1/events inserts as the user
--      (role authenticated, under RLS), who may only SELECT their own state
--      (story 1.1, Task 6); the function runs as its owner (the migration
--      owner, who owns user_engagement_states) so the upsert is not refused.
--      It only ever writes rows of the users whose events were just inserted,
--      which RLS already allowed.  EXECUTE is revoked from everybody: a
--      trigger function cannot be called directly anyway.
--    * Events with a NULL "timestamp" (the column has a default but is
--      nullable) are ignored.
--
-- 2. inactive_users
--    Keyset-paged by user_id (p_after: the last user_id of the previous page,
--    NULL for the first): the order does not depend on last_activity_at, so a
--    user who becomes active while the engine pages simply drops out, and no
--    other user is skipped or repeated.  idx_user_engagement_states_last_activity_at
--    (story 1.1) serves "last_activity_at < now() - p_for" when inactive users
--    are a minority (then the planner reads only them, and sorts that set by
--    user_id); when most users are inactive, walking the user_id unique index
--    and stopping after p_limit rows is cheaper, and the planner picks that.
--    A plain LANGUAGE sql STABLE SECURITY INVOKER function without SET, so the
--    planner inlines it into the caller's query (EXPLAIN shows the real plan;
--    tests/inactive.rs checks the index is used at 100,000 users).
--    Service role only: EXECUTE revoked from PUBLIC, anon and authenticated.
--    Arguments are not checked here (engagement-relay's
--    GET /v1/users/inactive bounds them): a NULL p_limit returns every row,
--    a negative one is PostgreSQL's "LIMIT must not be negative".
--
-- Dependencies: 20241201000000_engagement_events.sql (table),
--   20241210000000_engagement_system.sql (user_engagement_states, its index,
--   user_profiles.reengagement_opt_out),
--   20241214000000_user_profiles_privileges.sql (service_role may read
--   user_profiles).
-- Transaction: run by the migration runner inside BEGIN/COMMIT.
-- Re-running:  idempotent (CREATE OR REPLACE; REVOKE/GRANT).
-- Rollback:    sql/rollback/20241215000000_engagement_activity.sql
-- =============================================================================

-- -----------------------------------------------------------------------------
-- 1. last_activity_at from engagement_events inserts.
-- -----------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION public.engagement_events_touch_last_activity()
    RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = ''
AS $body$
BEGIN
    INSERT INTO public.user_engagement_states AS s (user_id, last_activity_at)
    SELECT n.user_id, max(n."timestamp")
    FROM new_events n
    WHERE n."timestamp" IS NOT NULL
    GROUP BY n.user_id
    ORDER BY n.user_id
    ON CONFLICT (user_id) DO UPDATE
        SET last_activity_at = EXCLUDED.last_activity_at
        WHERE s.last_activity_at < EXCLUDED.last_activity_at - interval '1 minute';
    RETURN NULL;
END
$body$;

COMMENT ON FUNCTION public.engagement_events_touch_last_activity() IS
    'Trigger function (AFTER INSERT FOR EACH STATEMENT on engagement_events, transition table '
    'new_events): upserts user_engagement_states.last_activity_at to the newest event per user; '
    'never backwards, at most once a minute of event time (20241215000000_engagement_activity.sql).';

REVOKE ALL ON FUNCTION public.engagement_events_touch_last_activity()
    FROM PUBLIC, anon, authenticated, service_role;

CREATE OR REPLACE TRIGGER engagement_events_touch_last_activity
    AFTER INSERT ON public.engagement_events
    REFERENCING NEW TABLE AS new_events
    FOR EACH STATEMENT
    EXECUTE FUNCTION public.engagement_events_touch_last_activity();

COMMENT ON TRIGGER engagement_events_touch_last_activity ON public.engagement_events IS
    'Keeps user_engagement_states.last_activity_at current: one upsert per user and statement.';

-- -----------------------------------------------------------------------------
-- 2. inactive_users: $1 p_for, $2 p_limit, $3 p_after, $4 p_include_opted_out.
-- -----------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION public.inactive_users(
    p_for interval,
    p_limit integer,
    p_after uuid,
    p_include_opted_out boolean DEFAULT false)
    RETURNS TABLE (user_id uuid, last_activity_at timestamptz)
    LANGUAGE sql
    STABLE
AS $body$
    SELECT s.user_id, s.last_activity_at
    FROM public.user_engagement_states s
    WHERE s.last_activity_at < now() - p_for
      AND (p_after IS NULL OR s.user_id > p_after)
      AND (p_include_opted_out
           OR NOT EXISTS (SELECT 1 FROM public.user_profiles p
                          WHERE p.id = s.user_id AND p.reengagement_opt_out))
    ORDER BY s.user_id
    LIMIT p_limit
$body$;

COMMENT ON FUNCTION public.inactive_users(interval, integer, uuid, boolean) IS
    'Users whose last_activity_at is before now() - p_for, by user_id after p_after (NULL: '
    'from the start), at most p_limit; without reengagement_opt_out users unless '
    'p_include_opted_out.  Service role only (20241215000000_engagement_activity.sql).';

REVOKE ALL ON FUNCTION public.inactive_users(interval, integer, uuid, boolean)
    FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.inactive_users(interval, integer, uuid, boolean)
    TO service_role;
