-- =============================================================================
-- Seed: seed_engagement_events.sql           (development / test data only)
-- Purpose: mock data for public.engagement_events (task 5.1): seven test users
--          and up to 28 days of app_open, goal_complete, steps_import and
--          coach_message events with realistic, varied JSONB payloads
--          (roughly 100-900 events per user, depending on the user's activity);
--          and, derived from each user's events (issue 15), the engagement
--          system of story 1.1: user_engagement_states (every state occurs),
--          engagement_state_transitions (a chain per user from a NULL signup
--          transition to the current state) and engagement_message_queue
--          (every message_type and status).  See "Engagement states" below.
--
-- Dependencies: migrations 20241130000000_supabase_shim.sql (vanilla
--   PostgreSQL; Supabase ships auth.users itself),
--   20241201000000_engagement_events.sql, 20241210000000_engagement_system.sql
--   and 20241215000000_engagement_activity.sql (the last_activity_at trigger).
--
-- Run as a superuser or the owner of the tables (e.g. postgres), so RLS does
-- not apply, for example:
--   psql -v ON_ERROR_STOP=1 -f sql/seed/seed_engagement_events.sql
-- The file manages its own transaction (BEGIN ... COMMIT); all or nothing.
--
-- Test users (fixed UUIDs, usable as JWT "sub" in tests); quiet = days without
-- events before today, state = engagement state after the seed:
--   11111111-1111-4111-8111-111111111111  alice  ios      very active  quiet 0   active
--   22222222-2222-4222-8222-222222222222  bob    android  average      quiet 0   active (after a help episode)
--   33333333-3333-4333-8333-333333333333  carol  ios      light        quiet 4   remind_later
--   44444444-4444-4444-8444-444444444444  dave   android  active       quiet 0   help_flow
--   55555555-5555-4555-8555-555555555555  erin   ios      average+     quiet 0   active (group destination)
--   66666666-6666-4666-8666-666666666666  frank  android  light        quiet 12  dormant
--   77777777-7777-4777-8777-777777777777  grace  ios      light        quiet 3   goodbye_sent
-- (emails <name>@example.com)
--
-- Re-running: safe.  Users and profiles use ON CONFLICT DO NOTHING, events
-- are generated only for seed users that have no events at all yet, states
-- and transitions only for seed users without transitions, and queue rows
-- have fixed idempotency keys (ON CONFLICT DO NOTHING), so a second run
-- inserts nothing.  To regenerate a user's data, delete it first, e.g.:
--   DELETE FROM public.engagement_events WHERE user_id = '<uuid>';
--   DELETE FROM public.engagement_state_transitions WHERE user_id = '<uuid>';
--   DELETE FROM public.engagement_message_queue WHERE user_id = '<uuid>';
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
    id           uuid    PRIMARY KEY,
    email        text    NOT NULL,
    platform     text    NOT NULL,
    steps_source text    NOT NULL,
    activity     numeric NOT NULL,
    quiet_days   int     NOT NULL,   -- days without events before today (0: active today)
    scenario     text    NOT NULL,   -- engagement history, see "Engagement states" below
    destination  text    NOT NULL,   -- user_profiles.preferred_destination
    destination_jid text NOT NULL    -- WhatsApp JID proactive messages go to
) ON COMMIT DROP;

INSERT INTO seed_users VALUES
    ('11111111-1111-4111-8111-111111111111', 'alice@example.com', 'ios',     'apple_health', 2.2, 0,  'active',       'individual', '4915110000001@s.whatsapp.net'),
    ('22222222-2222-4222-8222-222222222222', 'bob@example.com',   'android', 'google_fit',   1.0, 0,  'help_episode', 'individual', '4915110000002@s.whatsapp.net'),
    ('33333333-3333-4333-8333-333333333333', 'carol@example.com', 'ios',     'fitbit',       0.8, 4,  'remind_later', 'individual', '4915110000003@s.whatsapp.net'),
    ('44444444-4444-4444-8444-444444444444', 'dave@example.com',  'android', 'garmin',       1.6, 0,  'help_flow',    'individual', '4915110000004@s.whatsapp.net'),
    ('55555555-5555-4555-8555-555555555555', 'erin@example.com',  'ios',     'apple_health', 1.2, 0,  'active',       'group',      '120363000000000005@g.us'),
    ('66666666-6666-4666-8666-666666666666', 'frank@example.com', 'android', 'google_fit',   0.6, 12, 'dormant',      'individual', '4915110000006@s.whatsapp.net'),
    ('77777777-7777-4777-8777-777777777777', 'grace@example.com', 'ios',     'apple_health', 0.9, 3,  'goodbye_sent', 'individual', '4915110000007@s.whatsapp.net');

