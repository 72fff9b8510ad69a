-- =============================================================================
-- Migration: 20241130000000_supabase_shim.sql
-- Purpose:   Minimal Supabase-compatibility shim for vanilla PostgreSQL >= 14.
--
-- Why this exists:
--   The engagement_events migration (20241201000000) was written for Supabase.
--   It references objects that Supabase ships and plain PostgreSQL does not:
--     * roles   anon, authenticated, service_role   (used by GRANTs/policies)
--     * schema  auth and table auth.users            (FK target of user_id)
--     * functions auth.uid(), auth.role(), auth.jwt() (used by RLS policies)
--   This file creates a minimal stand-in for each of them so the engagement-
--   relay daemon and its tests can run against an ordinary PostgreSQL cluster
--   (CI, local development), e.g. one started with wal_level=logical.
--   It also creates a bare public.user_profiles(id) that later migrations
--   extend with more columns.
--
-- On a real Supabase database this migration is a no-op:
--   every object is created only where it is missing (DO blocks that consult
--   pg_roles / pg_namespace / pg_class / pg_proc); schema USAGE is granted
--   only where the role has no explicit grant yet, and EXECUTE only on
--   functions the shim itself has just created.  In particular Supabase's
--   own auth functions are never replaced (no CREATE OR REPLACE), and no
--   existing object is ever dropped or altered.
--
-- Semantics of the shim functions (identical to Supabase's, see the
-- supabase/auth migration "recreate_auth_functions"): the JWT claims are read
-- from the GUC request.jwt.claims (a JSON text, as PostgREST sets it), with
-- the legacy per-claim GUCs request.jwt.claim.<name> taking precedence.
-- A test can impersonate a user with:
--     SET ROLE authenticated;
--     SELECT set_config('request.jwt.claims',
--                       '{"sub":"<uuid>","role":"authenticated"}', true);
--
-- Dependencies: none (PostgreSQL >= 14; must be run by a role that may create
--               roles, i.e. a superuser on vanilla PostgreSQL, because
--               service_role is created with BYPASSRLS).
-- Idempotent:   yes; safe to apply any number of times.
-- =============================================================================

-- -----------------------------------------------------------------------------
-- 1. Roles (NOLOGIN: they are only ever entered via SET ROLE / PostgREST).
-- -----------------------------------------------------------------------------
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'anon') THEN
        CREATE ROLE anon NOLOGIN NOINHERIT;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'authenticated') THEN
        CREATE ROLE authenticated NOLOGIN NOINHERIT;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'service_role') THEN
        -- As on Supabase: the service role bypasses row-level security.
        CREATE ROLE service_role NOLOGIN NOINHERIT BYPASSRLS;
    END IF;
END
$roles$;

-- -----------------------------------------------------------------------------
-- 2. Schema auth.
--    A DO block instead of CREATE SCHEMA IF NOT EXISTS: the latter checks the
--    CREATE-on-database privilege before it checks for existence.
-- -----------------------------------------------------------------------------
DO $schema$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = 'auth') THEN
        CREATE SCHEMA auth;
        COMMENT ON SCHEMA auth IS
            'Supabase-compatibility shim (20241130000000_supabase_shim.sql).';
    END IF;
END
$schema$;

-- -----------------------------------------------------------------------------
-- 3. Table auth.users: only the columns this project relies on.
--    A DO block instead of CREATE TABLE IF NOT EXISTS: the latter checks the
--    CREATE-on-schema privilege first, which Supabase withholds on "auth".
-- -----------------------------------------------------------------------------
DO $users$
BEGIN
    IF to_regclass('auth.users') IS NULL THEN
        CREATE TABLE auth.users (
            id         uuid        PRIMARY KEY,
            email      text,
            created_at timestamptz DEFAULT now()
        );
        COMMENT ON TABLE auth.users IS
            'Minimal stand-in for Supabase auth.users (shim migration).';
    END IF;
END
$users$;

