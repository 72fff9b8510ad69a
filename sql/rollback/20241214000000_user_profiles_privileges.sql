-- =============================================================================
-- Rollback:  20241214000000_user_profiles_privileges.sql
-- Undoes:    the privileges on public.user_profiles: service_role's explicit
--            grant is revoked, and every role gets back what the default
--            privileges of the table's owner give a new table in public
--            (pg_default_acl), i.e. what the table had when the shim created
--            it: on Supabase ALL for anon, authenticated and service_role (the
--            TRUNCATE hole comes back), on vanilla PostgreSQL nothing beyond
--            the owner.  Then forgets the migration in
--            supabase_migrations.schema_migrations so `engagement-relay
--            migrate` applies it again.
-- Data:      none.
-- Run:       psql --set ON_ERROR_STOP=on -f sql/rollback/20241214000000_user_profiles_privileges.sql
--            (newest migration first; see sql/rollback/README.md).
-- Idempotent: yes.
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
        WHERE version IN ('20241215000000', '20241216000000', '20241217000000');
        IF later IS NOT NULL THEN
            RAISE EXCEPTION 'roll back the later migrations first (still applied: %)', later
                USING HINT = 'Run the scripts in sql/rollback/ newest first.';
        END IF;
    END IF;
END
$order$;

DO $undo$
DECLARE
    g record;
BEGIN
    IF to_regclass('public.user_profiles') IS NULL THEN
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'service_role') THEN
        REVOKE ALL ON public.user_profiles FROM service_role;
    END IF;
    -- The default privileges for tables created in public (or in every schema) by the owner.
    FOR g IN
        SELECT DISTINCT a.grantee, a.privilege_type
        FROM pg_catalog.pg_class c
        JOIN pg_catalog.pg_default_acl d
          ON d.defaclrole = c.relowner AND d.defaclobjtype = 'r'
         AND d.defaclnamespace IN (0, c.relnamespace),
             aclexplode(d.defaclacl) a
        WHERE c.oid = 'public.user_profiles'::regclass
          AND a.grantee <> c.relowner
    LOOP
        EXECUTE format('GRANT %s ON public.user_profiles TO %s', g.privilege_type,
                       CASE WHEN g.grantee = 0 THEN 'PUBLIC'
                            ELSE quote_ident(pg_catalog.pg_get_userbyid(g.grantee)) END);
    END LOOP;
END
$undo$;

DO $bookkeeping$
BEGIN
    IF to_regclass('supabase_migrations.schema_migrations') IS NOT NULL THEN
        DELETE FROM supabase_migrations.schema_migrations WHERE version = '20241214000000';
    END IF;
END
$bookkeeping$;

COMMIT;
