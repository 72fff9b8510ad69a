"""The seed's RLS audit (tasks §7.1), as written: insert a row as user A, read it as user B,
expect 0 rows; plus what every policy and grant in sql/migrations promises, table by table.

What the migrations promise (and so what is tested):

* ``engagement_events``: a signed-in user reads and inserts only their own rows (policies
  "Users can view own events", "Users can insert own events"); no UPDATE, DELETE or TRUNCATE
  for users (soft deletes are the service role's); anon nothing; service_role everything.
* ``user_engagement_states``, ``engagement_state_transitions``: a user reads only their own
  rows ("Users can SELECT own …") and writes none; anon nothing; service_role everything.
* ``engagement_message_queue``, ``engagement_events_archive``: service_role only.
* ``user_profiles``: RLS on and no policy yet: no user or anon reads or writes any row.
* ``delete_user_data()`` and schema ``relay`` (idempotency keys): not for users or anon.
* Every public table holding per-user rows (a foreign key to ``auth.users``) has RLS enabled.

Run: ``pytest tests/db/test_rls.py`` with PG* variables pointing at a migrated database
(defaults host=localhost user=postgres dbname=test), or ``scripts/test-rls`` for a private
cluster. Each case is recorded in docs/RLS_AUDIT.md (see conftest.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from conftest import Actor, Audit, Database, Outcome, Users


@dataclass(frozen=True)
class Table:
    """An audited table: how to write a row for ``%(user)s`` and what users may do."""

    name: str
    insert: str  # INSERT of one row owned by %(user)s
    change: str  # SET clause of a harmless UPDATE
    users_read_own: bool  # a policy and a grant let a signed-in user SELECT their own rows
    users_insert_own: bool  # … and INSERT rows for themselves
    owner: str = "user_id"  # the column holding the owning user's id

    def __str__(self) -> str:
        return self.name


TABLES = (
    Table(
        "engagement_events",
        "INSERT INTO public.engagement_events (user_id, event_type)"
        " VALUES (%(user)s, 'app_open')",
        "is_deleted = true",
        users_read_own=True,
        users_insert_own=True,
    ),
    Table(
        "user_engagement_states",
        "INSERT INTO public.user_engagement_states (user_id) VALUES (%(user)s)",
        "state = 'dormant'",
        users_read_own=True,
        users_insert_own=False,
    ),
    Table(
        "engagement_state_transitions",
        "INSERT INTO public.engagement_state_transitions (user_id, from_state, to_state, trigger)"
        " VALUES (%(user)s, 'active', 'dormant', 'rls_audit')",
        "metadata = '{\"edited\": true}'",
        users_read_own=True,
        users_insert_own=False,
    ),
    Table(
        "engagement_message_queue",
        "INSERT INTO public.engagement_message_queue"
        " (user_id, message_type, message_key, destination, destination_jid, idempotency_key)"
        " VALUES (%(user)s, 'reminder', 'reminder.v1', 'individual',"
        " '4915700000001@s.whatsapp.net', 'rls-audit-' || gen_random_uuid())",
        "status = 'cancelled'",
        users_read_own=False,
        users_insert_own=False,
    ),
    Table(
        "engagement_events_archive",
        "INSERT INTO public.engagement_events_archive (id, user_id, event_type)"
        " VALUES (gen_random_uuid(), %(user)s, 'app_open')",
        "archived_at = now()",
        users_read_own=False,
        users_insert_own=False,
    ),
)
# user_profiles (the shim's, extended by the engagement system): RLS on and no policy yet, so no
# user or anon may read or write any row; audited for the closed doors only.
PROFILES = Table(
    "user_profiles",
    "INSERT INTO public.user_profiles (id) VALUES (%(user)s)",
    "reengagement_opt_out = true",
    users_read_own=False,
    users_insert_own=False,
    owner="id",
)
WITH_PROFILES = (*TABLES, PROFILES)
USER_READABLE = [t for t in TABLES if t.users_read_own]
SERVICE_ONLY = [t for t in TABLES if not t.users_read_own]
READ_ONLY_FOR_USERS = [t for t in TABLES if not t.users_insert_own]
WRITES = ("update", "delete")

ANON = Actor("anon", "anon")
SERVICE = Actor("service_role", "service_role")
NO_SUB = Actor("authenticated, no sub", "authenticated")


def select_owned_by(table: Table) -> str:
    """SELECT of the owners of ``%(user)s``'s rows."""
    return f"SELECT {table.owner} FROM public.{table.name} WHERE {table.owner} = %(user)s"


