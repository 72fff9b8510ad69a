-- =============================================================================
-- Migration: 20241216000000_engagement_analytics.sql
-- Purpose:   "I run cohort SQL to study weekly engagement trends" (PRD section
--            3, the analyst; issue 15 part 2):
--              1. role analyst: a read-only NOLOGIN group role; people log in
--                 with roles of their own that are members of it
--                 (docs/ANALYTICS.md);
--              2. RLS policy "Analysts can view all events" on
--                 engagement_events (FOR SELECT TO analyst USING (true)) and
--                 SELECT on the table;
--              3. views engagement_weekly_activity and
--                 engagement_weekly_cohorts, security_invoker;
--              4. BRIN index idx_engagement_events_timestamp_brin on
--                 engagement_events("timestamp").
--
-- 1. The role
--    Created only if missing, NOLOGIN and INHERIT (members inherit its
--    privileges), no BYPASSRLS: it reads engagement_events through its
--    policy.  Roles are cluster-wide, so an existing analyst role is reused
--    as it is.  It gets SELECT on engagement_events and on the two views, and
--    nothing else from this project: no INSERT/UPDATE/DELETE/TRUNCATE
--    anywhere, no privilege on engagement_message_queue (or any other table
--    of ours), and no USAGE on schema auth (the shim and Supabase grant it to
--    anon, authenticated and service_role only).  USAGE on schema public
--    comes from PUBLIC (PostgreSQL's and Supabase's default).
--
-- 2. The policy
--    RLS is on for engagement_events; policies of one command are OR'ed, so
--    for analyst "Users can view own events" (auth.uid() = user_id, NULL for
--    analyst) adds nothing and this one lets it read every user's rows,
--    soft-deleted ones included (the views exclude them).
--
-- 3. The views
--    * security_invoker = true (PostgreSQL 15): a view otherwise reads
--      its tables with its owner's privileges, and the owner (the migration
--      role, a superuser or the table owner) bypasses RLS: authenticated
--      would see everybody's events through it.  With security_invoker the
--      caller's privileges and policies apply: analyst sees all rows (its
--      policy), service_role all rows (BYPASSRLS).  Even so anon and
--      authenticated get no privilege on them (REVOKE ALL): Supabase
--      publishes views of schema public over its REST API.
--      security_invoker is PostgreSQL 15; the project supports 14 (doctor's
--      server_version check), where the option is skipped with a NOTICE: the
--      views then run as their owner and bypass RLS, which exposes nothing,
--      since only analyst and service_role may select from them and both
--      read every row of engagement_events anyway.  (Not tested here: the
--      test clusters are PostgreSQL 15.)
--    * Weeks are ISO weeks (Monday 00:00) in UTC: date_trunc('week',
--      "timestamp", 'UTC'), so the numbers do not depend on the session's
--      TimeZone.  Rows with is_deleted (soft-deleted, awaiting archiving) or
--      a NULL "timestamp" are left out.
--    * engagement_weekly_activity: week x event_type -> events, distinct
--      users.
--    * engagement_weekly_cohorts: each user belongs to the cohort of the week
--      of their first event; per cohort and week_number (0 = the cohort week,
--      1 = the next, ...) the users of the cohort active that week and their
--      share of the cohort (retention, 0..1, 4 decimals).  Only weeks in
--      which at least one user of the cohort was active have a row (a
--      missing week_number means 0 active users).
--
-- 4. The index
--    BRIN, not btree, for time-range scans across all users ("timestamp"
--    BETWEEN a AND b; idx_engagement_events_user_timestamp leads with
--    user_id and does not serve them): engagement_events is append-mostly and
--    rows arrive roughly in "timestamp" order, so the heap's physical order
--    is correlated with "timestamp" and a min/max summary per 128 pages
--    narrows a range scan to the right block ranges.  It is tiny (a few
--    pages per million rows against ~30 MB for a btree) and adds almost
--    nothing to each insert (the hot ingest path).  Late-arriving or
--    back-dated events widen a range's min/max and make it read a little
--    more; they do not make it wrong.  autosummarize is off (the default):
--    new block ranges are summarized by VACUUM/autovacuum, and unsummarized
--    ranges are always read.
--
-- Dependencies: 20241201000000_engagement_events.sql (table, RLS),
--   roles anon/authenticated/service_role (Supabase or the shim).
-- Transaction: run by the migration runner inside BEGIN/COMMIT (no CREATE
--   INDEX CONCURRENTLY: on a large table create the index by hand first with
--   CONCURRENTLY and this file will skip it).
-- Re-running:  idempotent (IF NOT EXISTS, catalog checks, OR REPLACE,
--   REVOKE/GRANT).
-- Rollback:    sql/rollback/20241216000000_engagement_analytics.sql
-- =============================================================================