INSERT INTO auth.users (id, email, created_at)
SELECT id, email, now() - interval '60 days'
FROM seed_users
ON CONFLICT DO NOTHING;

INSERT INTO public.user_profiles (id, preferred_destination)
SELECT id, destination FROM seed_users
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
    CROSS JOIN generate_series(t.quiet_days, 27) AS d    -- quiet users: no recent days
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

-- -----------------------------------------------------------------------------
-- Engagement states (story 1.1): user_engagement_states,
-- engagement_state_transitions and engagement_message_queue, derived from each
-- user's events so the three agree with them and with each other.
--
-- The events INSERT above fired trigger engagement_events_touch_last_activity
-- (20241215000000_engagement_activity.sql), which already created each user's
-- state row (state 'active', last_activity_at = newest event); the rows below
-- are therefore upserts that set the state and its timestamps and leave
-- last_activity_at to the trigger (never moved backwards).
--
-- Scenarios (seed_users.scenario); g = last event + 48 h (the inactivity sweep):
--   active        signup -> active
--   help_episode  signup -> active; active -> help_flow (help_requested) 12 days
--                 after the first event; back to active 25 min later
--   help_flow     signup -> active; active -> help_flow at the last event
--   remind_later  signup -> active; -> goodbye_sent at g (inactivity_timeout);
--                 -> remind_later 2 h later (user_message); remind_at 3 days on
--   goodbye_sent  signup -> active; -> goodbye_sent at g; expires g + 48 h
--   dormant       signup -> active; -> goodbye_sent at g; -> dormant at g + 48 h
--                 (goodbye_expired)
-- The signup transition (from_state NULL) is 10 minutes before the first event.
--
-- Re-running: states and transitions are written only for seed users that have
-- no transition yet (so a history that `dev`'s demo traffic extended is kept
-- and stays a valid chain); queue rows have deterministic idempotency keys
-- ('seed:<type>:<user>[:last_week|next_week]') and ON CONFLICT DO NOTHING.
-- -----------------------------------------------------------------------------
CREATE TEMP TABLE seed_timeline ON COMMIT DROP AS
SELECT u.*, t.first_ev, t.last_ev,
       t.first_ev - interval '10 minutes' AS signup_at,
       t.last_ev + interval '48 hours'    AS goodbye_at
FROM seed_users u
JOIN (SELECT user_id, min("timestamp") AS first_ev, max("timestamp") AS last_ev
      FROM public.engagement_events
      GROUP BY user_id) t ON t.user_id = u.id;