-- -----------------------------------------------------------------------------
-- 4. Functions auth.uid(), auth.role(), auth.jwt(): created only if missing,
--    and granted to the three API roles only when the shim created them.
--    Bodies and attributes mirror Supabase (LANGUAGE sql, STABLE,
--    search_path = '').  nullif(..., '') matters: after a transaction-local
--    set_config() ends, the GUC reads back as '' rather than NULL.
-- -----------------------------------------------------------------------------
DO $functions$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_catalog.pg_proc p
        JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = 'auth' AND p.proname = 'uid' AND p.pronargs = 0
    ) THEN
        CREATE FUNCTION auth.uid()
            RETURNS uuid
            LANGUAGE sql
            STABLE
            SET search_path = ''
        AS $body$
            SELECT coalesce(
                nullif(current_setting('request.jwt.claim.sub', true), ''),
                (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
            )::uuid
        $body$;
        COMMENT ON FUNCTION auth.uid() IS
            'Shim: JWT "sub" claim of the current request as uuid, or NULL.';
        GRANT EXECUTE ON FUNCTION auth.uid() TO anon, authenticated, service_role;
    END IF;

    IF NOT EXISTS (
        SELECT 1 FROM pg_catalog.pg_proc p
        JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = 'auth' AND p.proname = 'role' AND p.pronargs = 0
    ) THEN
        CREATE FUNCTION auth.role()
            RETURNS text
            LANGUAGE sql
            STABLE
            SET search_path = ''
        AS $body$
            SELECT coalesce(
                nullif(current_setting('request.jwt.claim.role', true), ''),
                (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role')
            )::text
        $body$;
        COMMENT ON FUNCTION auth.role() IS
            'Shim: JWT "role" claim of the current request, or NULL.';
        GRANT EXECUTE ON FUNCTION auth.role() TO anon, authenticated, service_role;
    END IF;

    IF NOT EXISTS (
        SELECT 1 FROM pg_catalog.pg_proc p
        JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = 'auth' AND p.proname = 'jwt' AND p.pronargs = 0
    ) THEN
        CREATE FUNCTION auth.jwt()
            RETURNS jsonb
            LANGUAGE sql
            STABLE
            SET search_path = ''
        AS $body$
            SELECT coalesce(
                nullif(current_setting('request.jwt.claim', true), ''),
                nullif(current_setting('request.jwt.claims', true), '')
            )::jsonb
        $body$;
        COMMENT ON FUNCTION auth.jwt() IS
            'Shim: all JWT claims of the current request as jsonb, or NULL.';
        GRANT EXECUTE ON FUNCTION auth.jwt() TO anon, authenticated, service_role;
    END IF;
END
$functions$;

-- -----------------------------------------------------------------------------
-- 5. Schema privileges: USAGE on auth and public for the three API roles,
--    granted only where the role has no explicit USAGE grant yet (a grant to
--    PUBLIC does not count, so hardened clusters that revoked it still work).
-- -----------------------------------------------------------------------------
DO $grants$
DECLARE
    r text;
    s text;
BEGIN
    FOR s IN SELECT nspname FROM pg_catalog.pg_namespace
             WHERE nspname IN ('auth', 'public') ORDER BY nspname LOOP
        FOREACH r IN ARRAY ARRAY['anon', 'authenticated', 'service_role'] LOOP
            IF NOT EXISTS (
                SELECT 1
                FROM pg_catalog.pg_namespace n,
                     aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) a
                WHERE n.nspname = s
                  AND a.grantee = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = r)
                  AND a.privilege_type = 'USAGE'
            ) THEN
                EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', s, r);
            END IF;
        END LOOP;
    END LOOP;
END
$grants$;

-- -----------------------------------------------------------------------------
-- 6. public.user_profiles: created only if missing, with just the key.
--    Later migrations add the profile columns (and their policies).  RLS is
--    enabled right away: on Supabase the default privileges hand anon and
--    authenticated ALL on new public tables, so without RLS the table would be
--    readable and writable through the API.  With no policies yet, only the
--    owner and BYPASSRLS roles (service_role) can touch rows.
-- -----------------------------------------------------------------------------
DO $profiles$
BEGIN
    IF to_regclass('public.user_profiles') IS NULL THEN
        CREATE TABLE public.user_profiles (
            id uuid PRIMARY KEY REFERENCES auth.users (id) ON DELETE CASCADE
        );
        ALTER TABLE public.user_profiles ENABLE ROW LEVEL SECURITY;
        COMMENT ON TABLE public.user_profiles IS
            'Per-user profile (one row per auth.users row); columns are added by later migrations.';
    END IF;
END
$profiles$;