def select_all(table: Table) -> str:
    """SELECT of the owners of every row the actor can see."""
    return f"SELECT {table.owner} FROM public.{table.name}"


def write(table: Table, op: str) -> str:
    """UPDATE (a harmless change) or DELETE of ``%(user)s``'s rows."""
    if op == "update":
        return f"UPDATE public.{table.name} SET {table.change} WHERE {table.owner} = %(user)s"
    return f"DELETE FROM public.{table.name} WHERE {table.owner} = %(user)s"


def nothing_changed(outcome: Outcome) -> bool:
    """A write that was refused, or that matched no row."""
    return outcome.denied or (not outcome.refused and outcome.rowcount == 0)


def nothing_read(outcome: Outcome) -> bool:
    """A read that was refused for lack of privilege, or that returned no row."""
    return outcome.denied or (not outcome.refused and outcome.rows == ())


# --------------------------------------------------------------------------------------------
# The seed's case: a row of user A is invisible to user B
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("table", USER_READABLE, ids=str)
def test_user_b_reads_none_of_user_as_rows(
    db: Database, users: Users, audit: Audit, table: Table
) -> None:
    """B asks for A's rows by A's id and gets 0 rows."""
    out = db.attempt(users.user("B"), select_owned_by(table), {"user": str(users.a)})
    audit.check(
        table.name, users.user("B"), "SELECT A's rows (WHERE user_id = A)", "0 rows", out,
        not out.refused and out.rows == (), cross_user="read",
    )


@pytest.mark.parametrize("table", USER_READABLE, ids=str)
def test_user_b_reading_everything_gets_only_their_own_rows(
    db: Database, users: Users, audit: Audit, table: Table
) -> None:
    """An unfiltered SELECT by B returns B's row and nobody else's."""
    out = db.attempt(users.user("B"), select_all(table))
    owners = {users.label(row[0]) for row in out.rows}
    audit.check(
        table.name, users.user("B"), "SELECT every row (no filter)", "only B's rows", out,
        not out.refused and owners == {"B"}, cross_user="read",
    )


@pytest.mark.parametrize("table", USER_READABLE, ids=str)
def test_user_a_reads_own_rows(db: Database, users: Users, audit: Audit, table: Table) -> None:
    """A sees their own row."""
    out = db.attempt(users.user("A"), select_owned_by(table), {"user": str(users.a)})
    owners = [users.label(row[0]) for row in out.rows]
    audit.check(
        table.name, users.user("A"), "SELECT own rows", "1 row, owned by A", out,
        not out.refused and owners == ["A"],
    )


@pytest.mark.parametrize("table", USER_READABLE, ids=str)
def test_a_token_without_sub_reads_nothing(
    db: Database, users: Users, audit: Audit, table: Table
) -> None:
    """role authenticated without a sub: auth.uid() is NULL, no row matches."""
    out = db.attempt(NO_SUB, select_all(table))
    audit.check(
        table.name, NO_SUB, "SELECT every row (no filter)", "0 rows", out,
        not out.refused and out.rows == (), cross_user="read",
    )


@pytest.mark.parametrize("table", SERVICE_ONLY, ids=str)
def test_user_a_cannot_read_service_only_tables(
    db: Database, users: Users, audit: Audit, table: Table
) -> None:
    """The queue and the archive are the service role's, even a user's own rows."""
    out = db.attempt(users.user("A"), select_owned_by(table), {"user": str(users.a)})
    audit.check(table.name, users.user("A"), "SELECT own rows", "refused", out, out.denied)


def test_user_a_reads_no_profile(db: Database, users: Users, audit: Audit) -> None:
    """No policy lets a user read user_profiles yet, not even their own row."""
    out = db.attempt(users.user("A"), select_owned_by(PROFILES), {"user": str(users.a)})
    audit.check(
        PROFILES.name, users.user("A"), "SELECT own rows", "refused or 0 rows", out,
        nothing_read(out),
    )


def test_user_a_cannot_read_relay_idempotency_keys(
    db: Database, users: Users, audit: Audit
) -> None:
    """The relay's idempotency keys (other callers' responses) are not reachable by users."""
    out = db.attempt(users.user("A"), "SELECT caller FROM relay.idempotency_keys")
    audit.check(
        "relay.idempotency_keys", users.user("A"), "SELECT every row", "refused", out,
        out.denied, cross_user="read",
    )


