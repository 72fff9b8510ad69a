-- =============================================================================
-- Seed: seed_engagement_events.sql           (development / test data only)
-- Purpose: mock data for public.engagement_events (task 5.1): five test users
--          and 28 days of app_open, goal_complete, steps_import and
--          coach_message events with realistic, varied JSONB payloads
--          (roughly 300-900 events per user, depending on the user's activity).
--
-- Dependencies: migrations 20241130000000_supabase_shim.sql (vanilla
--   PostgreSQL; Supabase ships auth.users itself) and
--   20241201000000_engagement_events.sql.
--
-- Run as a superuser or the owner of the tables (e.g. postgres), so RLS does
-- not apply, for example:
--   psql -v ON_ERROR_STOP=1 -f sql/seed/seed_engagement_events.sql
-- The file manages its own transaction (BEGIN ... COMMIT); all or nothing.
--
-- Test users (fixed UUIDs, usable as JWT "sub" in tests):
--   11111111-1111-4111-8111-111111111111  alice@example.com  ios      very active
--   22222222-2222-4222-8222-222222222222  bob@example.com    android  average
--   33333333-3333-4333-8333-333333333333  carol@example.com  ios      light
--   44444444-4444-4444-8444-444444444444  dave@example.com   android  active
--   55555555-5555-4555-8555-555555555555  erin@example.com   ios      average+
--
-- Re-running: safe.  Users and profiles use ON CONFLICT DO NOTHING, and events
-- are generated only for seed users that have no events at all yet, so a second
-- run inserts nothing.  To regenerate a user's events, delete them first:
--   DELETE FROM public.engagement_events WHERE user_id = '<uuid>';
--
-- Timestamps: all events fall in the 28 days ending now() - 1 minute (never in
-- the future); days are UTC days.  random() is seeded with setseed(), so the
-- shape of the data is reproducible (absolute times follow the clock); only
-- coach message ids are random UUIDs.  About 1 % of rows are soft-deleted
-- (is_deleted = true) to exercise filtering.
-- =============================================================================

BEGIN;

SET LOCAL TimeZone = 'UTC';
DO $$ BEGIN PERFORM setseed(0.20241201); END $$;   -- reproducible random()

-- The seed users and their per-user traits.
--   activity      multiplies the number of app opens, goals and coach messages
--   steps_source  wearable/health platform the daily step import comes from
CREATE TEMP TABLE seed_users (
    id           uuid PRIMARY KEY,
    email        text    NOT NULL,
    platform     text    NOT NULL,
    steps_source text    NOT NULL,
    activity     numeric NOT NULL
) ON COMMIT DROP;

INSERT INTO seed_users (id, email, platform, steps_source, activity) VALUES
    ('11111111-1111-4111-8111-111111111111', 'alice@example.com', 'ios',     'apple_health', 2.2),
    ('22222222-2222-4222-8222-222222222222', 'bob@example.com',   'android', 'google_fit',   1.0),
    ('33333333-3333-4333-8333-333333333333', 'carol@example.com', 'ios',     'fitbit',       0.8),
    ('44444444-4444-4444-8444-444444444444', 'dave@example.com',  'android', 'garmin',       1.6),
    ('55555555-5555-4555-8555-555555555555', 'erin@example.com',  'ios',     'apple_health', 1.2);

INSERT INTO auth.users (id, email, created_at)
SELECT id, email, now() - interval '60 days'
FROM seed_users
ON CONFLICT DO NOTHING;

INSERT INTO public.user_profiles (id)
SELECT id FROM seed_users
ON CONFLICT DO NOTHING;

-- -----------------------------------------------------------------------------
-- Events.  One row per (user, day) in "days", fanned out per event type.
-- CTEs that call random() are materialised (never inlined), so each generated
-- row keeps the values drawn for it.  A LATERAL generate_series() whose
-- arguments reference no outer column is evaluated only once, so per-row
-- counts always involve a column of "days" (or are drawn there).
-- -----------------------------------------------------------------------------
WITH params AS (
    SELECT now() - interval '1 minute' AS window_end      -- newest allowed timestamp
),
targets AS (                                             -- seed users without events
    SELECT u.*
    FROM seed_users u
    WHERE NOT EXISTS (SELECT 1 FROM public.engagement_events e WHERE e.user_id = u.id)
),
days AS (                                                -- day_no 0 = today .. 27
    SELECT t.id AS user_id, t.platform, t.steps_source, t.activity, d AS day_no,
           date_trunc('day', p.window_end) - d * interval '1 day' AS day_start,
           random() < 0.12 AS second_import                  -- see steps_import
    FROM targets t
    CROSS JOIN params p
    CROSS JOIN generate_series(0, 27) AS d
),
-- app_open: ~9 x activity per day between 06:30 and 23:30; the app version
-- follows a rollout (2.3.0 -> 2.3.1 -> 2.4.0); ~5 % from a second device.
app_open AS (
    SELECT d.user_id,
           d.day_start + interval '6 hours 30 minutes' + random() * interval '17 hours' AS ts,
           'app_open' AS event_type,
           jsonb_build_object(
               'screen', (ARRAY['home', 'dashboard', 'goals', 'coach_chat',
                                'progress', 'settings'])[1 + floor(random() * 6)::int],
               'app_version', CASE WHEN d.day_no < 7  THEN '2.4.0'
                                   WHEN d.day_no < 18 THEN '2.3.1'
                                   ELSE '2.3.0' END,
               'platform', CASE WHEN random() < 0.05
                                THEN (CASE d.platform WHEN 'ios' THEN 'android' ELSE 'ios' END)
                                ELSE d.platform END
           ) AS value
    FROM days d
    CROSS JOIN LATERAL generate_series(1, round(d.activity * (4 + random() * 10))::int) AS n
),
-- goal_complete: 0 .. 1+3 x activity per day; goal_id is stable per user and
-- goal type; achieved >= target, in the goal's unit.
goal_draw AS (
    SELECT d.user_id, d.day_start,
           (ARRAY['steps', 'sleep', 'hydration', 'mindfulness'])[1 + floor(random() * 4)::int] AS goal_type,
           random()::numeric AS r
    FROM days d
    CROSS JOIN LATERAL generate_series(1, floor(random() * (1 + 3 * d.activity))::int) AS n
),
goal_complete AS (
    SELECT g.user_id,
           g.day_start + interval '8 hours' + random() * interval '15 hours' AS ts,
           'goal_complete' AS event_type,
           jsonb_build_object(
               'goal_id',   md5(g.user_id::text || ':' || g.goal_type)::uuid,
               'goal_type', g.goal_type,
               'target',    t.target,
               'achieved',  t.achieved,
               'unit',      t.unit
           ) AS value
    FROM goal_draw g
    CROSS JOIN LATERAL (
        SELECT * FROM (VALUES
            ('steps',       10000::numeric, round(10000 + g.r * 5000),     'steps'),
            ('sleep',       7.5,            round(7.5 + g.r * 1.5, 1),     'hours'),
            ('hydration',   2000,           round(2000 + g.r * 1000, -1),  'ml'),
            ('mindfulness', 10,             round(10 + g.r * 20),          'minutes')
        ) AS v(goal_type, target, achieved, unit)
        WHERE v.goal_type = g.goal_type
    ) AS t
),
-- steps_import: every morning (06:00-10:00) the previous day's step count is
-- imported from the user's source; ~12 % of days also from a second source.
steps_import AS (
    SELECT d.user_id,
           d.day_start + interval '6 hours' + random() * interval '4 hours' AS ts,
           'steps_import' AS event_type,
           jsonb_build_object(
               'source', CASE WHEN n = 1 THEN d.steps_source
                              ELSE (ARRAY['apple_health', 'google_fit', 'fitbit',
                                          'garmin'])[1 + floor(random() * 4)::int] END,
               'steps',  (1500 + random() * 9000 + d.activity * 2500)::int,
               'date',   to_char(d.day_start - interval '1 day', 'YYYY-MM-DD')
           ) AS value
    FROM days d
    CROSS JOIN LATERAL generate_series(1, CASE WHEN d.second_import THEN 2 ELSE 1 END) AS n
),
-- coach_message: 0 .. 1+6 x activity per day, both directions; the coach
-- (outbound) is never negative.
coach_draw AS (
    SELECT d.user_id, d.day_start,
           CASE WHEN random() < 0.55 THEN 'outbound' ELSE 'inbound' END AS direction,
           random() AS r
    FROM days d
    CROSS JOIN LATERAL generate_series(1, floor(random() * (1 + 6 * d.activity))::int) AS n
),
coach_message AS (
    SELECT c.user_id,
           c.day_start + interval '7 hours' + random() * interval '15 hours' AS ts,
           'coach_message' AS event_type,
           jsonb_build_object(
               'message_id', gen_random_uuid(),
               'direction',  c.direction,
               'channel',    CASE WHEN c.r < 0.70 THEN 'in_app'
                                  WHEN c.r < 0.90 THEN 'push'
                                  ELSE 'email' END,
               'sentiment',  CASE WHEN c.direction = 'outbound'
                                  THEN (CASE WHEN random() < 0.8 THEN 'positive' ELSE 'neutral' END)
                                  ELSE (ARRAY['positive', 'positive', 'neutral',
                                              'neutral', 'negative'])[1 + floor(random() * 5)::int] END
           ) AS value
    FROM coach_draw c
),
all_events AS (
    SELECT * FROM app_open
    UNION ALL SELECT * FROM goal_complete
    UNION ALL SELECT * FROM steps_import
    UNION ALL SELECT * FROM coach_message
)
INSERT INTO public.engagement_events (user_id, "timestamp", event_type, value, is_deleted)
SELECT e.user_id, e.ts, e.event_type, e.value, random() < 0.01
FROM all_events e
CROSS JOIN params p
WHERE e.ts <= p.window_end                               -- today's later hours: skip
ORDER BY e.ts;

COMMIT;

-- Summary (read-only).
SELECT u.email, e.event_type, count(*) AS events,
       min(e."timestamp") AS first_event, max(e."timestamp") AS last_event
FROM public.engagement_events e
JOIN auth.users u ON u.id = e.user_id
WHERE u.id IN ('11111111-1111-4111-8111-111111111111', '22222222-2222-4222-8222-222222222222',
               '33333333-3333-4333-8333-333333333333', '44444444-4444-4444-8444-444444444444',
               '55555555-5555-4555-8555-555555555555')
GROUP BY ROLLUP (u.email, e.event_type)
ORDER BY u.email NULLS LAST, e.event_type NULLS LAST;