CREATE TEMP TABLE seed_transitions ON COMMIT DROP AS
SELECT t.id AS user_id, x.seq, x.from_state, x.to_state, x.trigger, x.metadata, x.at
FROM seed_timeline t
CROSS JOIN LATERAL (VALUES
    (1, NULL, 'active', 'signup', jsonb_build_object('source', 'whatsapp_onboarding',
                                                     'platform', t.platform), t.signup_at, true),
    (2, 'active', 'help_flow', 'help_requested', '{"topic": "goal_setup"}'::jsonb,
        t.first_ev + interval '12 days', t.scenario = 'help_episode'),
    (3, 'help_flow', 'active', 'help_completed', '{"steps_completed": 4}'::jsonb,
        t.first_ev + interval '12 days 25 minutes', t.scenario = 'help_episode'),
    (2, 'active', 'help_flow', 'help_requested', '{"topic": "steps_import"}'::jsonb,
        t.last_ev, t.scenario = 'help_flow'),
    (2, 'active', 'goodbye_sent', 'inactivity_timeout', '{"inactive_hours": 48}'::jsonb,
        t.goodbye_at, t.scenario IN ('remind_later', 'goodbye_sent', 'dormant')),
    (3, 'goodbye_sent', 'remind_later', 'user_message', '{"choice": "remind_later", "remind_in_days": 3}'::jsonb,
        t.goodbye_at + interval '2 hours', t.scenario = 'remind_later'),
    (3, 'goodbye_sent', 'dormant', 'goodbye_expired', '{"expired_after_hours": 48}'::jsonb,
        t.goodbye_at + interval '48 hours', t.scenario = 'dormant')
) AS x(seq, from_state, to_state, trigger, metadata, at, applies)
WHERE x.applies
  AND NOT EXISTS (SELECT 1 FROM public.engagement_state_transitions e WHERE e.user_id = t.id);

-- Current state: the last transition of each user's chain.
INSERT INTO public.user_engagement_states AS s
    (user_id, state, last_activity_at, goodbye_sent_at, goodbye_expires_at, remind_at, created_at)
SELECT t.id, c.to_state, t.last_ev,
       CASE WHEN c.to_state = 'goodbye_sent' THEN t.goodbye_at END,
       CASE WHEN c.to_state = 'goodbye_sent' THEN t.goodbye_at + interval '48 hours' END,
       CASE WHEN c.to_state = 'remind_later' THEN c.at + interval '3 days' END,
       t.signup_at
FROM seed_timeline t
JOIN (SELECT DISTINCT ON (user_id) user_id, to_state, at
      FROM seed_transitions ORDER BY user_id, seq DESC) c ON c.user_id = t.id
ORDER BY t.id
ON CONFLICT (user_id) DO UPDATE
    SET state              = EXCLUDED.state,
        last_activity_at   = greatest(s.last_activity_at, EXCLUDED.last_activity_at),
        goodbye_sent_at    = EXCLUDED.goodbye_sent_at,
        goodbye_expires_at = EXCLUDED.goodbye_expires_at,
        remind_at          = EXCLUDED.remind_at,
        created_at         = least(s.created_at, EXCLUDED.created_at);

INSERT INTO public.engagement_state_transitions
    (user_id, from_state, to_state, trigger, metadata, created_at)
SELECT user_id, from_state, to_state, trigger, metadata, at
FROM seed_transitions
ORDER BY user_id, seq;

-- Message queue: what the scheduler would have queued for these histories.
--   welcome        every user, sent a minute after signup
--   tier_unlock    alice (tier 2), sent
--   goodbye        at g for the users who got one, sent
--   reminder       carol, pending at remind_at
--   help_restart   dave, pending a day after he stopped in the help flow
--   weekly_review  last Monday 09:00 UTC: sent (alice, bob, erin), failed after
--                  3 retries (dave), cancelled (frank: dormant); next Monday:
--                  pending (alice, bob)
-- destination/destination_jid follow user_profiles.preferred_destination.
INSERT INTO public.engagement_message_queue
    (user_id, message_type, message_key, message_params, destination, destination_jid,
     scheduled_for, sent_at, status, retry_count, error_message, idempotency_key, created_at)
SELECT t.id, m.message_type, 'engagement.' || m.message_type || '.' || m.variant,
       m.params, t.destination, t.destination_jid, m.scheduled_for,
       CASE WHEN m.status = 'sent' THEN m.scheduled_for + interval '4 seconds' END,
       m.status,
       CASE WHEN m.status = 'failed' THEN 3 ELSE 0 END,
       CASE WHEN m.status = 'failed' THEN 'WhatsApp API 470: message failed to send because more '
                                          'than 24 hours have passed since the customer last replied' END,
       'seed:' || m.message_type || ':' || t.id || coalesce(':' || m.tag, ''),
       least(m.scheduled_for, now()) - interval '1 minute'
