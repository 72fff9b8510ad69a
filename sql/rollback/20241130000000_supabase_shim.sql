-- =============================================================================
-- Rollback:  20241130000000_supabase_shim.sql
-- Undoes:    what the shim created, and nothing else.  The shim creates each
--            object only where it is missing, so on Supabase it created nothing
--            and this rollback must not touch Supabase's own auth schema,
--            auth.users, auth.uid()/role()/jwt() or the API roles.  It tells
--            its own objects apart by the COMMENTs the shim gave them:
--              public.user_profiles  'Per-user profile (one row per auth.users row); ...'
--              auth.uid/role/jwt()   comments starting with 'Shim:'
--              auth.users            'Minimal stand-in for Supabase auth.users (shim migration).'
--              schema auth           'Supabase-compatibility shim (20241130000000_supabase_shim.sql).'
--            Only when schema auth is the shim's (i.e. this is vanilla
--            PostgreSQL, not Supabase) does it also revoke the USAGE on schema
--            public that the shim granted to anon, authenticated and
--            service_role, and consider dropping those roles.  Roles belong to
--            the whole cluster, not to one database, and carry no comment of
--            ours, so a role is dropped only if nothing depends on it anywhere
--            in the cluster (no entry in pg_shdepend: no grants, owned objects,
--            policies or default privileges in any database) and it is no
--            member of, and has no member in, any other role (on Supabase,
--            authenticator is a member of all three).  Otherwise it is kept
--            with a NOTICE, e.g. while another database of the cluster still
--            uses the shim.
-- Data:      LOST where the shim created the tables: auth.users (the shim's
--            stand-in) and public.user_profiles.
-- Order:     last (this is the oldest migration).  public.user_profiles is
--            dropped only once the later migrations' columns are gone; if one
--            is still there the rollback stops and says so.  Everything is
--            dropped without CASCADE: an object that still depends on the
--            shim's (e.g. another policy using auth.uid()) stops the rollback.
-- Run:       psql --set ON_ERROR_STOP=on -f sql/rollback/20241130000000_supabase_shim.sql
--            (as a superuser, like the shim; see sql/rollback/README.md).
-- Idempotent: yes (a second run finds no shim object and changes nothing).
-- =============================================================================

BEGIN;

-- Newest first: refuse while a later migration of this project is still applied (it may
-- depend on what this script drops). Only this project's versions are looked at: on Supabase
-- the table also records the application's own migrations.
DO $order$
DECLARE
    later text;
BEGIN
    IF to_regclass('supabase_migrations.schema_migrations') IS NOT NULL THEN
        SELECT string_agg(version, ', ' ORDER BY version) INTO later
        FROM supabase_migrations.schema_migrations
        WHERE version IN ('20241201000000', '20241205000000', '20241210000000', '20241211000000', '20241212000000', '20241213000000', '20241214000000', '20241215000000', '20241216000000', '20241217000000');
        IF later IS NOT NULL THEN
            RAISE EXCEPTION 'roll back the later migrations first (still applied: %)', later
                USING HINT = 'Run the scripts in sql/rollback/ newest first.';
        END IF;
    END IF;
END
$order$;

DO $rollback$
DECLARE
    shim_schema   constant text := 'Supabase-compatibility shim (20241130000000_supabase_shim.sql).';
    shim_users    constant text := 'Minimal stand-in for Supabase auth.users (shim migration).';
    shim_profiles constant text :=
        'Per-user profile (one row per auth.users row); columns are added by later migrations.';
    api_roles     constant text[] := ARRAY['anon', 'authenticated', 'service_role'];
    auth_is_shim  boolean;
    extra         text;
    f             text;
    r             text;
BEGIN
    -- 1. public.user_profiles, once only the shim's key column is left.
    -- (to_regclass, not ::regclass: a cast of a missing name fails even behind AND.)
    IF obj_description(to_regclass('public.user_profiles'), 'pg_class') = shim_profiles THEN
        SELECT string_agg(attname::text, ', ' ORDER BY attnum) INTO extra
        FROM pg_catalog.pg_attribute
        WHERE attrelid = 'public.user_profiles'::regclass
          AND attnum > 0 AND NOT attisdropped AND attname <> 'id';
        IF extra IS NOT NULL THEN
            RAISE EXCEPTION 'public.user_profiles still has columns of later migrations: %', extra
                USING HINT = 'Run the newer rollbacks first (newest first).';
        END IF;
        DROP TABLE public.user_profiles;
    END IF;

    -- 2. auth.uid(), auth.role(), auth.jwt() where the shim created them.
    FOREACH f IN ARRAY ARRAY['uid', 'role', 'jwt'] LOOP
        IF coalesce(obj_description(to_regprocedure(format('auth.%I()', f)), 'pg_proc'), '')
               LIKE 'Shim:%' THEN
            EXECUTE format('DROP FUNCTION auth.%I()', f);
        END IF;
    END LOOP;

    -- 3. auth.users where it is the shim's stand-in.
    IF obj_description(to_regclass('auth.users'), 'pg_class') = shim_users THEN
        DROP TABLE auth.users;
    END IF;

    -- 4. Schema auth, the schema grants and the roles: vanilla PostgreSQL only.
    auth_is_shim := coalesce(
        obj_description(to_regnamespace('auth'), 'pg_namespace') = shim_schema, false);
    IF NOT auth_is_shim THEN
        RETURN;
    END IF;

    FOREACH r IN ARRAY api_roles LOOP
        IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r) THEN
            EXECUTE format('REVOKE USAGE ON SCHEMA public FROM %I', r);
        END IF;
    END LOOP;
    -- Without CASCADE: fails if anything else still lives in auth.
    DROP SCHEMA auth;

    FOREACH r IN ARRAY api_roles LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r) THEN
            CONTINUE;
        END IF;
        IF EXISTS (SELECT 1 FROM pg_catalog.pg_shdepend d
                   WHERE d.refclassid = 'pg_catalog.pg_authid'::regclass
                     AND d.refobjid = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = r))
           OR EXISTS (SELECT 1 FROM pg_catalog.pg_auth_members m
                      WHERE m.roleid = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = r)
                         OR m.member = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = r)) THEN
            RAISE NOTICE 'role % kept: other objects or roles in the cluster still use it', r;
        ELSE
            EXECUTE format('DROP ROLE %I', r);
        END IF;
    END LOOP;
END
$rollback$;

DO $bookkeeping$
BEGIN
    IF to_regclass('supabase_migrations.schema_migrations') IS NOT NULL THEN
        DELETE FROM supabase_migrations.schema_migrations WHERE version = '20241130000000';
    END IF;
END
$bookkeeping$;

COMMIT;