@pytest.mark.parametrize(
    "table, column",
    [("relay.presence", "user_id"), ("relay.revocations", "user_id"), ("relay.audit_log", "actor_sub")],
)
def test_user_a_cannot_reach_the_console_tables(
    db: Database, users: Users, audit: Audit, table: str, column: str
) -> None:
    """Presence, revocations and the audit log are the relay's and its operators' alone."""
    out = db.attempt(users.user("A"), f"SELECT {column} FROM {table}")
    audit.check(table, users.user("A"), "SELECT every row", "refused", out, out.denied,
                cross_user="read")
    out = db.attempt(users.user("A"), f"DELETE FROM {table}")
    audit.check(table, users.user("A"), "DELETE every row", "refused", out, out.denied,
                cross_user="write")


# --------------------------------------------------------------------------------------------
# Writes by a signed-in user
# --------------------------------------------------------------------------------------------


def test_user_a_inserts_own_event(db: Database, users: Users, audit: Audit) -> None:
    """The one write users have: an engagement event for themselves."""
    table = TABLES[0]
    out = db.attempt(users.user("A"), table.insert, {"user": str(users.a)})
    audit.check(
        table.name, users.user("A"), "INSERT a row for A", "allowed", out,
        not out.refused and out.rowcount == 1,
    )


@pytest.mark.parametrize("table", WITH_PROFILES, ids=str)
def test_user_a_cannot_insert_a_row_for_b(
    db: Database, users: Users, audit: Audit, table: Table
) -> None:
    """WITH CHECK (auth.uid() = user_id), or no INSERT grant at all."""
    out = db.attempt(users.user("A"), table.insert, {"user": str(users.b)})
    audit.check(
        table.name, users.user("A"), "INSERT a row for B", "refused", out, out.denied,
        cross_user="write",
    )


def test_a_token_without_sub_cannot_insert(db: Database, users: Users, audit: Audit) -> None:
    """Without a sub, auth.uid() is NULL and the INSERT policy matches no user_id."""
    table = TABLES[0]
    out = db.attempt(NO_SUB, table.insert, {"user": str(users.a)})
    audit.check(
        table.name, NO_SUB, "INSERT a row for A", "refused", out, out.denied,
        cross_user="write",
    )


@pytest.mark.parametrize("table", READ_ONLY_FOR_USERS, ids=str)
def test_user_a_cannot_insert_own_rows_where_users_only_read(
    db: Database, users: Users, audit: Audit, table: Table
) -> None:
    """States and transitions are written by the engagement service; the rest is service-only."""
    out = db.attempt(users.user("A"), table.insert, {"user": str(users.a)})
    audit.check(table.name, users.user("A"), "INSERT a row for A", "refused", out, out.denied)


@pytest.mark.parametrize("op", WRITES)
@pytest.mark.parametrize("table", WITH_PROFILES, ids=str)
def test_user_a_cannot_change_bs_rows(
    db: Database, users: Users, audit: Audit, table: Table, op: str
) -> None:
    """No UPDATE or DELETE of another user's rows."""
    out = db.attempt(users.user("A"), write(table, op), {"user": str(users.b)})
    audit.check(
        table.name, users.user("A"), f"{op.upper()} B's rows", "no row changed", out,
        nothing_changed(out), cross_user="write",
    )


@pytest.mark.parametrize("op", WRITES)
@pytest.mark.parametrize("table", TABLES, ids=str)
def test_user_a_cannot_change_own_rows(
    db: Database, users: Users, audit: Audit, table: Table, op: str
) -> None:
    """Users never update or delete rows, not even their own (soft deletes: service role)."""
    out = db.attempt(users.user("A"), write(table, op), {"user": str(users.a)})
    audit.check(
        table.name, users.user("A"), f"{op.upper()} own rows", "no row changed", out,
        nothing_changed(out),
    )


@pytest.mark.parametrize("table", WITH_PROFILES, ids=str)
def test_user_a_cannot_truncate(db: Database, users: Users, audit: Audit, table: Table) -> None:
    """TRUNCATE ignores RLS, so only the missing grant stops it (it would empty B's rows too)."""
    out = db.attempt(users.user("A"), f"TRUNCATE public.{table.name} CASCADE")
    audit.check(
        table.name, users.user("A"), "TRUNCATE", "refused", out, out.denied,
        cross_user="write",
    )


def test_user_a_cannot_erase_b(db: Database, users: Users, audit: Audit) -> None:
    """GDPR erasure is the service role's: a user cannot call it, for B or anyone."""
    out = db.attempt(
        users.user("A"), "SELECT table_name FROM public.delete_user_data(%(user)s)",
        {"user": str(users.b)},
    )
    audit.check(
        "delete_user_data()", users.user("A"), "erase B's data", "refused", out, out.denied,
        cross_user="write",
    )


