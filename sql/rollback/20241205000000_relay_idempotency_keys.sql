-- =============================================================================
-- Rollback:  20241205000000_relay_idempotency_keys.sql
-- Undoes:    relay.idempotency_keys (and its index), the schema relay when
--            nothing else lives in it, and forgets the migration in
--            supabase_migrations.schema_migrations so `engagement-relay migrate`
--            applies it again.
-- Data:      the remembered Idempotency-Key results (a 24-hour cache) are lost;
--            a client retrying a request right after the rollback may insert
--            its events twice.  A running relay's POST endpoints fail while the
--            table is missing: stop the relay first.
-- Run:       psql --set ON_ERROR_STOP=on -f sql/rollback/20241205000000_relay_idempotency_keys.sql
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
        WHERE version IN ('20241210000000', '20241211000000', '20241212000000', '20241213000000', '20241214000000', '20241215000000', '20241216000000', '20241217000000');
        IF later IS NOT NULL THEN
            RAISE EXCEPTION 'roll back the later migrations first (still applied: %)', later
                USING HINT = 'Run the scripts in sql/rollback/ newest first.';
        END IF;
    END IF;
END
$order$;

DROP TABLE IF EXISTS relay.idempotency_keys;

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
        DELETE FROM supabase_migrations.schema_migrations WHERE version = '20241205000000';
    END IF;
END
$bookkeeping$;

COMMIT;
