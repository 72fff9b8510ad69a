-- =============================================================================
-- Migration: 20241214000000_user_profiles_privileges.sql
-- Purpose:   Close the hole the RLS audit found (scripts/test-rls
--            --supabase-privileges): on Supabase the default privileges give
--            anon and authenticated ALL on every new table in public, and the
--            shim creates public.user_profiles with RLS on but never revokes
--            them.  RLS filters SELECT, INSERT, UPDATE and DELETE, not TRUNCATE
--            (nor REFERENCES or TRIGGER): any signed-in user, or anyone with
--            the anon key, could empty the table.  As for every other table of
--            this project, privileges are revoked first, then granted exactly:
--              anon           nothing
--              authenticated  nothing (no policy lets a user see a profile
--                             yet; a later migration that adds one grants the
--                             command it allows, never TRUNCATE)
--              service_role   ALL (the engagement service, and
--                             public.inactive_users() of the next migration)
-- Roles:     anon/authenticated/service_role are skipped when missing (the
--            shim creates them; a foreign setup may not have all three).
-- Dependencies: public.user_profiles (Supabase, or
--            20241130000000_supabase_shim.sql).
-- Transaction: run by the migration runner inside BEGIN/COMMIT.
-- Re-running:  idempotent (REVOKE and GRANT state what they state).
-- Rollback:    sql/rollback/20241214000000_user_profiles_privileges.sql
-- =============================================================================

DO $privileges$
DECLARE
    r text;
BEGIN
    IF to_regclass('public.user_profiles') IS NULL THEN
        RAISE EXCEPTION 'table public.user_profiles does not exist'
            USING HINT = 'Apply 20241130000000_supabase_shim.sql first.';
    END IF;
    REVOKE ALL ON public.user_profiles FROM PUBLIC;
    FOREACH r IN ARRAY ARRAY['anon', 'authenticated'] LOOP
        IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r) THEN
            EXECUTE format('REVOKE ALL ON public.user_profiles FROM %I', r);
        END IF;
    END LOOP;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'service_role') THEN
        GRANT ALL ON public.user_profiles TO service_role;
    END IF;
END
$privileges$;
