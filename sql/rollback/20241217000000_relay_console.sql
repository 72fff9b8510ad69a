-- =============================================================================
-- Rollback:  20241217000000_relay_console.sql
-- Undoes:    relay.presence, relay.revocations and relay.audit_log (and their
--            indexes), the schema relay when nothing else lives in it, and
--            forgets the migration in supabase_migrations.schema_migrations so
--            `engagement-relay migrate` applies it again.
-- Data:      users' last_seen times, the revocations in force (tokens they
--            refused are accepted again until they expire) and the audit log.
--            Export the audit log first if it must be kept:
--            \copy relay.audit_log TO 'audit_log.csv' CSV HEADER
--            A running relay's presence, revocation and admin endpoints fail
--            while the tables are missing: stop the relay first.
-- Run:       psql --set ON_ERROR_STOP=on -f sql/rollback/20241217000000_relay_console.sql
--            (newest migration first; see sql/rollback/README.md).
-- Idempotent: yes.
-- =============================================================================

BEGIN;

DROP TABLE IF EXISTS relay.audit_log;
DROP TABLE IF EXISTS relay.revocations;
DROP TABLE IF EXISTS relay.presence;

-- The migration created the schema with IF NOT EXISTS: drop it only when empty.
DO $schema$
BEGIN
    IF to_regnamespace('relay') IS NULL THEN
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_depend
               WHERE refclassid = 'pg_catalog.pg_namespace'::regclass
                 AND refobjid = to_regnamespace('relay')) THEN
        RAISE NOTICE 'schema relay still holds other objects; kept';
    ELSE
        DROP SCHEMA relay;
    END IF;
END
$schema$;

DO $bookkeeping$
BEGIN
    IF to_regclass('supabase_migrations.schema_migrations') IS NOT NULL THEN
        DELETE FROM supabase_migrations.schema_migrations WHERE version = '20241217000000';
    END IF;
END
$bookkeeping$;

COMMIT;
