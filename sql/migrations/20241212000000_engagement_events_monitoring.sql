-- =============================================================================
-- Migration: 20241212000000_engagement_events_monitoring.sql
-- Purpose:   The monitoring views of the deployment procedures ("Monitoring and
--            Alerts", "Performance Metrics"):
--              * engagement_events_performance  table scans and row counts
--              * engagement_events_index_usage  per-index scans
--            for dashboards and the 5-minute monitoring script, e.g.
--              SELECT * FROM public.engagement_events_index_usage;
--
-- Differences from the seed's SQL:
--   * pg_stat_user_tables has no column "tablename" (that is pg_tables); the
--     seed's view fails with 'column "tablename" does not exist'.  It reads
--     relname and exposes it AS tablename, so the view has the seed's columns.
--   * Both views also filter on schemaname = 'public', so a table of the same
--     name in another schema does not show up.
--
-- Access: Supabase exposes the views of schema public through its REST and
--   GraphQL APIs, and a view runs with its owner's privileges, so anon and
--   authenticated are denied (REVOKE ALL) and only service_role may SELECT.
--   (Statistics views are readable by everyone in plain PostgreSQL; this is
--   about not publishing them over the API.)
--
-- Dependencies: public.engagement_events (20241201000000_engagement_events.sql);
--   roles anon/authenticated/service_role (Supabase or the shim).
-- Transaction: run by the migration runner inside BEGIN/COMMIT.
-- Re-running:  CREATE OR REPLACE VIEW; the grants are idempotent.
-- Rollback:    sql/rollback/20241212000000_engagement_events_monitoring.sql
-- =============================================================================

CREATE OR REPLACE VIEW public.engagement_events_performance AS
SELECT
    schemaname,
    relname AS tablename,
    seq_scan,
    seq_tup_read,
    idx_scan,
    idx_tup_fetch,
    n_tup_ins,
    n_tup_upd,
    n_tup_del
FROM pg_catalog.pg_stat_user_tables
WHERE schemaname = 'public' AND relname = 'engagement_events';

CREATE OR REPLACE VIEW public.engagement_events_index_usage AS
SELECT
    indexrelname,
    idx_scan,
    idx_tup_read,
    idx_tup_fetch
FROM pg_catalog.pg_stat_user_indexes
WHERE schemaname = 'public' AND relname = 'engagement_events';

REVOKE ALL ON public.engagement_events_performance, public.engagement_events_index_usage
    FROM PUBLIC, anon, authenticated;
GRANT SELECT ON public.engagement_events_performance, public.engagement_events_index_usage
    TO service_role;

COMMENT ON VIEW public.engagement_events_performance IS
    'Scan and row counters of public.engagement_events (pg_stat_user_tables). Service role only.';
COMMENT ON VIEW public.engagement_events_index_usage IS
    'Scans per index of public.engagement_events (pg_stat_user_indexes); an index whose '
    'idx_scan stays 0 is unused. Service role only.';