# --------------------------------------------------------------------------------------------
# anon
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("table", WITH_PROFILES, ids=str)
def test_anon_reads_nothing(db: Database, users: Users, audit: Audit, table: Table) -> None:
    """anon has no privileges on any engagement table."""
    out = db.attempt(ANON, select_all(table))
    audit.check(
        table.name, ANON, "SELECT every row", "refused or 0 rows", out, nothing_read(out),
        cross_user="read",
    )


@pytest.mark.parametrize("table", USER_READABLE, ids=str)
def test_anon_with_a_users_sub_reads_nothing(
    db: Database, users: Users, audit: Audit, table: Table
) -> None:
    """A token with role anon but A's sub: the user policies match, the missing grant stops it."""
    actor = Actor("anon with A's sub", "anon", users.a)
    out = db.attempt(actor, select_owned_by(table), {"user": str(users.a)})
    audit.check(
        table.name, actor, "SELECT A's rows", "refused or 0 rows", out, nothing_read(out),
        cross_user="read",
    )


@pytest.mark.parametrize("table", WITH_PROFILES, ids=str)
def test_anon_cannot_insert(db: Database, users: Users, audit: Audit, table: Table) -> None:
    """anon writes nothing."""
    out = db.attempt(ANON, table.insert, {"user": str(users.a)})
    audit.check(
        table.name, ANON, "INSERT a row for A", "refused", out, out.denied, cross_user="write"
    )


@pytest.mark.parametrize("table", WITH_PROFILES, ids=str)
def test_anon_cannot_truncate(db: Database, users: Users, audit: Audit, table: Table) -> None:
    """TRUNCATE ignores RLS: only a missing grant keeps anon from emptying a table."""
    out = db.attempt(ANON, f"TRUNCATE public.{table.name} CASCADE")
    audit.check(table.name, ANON, "TRUNCATE", "refused", out, out.denied, cross_user="write")


# --------------------------------------------------------------------------------------------
# service_role
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("table", TABLES, ids=str)
def test_service_role_reads_every_users_rows(
    db: Database, users: Users, audit: Audit, table: Table
) -> None:
    """The service role (BYPASSRLS, FOR ALL policies) sees A's and B's rows."""
    out = db.attempt(
        SERVICE,
        f"SELECT user_id FROM public.{table.name} WHERE user_id = ANY(%(users)s::uuid[])",
        {"users": users.all()},
    )
    owners = sorted(users.label(row[0]) for row in out.rows)
    audit.check(
        table.name, SERVICE, "SELECT the test users' rows", "2 rows, owned by A and B", out,
        not out.refused and owners == ["A", "B"],
    )


@pytest.mark.parametrize("table", TABLES, ids=str)
def test_service_role_inserts_for_any_user(
    db: Database, users: Users, audit: Audit, table: Table
) -> None:
    """Batch imports and the engagement service write rows for any user (here C)."""
    out = db.attempt(SERVICE, table.insert, {"user": str(users.c)})
    audit.check(
        table.name, SERVICE, "INSERT a row for C", "allowed", out,
        not out.refused and out.rowcount == 1,
    )


@pytest.mark.parametrize("op", WRITES)
@pytest.mark.parametrize("table", TABLES, ids=str)
def test_service_role_changes_any_users_rows(
    db: Database, users: Users, audit: Audit, table: Table, op: str
) -> None:
    """Soft deletes, state changes, erasure and archiving are the service role's writes."""
    out = db.attempt(SERVICE, write(table, op), {"user": str(users.b)})
    audit.check(
        table.name, SERVICE, f"{op.upper()} B's rows", "allowed", out,
        not out.refused and out.rowcount == 1,
    )


# --------------------------------------------------------------------------------------------
# The catalog: every table of per-user rows has RLS on
# --------------------------------------------------------------------------------------------

CATALOG = Actor("catalog", "postgres")


def test_every_table_of_user_rows_has_rls_enabled(db: Database, audit: Audit) -> None:
    """Each table in public with a foreign key to auth.users: relrowsecurity is on."""
    rows = db.query(
        """
        SELECT c.relname, c.relrowsecurity
        FROM pg_catalog.pg_class c
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
          AND EXISTS (SELECT 1 FROM pg_catalog.pg_constraint k
                      WHERE k.conrelid = c.oid AND k.contype = 'f'
                        AND k.confrelid = 'auth.users'::regclass)
        ORDER BY c.relname
        """
    )
    assert {name for name, _ in rows} >= {t.name for t in TABLES}, rows
    for name, enabled in rows:
        audit.check(
            name, CATALOG, "row level security enabled (FK to auth.users)", "on",
            Outcome(), bool(enabled), note="on" if enabled else "off",
        )