-- -----------------------------------------------------------------------------
-- 1. Role analyst.
-- -----------------------------------------------------------------------------
DO $role$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'analyst') THEN
        CREATE ROLE analyst NOLOGIN;
        COMMENT ON ROLE analyst IS
            'engagement-relay analytics: read-only group role (20241216000000_engagement_analytics.sql).';
    END IF;
END
$role$;

-- -----------------------------------------------------------------------------
-- 2. engagement_events: SELECT and the policy.
-- -----------------------------------------------------------------------------
GRANT SELECT ON public.engagement_events TO analyst;

DO $policies$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_policies
                   WHERE schemaname = 'public' AND tablename = 'engagement_events'
                     AND policyname = 'Analysts can view all events') THEN
        CREATE POLICY "Analysts can view all events"
            ON public.engagement_events
            FOR SELECT
            TO analyst
            USING (true);
    END IF;
END
$policies$;

COMMENT ON POLICY "Analysts can view all events" ON public.engagement_events IS
    'Members of analyst read every user''s rows (cohort SQL); they cannot change any.';

-- -----------------------------------------------------------------------------
-- 3. Views.
-- -----------------------------------------------------------------------------
CREATE OR REPLACE VIEW public.engagement_weekly_activity AS
SELECT
    date_trunc('week', e."timestamp", 'UTC') AS week,
    e.event_type,
    count(*)                  AS events,
    count(DISTINCT e.user_id) AS users
FROM public.engagement_events e
WHERE e.is_deleted IS NOT TRUE
  AND e."timestamp" IS NOT NULL
GROUP BY 1, 2;

CREATE OR REPLACE VIEW public.engagement_weekly_cohorts AS
WITH active AS (
    SELECT DISTINCT e.user_id, date_trunc('week', e."timestamp", 'UTC') AS week
    FROM public.engagement_events e
    WHERE e.is_deleted IS NOT TRUE
      AND e."timestamp" IS NOT NULL
), cohort AS (
    SELECT a.user_id, min(a.week) AS cohort_week
    FROM active a
    GROUP BY a.user_id
), size AS (
    SELECT c.cohort_week, count(*) AS cohort_users
    FROM cohort c
    GROUP BY c.cohort_week
)
SELECT
    c.cohort_week,
    (extract(epoch FROM a.week - c.cohort_week) / 604800)::integer AS week_number,
    s.cohort_users,
    count(*) AS active_users,
    round(count(*)::numeric / s.cohort_users, 4) AS retention
FROM cohort c
JOIN active a ON a.user_id = c.user_id
JOIN size s ON s.cohort_week = c.cohort_week
GROUP BY c.cohort_week, a.week, s.cohort_users;

-- security_invoker, set after CREATE OR REPLACE VIEW so that a re-run ends with it too; only
-- on PostgreSQL 15 or newer, which has it (see the header).
DO $invoker$
BEGIN
    IF current_setting('server_version_num')::integer >= 150000 THEN
        EXECUTE 'ALTER VIEW public.engagement_weekly_activity SET (security_invoker = true)';
        EXECUTE 'ALTER VIEW public.engagement_weekly_cohorts SET (security_invoker = true)';
    ELSE
        RAISE NOTICE 'PostgreSQL 14: the analytics views run as their owner (no security_invoker)';
    END IF;
END
$invoker$;

COMMENT ON VIEW public.engagement_weekly_activity IS
    'Per ISO week (UTC) and event_type: events and distinct users, soft-deleted events '
    'excluded. security_invoker: RLS applies to the caller. analyst and service_role only.';
COMMENT ON VIEW public.engagement_weekly_cohorts IS
    'Users by the ISO week (UTC) of their first event; per week_number (0 = that week) the '
    'cohort''s users active that week and retention = active_users / cohort_users. Weeks '
    'without activity have no row. analyst and service_role only.';

REVOKE ALL ON public.engagement_weekly_activity, public.engagement_weekly_cohorts
    FROM PUBLIC, anon, authenticated;
GRANT SELECT ON public.engagement_weekly_activity, public.engagement_weekly_cohorts
    TO analyst, service_role;

-- -----------------------------------------------------------------------------
-- 4. BRIN index for time-range scans across all users.
-- -----------------------------------------------------------------------------
CREATE INDEX IF NOT EXISTS idx_engagement_events_timestamp_brin
    ON public.engagement_events USING brin ("timestamp");

COMMENT ON INDEX public.idx_engagement_events_timestamp_brin IS
    'Time-range scans across all users (analytics): BRIN, since rows arrive in roughly '
    '"timestamp" order; tiny and cheap to maintain (20241216000000_engagement_analytics.sql).';