FROM seed_timeline t
CROSS JOIN LATERAL (
    -- Reviews go out Mondays 09:00: the last one sent and the next one due.
    SELECT CASE WHEN monday <= now() THEN monday ELSE monday - interval '7 days' END AS last_review,
           CASE WHEN monday > now() THEN monday ELSE monday + interval '7 days' END AS next_review
    FROM (SELECT date_trunc('week', now()) + interval '9 hours' AS monday) this_week
) w
CROSS JOIN LATERAL (VALUES
    ('welcome', 'default', NULL::text,
     jsonb_build_object('name', initcap(split_part(t.email, '@', 1))),
     t.signup_at + interval '1 minute', 'sent', true),
    ('tier_unlock', 'tier_2', NULL,
     '{"tier": 2, "unlocked": ["goals", "coach_chat"]}'::jsonb,
     t.first_ev + interval '5 days', 'sent', t.email = 'alice@example.com'),
    ('goodbye', 'default', NULL,
     jsonb_build_object('name', initcap(split_part(t.email, '@', 1)), 'inactive_days', 2),
     t.goodbye_at, 'sent', t.scenario IN ('remind_later', 'goodbye_sent', 'dormant')),
    ('reminder', 'remind_later', NULL,
     jsonb_build_object('name', initcap(split_part(t.email, '@', 1))),
     t.goodbye_at + interval '2 hours' + interval '3 days', 'pending', t.scenario = 'remind_later'),
    ('help_restart', 'steps_import', NULL,
     '{"topic": "steps_import", "step": 2}'::jsonb,
     t.last_ev + interval '1 day', 'pending', t.scenario = 'help_flow'),
    ('weekly_review', 'summary', 'last_week',
     -- A review covers the week before it is sent.
     jsonb_build_object('week', to_char(w.last_review - interval '7 days', 'IYYY-"W"IW')),
     w.last_review,
     CASE t.scenario WHEN 'help_flow' THEN 'failed' WHEN 'dormant' THEN 'cancelled' ELSE 'sent' END,
     t.scenario IN ('active', 'help_episode', 'help_flow', 'dormant')),
    ('weekly_review', 'summary', 'next_week',
     jsonb_build_object('week', to_char(w.next_review - interval '7 days', 'IYYY-"W"IW')),
     w.next_review,
     'pending', t.email IN ('alice@example.com', 'bob@example.com'))
) AS m(message_type, variant, tag, params, scheduled_for, status, applies)
WHERE m.applies
ORDER BY t.id
ON CONFLICT (idempotency_key) DO NOTHING;

COMMIT;

-- Summary (read-only).
SELECT u.email, e.event_type, count(*) AS events,
       min(e."timestamp") AS first_event, max(e."timestamp") AS last_event
FROM public.engagement_events e
JOIN auth.users u ON u.id = e.user_id
WHERE u.id IN ('11111111-1111-4111-8111-111111111111', '22222222-2222-4222-8222-222222222222',
               '33333333-3333-4333-8333-333333333333', '44444444-4444-4444-8444-444444444444',
               '55555555-5555-4555-8555-555555555555', '66666666-6666-4666-8666-666666666666',
               '77777777-7777-4777-8777-777777777777')
GROUP BY ROLLUP (u.email, e.event_type)
ORDER BY u.email NULLS LAST, e.event_type NULLS LAST;

SELECT u.email, s.state, s.last_activity_at, s.goodbye_expires_at, s.remind_at,
       (SELECT string_agg(coalesce(t.from_state, '-') || '>' || t.to_state, ' ' ORDER BY t.created_at)
        FROM public.engagement_state_transitions t WHERE t.user_id = s.user_id) AS transitions,
       (SELECT string_agg(q.message_type || ':' || q.status, ' ' ORDER BY q.scheduled_for)
        FROM public.engagement_message_queue q WHERE q.user_id = s.user_id) AS messages
FROM public.user_engagement_states s
JOIN auth.users u ON u.id = s.user_id
WHERE u.email LIKE '%@example.com'
ORDER BY u.email;
