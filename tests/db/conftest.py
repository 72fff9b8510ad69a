"""Fixtures of the RLS audit (tests/db/test_rls.py) and the audit report it leaves behind.

* ``db``: a superuser connection from the standard ``PG*`` variables (defaults: the seed's
  host=localhost user=postgres dbname=test); ``db.attempt(actor, sql)`` runs one statement as
  an API role the way PostgREST does, in a transaction that is always rolled back.
* ``users``: three fresh users A, B and C in ``auth.users``; A and B own one row in every
  engagement table, C owns none. Deleted (with everything they own, ON DELETE CASCADE) after
  the test, so the audit can run any number of times against the same database.
* ``audit``: records each case (table, actor, attempt, expected, outcome, verdict); at the end
  of a full run the cases are written to docs/RLS_AUDIT.md (``--rls-audit PATH`` elsewhere,
  ``--rls-audit ''`` not at all). Partial runs (-k, -m, node ids, deselection) write nothing.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence

import psycopg2
import psycopg2.extensions
import pytest
from psycopg2 import sql

REPO = Path(__file__).resolve().parents[2]
DEFAULT_REPORT = REPO / "docs" / "RLS_AUDIT.md"

# The PRD's success metric (prd-engagement-events-logging.md, §8 Success Metrics), verbatim.
PRD_METRIC = "RLS audit confirms zero cross\u2011user leakage."


# --------------------------------------------------------------------------------------------
# Connection and acting as a role
# --------------------------------------------------------------------------------------------


def connect() -> psycopg2.extensions.connection:
    """Connects with the PG* environment variables, defaulting to the seed's local database."""
    env = os.environ
    return psycopg2.connect(
        host=env.get("PGHOST", "localhost"),
        port=env.get("PGPORT", "5432"),
        user=env.get("PGUSER", "postgres"),
        dbname=env.get("PGDATABASE", "test"),
        # PGPASSWORD (and PGSSLMODE etc.) are read by libpq itself.
        application_name="rls-audit",
    )


@dataclass(frozen=True)
class Actor:
    """Who runs a statement: an API role and, for a signed-in user, the JWT ``sub``."""

    label: str
    role: str
    sub: Optional[uuid.UUID] = None

    def claims(self) -> str:
        """The ``request.jwt.claims`` JSON PostgREST would set for this actor's token."""
        claims: dict[str, str] = {"role": self.role}
        if self.sub is not None:
            claims["sub"] = str(self.sub)
        return json.dumps(claims)


@dataclass(frozen=True)
class Outcome:
    """What one statement did: its rows and row count, or the server's refusal."""

    rows: tuple[tuple, ...] = ()
    rowcount: int = 0
    returned_rows: bool = False
    sqlstate: Optional[str] = None
    error: Optional[str] = None

    @property
    def refused(self) -> bool:
        """True when the server raised an error."""
        return self.error is not None

    @property
    def denied(self) -> bool:
        """True when refused with insufficient_privilege (42501): a missing grant or a policy."""
        return self.sqlstate == "42501"


class Database:
    """A superuser connection that sets up fixtures and runs attempts as API roles."""

    def __init__(self, conn: psycopg2.extensions.connection) -> None:
        self.conn = conn

    def execute(self, statement: str, params: Sequence[object] = ()) -> None:
        """Runs a statement as the connecting (super)user and commits it."""
        with self.conn.cursor() as cur:
            cur.execute(statement, params)
        self.conn.commit()

    def query(self, statement: str, params: Sequence[object] = ()) -> list[tuple]:
        """Runs a query as the connecting (super)user; returns its rows."""
        with self.conn.cursor() as cur:
            cur.execute(statement, params)
            rows = cur.fetchall()
        self.conn.rollback()
        return rows

    def attempt(self, actor: Actor, statement: str, params: Sequence[object] = ()) -> Outcome:
        """Runs ``statement`` as ``actor`` the Supabase way, then rolls everything back.

        In one transaction: ``SET LOCAL ROLE <role>`` and
        ``set_config('request.jwt.claims', '{"sub": …, "role": …}', true)`` (which
        ``auth.uid()`` reads), then the statement. Nothing it writes is kept.
        """
        try:
            with self.conn.cursor() as cur:
                cur.execute(
                    "SELECT set_config('request.jwt.claims', %s, true)", (actor.claims(),)
                )
                cur.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(actor.role)))
                try:
                    cur.execute(statement, params)
                except psycopg2.Error as e:
                    return Outcome(sqlstate=e.pgcode, error=e.diag.message_primary)
                if cur.description is None:
                    return Outcome(rowcount=cur.rowcount)
                rows = tuple(cur.fetchall())
                return Outcome(rows=rows, rowcount=len(rows), returned_rows=True)
        finally:
            self.conn.rollback()


@pytest.fixture(scope="session")
def db() -> Iterator[Database]:
    """The audit's superuser connection; fails clearly when it cannot bypass RLS."""
    try:
        conn = connect()
    except psycopg2.OperationalError as e:
        pytest.exit(
            f"rls audit: cannot connect ({str(e).strip()}); set PGHOST, PGPORT, PGUSER, "
            "PGDATABASE (and PGPASSWORD) to a database with sql/migrations applied, "
            "or run scripts/test-rls",
            returncode=2,
        )
    database = Database(conn)
    ((bypass,),) = database.query(
        "SELECT rolsuper OR rolbypassrls FROM pg_catalog.pg_roles WHERE rolname = current_user"
    )
    if not bypass:
        pytest.exit("rls audit: PGUSER must be a superuser (it writes the fixture rows)", 2)
    if not database.query("SELECT to_regclass('public.engagement_events')")[0][0]:
        pytest.exit("rls audit: public.engagement_events is missing: apply sql/migrations", 2)
    yield database
    conn.close()


# --------------------------------------------------------------------------------------------
# Users and their rows
# --------------------------------------------------------------------------------------------

# One row per engagement table (and a profile) for a user (%(user)s), written as the superuser.
# The state row comes first: the event's trigger (20241215000000_engagement_activity.sql) would
# otherwise create it.
FIXTURE_ROWS = (
    "INSERT INTO public.user_engagement_states (user_id) VALUES (%(user)s)",
    "INSERT INTO public.engagement_events (user_id, event_type, value)"
    " VALUES (%(user)s, 'app_open', '{\"source\": \"rls_audit\"}')",
    "INSERT INTO public.engagement_state_transitions (user_id, from_state, to_state, trigger)"
    " VALUES (%(user)s, NULL, 'active', 'rls_audit')",
    "INSERT INTO public.engagement_message_queue"
    " (user_id, message_type, message_key, destination, destination_jid, idempotency_key)"
    " VALUES (%(user)s, 'welcome', 'welcome.v1', 'individual', '4915700000000@s.whatsapp.net',"
    " 'rls-audit-' || %(user)s)",
    "INSERT INTO public.engagement_events_archive (id, user_id, event_type, is_deleted)"
    " VALUES (gen_random_uuid(), %(user)s, 'app_open', true)",
    "INSERT INTO public.user_profiles (id) VALUES (%(user)s)",
)


@dataclass(frozen=True)
class Users:
    """The test's users: A and B own one row in every engagement table, C owns none."""

    a: uuid.UUID
    b: uuid.UUID
    c: uuid.UUID

    def label(self, user: object) -> str:
        """A, B or C for the test's users (so the report has no random ids), else 'other'."""
        names = {str(self.a): "A", str(self.b): "B", str(self.c): "C"}
        return names.get(str(user), "other")

    def all(self) -> list[str]:
        """The three ids, as text for ``= ANY(%s::uuid[])``."""
        return [str(self.a), str(self.b), str(self.c)]

    def user(self, name: str) -> Actor:
        """User A, B or C signed in (role authenticated, their id as ``sub``)."""
        return Actor(f"user {name}", "authenticated", getattr(self, name.lower()))


@pytest.fixture
def users(db: Database) -> Iterator[Users]:
    """Creates users A, B, C (auth.users) and A's and B's rows; deletes them all afterwards."""
    made = Users(uuid.uuid4(), uuid.uuid4(), uuid.uuid4())
    try:
        for user in (made.a, made.b, made.c):
            db.execute(
                "INSERT INTO auth.users (id, email) VALUES (%s, %s)",
                (str(user), f"rls-audit-{user}@example.invalid"),
            )
        for user in (made.a, made.b):
            for statement in FIXTURE_ROWS:
                db.execute(statement, {"user": str(user)})
        yield made
    finally:
        db.conn.rollback()
        db.execute("DELETE FROM auth.users WHERE id = ANY(%s::uuid[])", (made.all(),))


# --------------------------------------------------------------------------------------------
# The audit record and its report
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One audited attempt, as it appears in the report."""

    table: str
    actor: str
    attempt: str
    expected: str
    outcome: str
    passed: bool
    cross_user: str = ""  # "read" or "write" when the attempt targets another user's rows
    leaked: bool = False  # a cross-user attempt that returned, added or changed a row


@dataclass
class AuditLog:
    """Every case of the session, in the order the tests ran."""

    cases: list[Case] = field(default_factory=list)
    partial: bool = False


AUDIT_LOG = AuditLog()


class Audit:
    """Per-test handle: ``check`` records a case, then asserts it."""

    def __init__(self, users: Users) -> None:
        self.users = users

    def describe(self, outcome: Outcome) -> str:
        """A deterministic one-line outcome: the refusal, the rows' owners, or the row count."""
        if outcome.refused:
            return f"refused: {outcome.error} ({outcome.sqlstate})"
        if outcome.returned_rows:
            if not outcome.rows:
                return "0 rows"
            owners = sorted({self.users.label(row[0]) for row in outcome.rows})
            noun = "row" if len(outcome.rows) == 1 else "rows"
            return f"{len(outcome.rows)} {noun}, owned by {' and '.join(owners)}"
        if outcome.rowcount < 0:
            return "allowed"
        noun = "row" if outcome.rowcount == 1 else "rows"
        return f"allowed, {outcome.rowcount} {noun} affected"

    def check(
        self,
        table: str,
        actor: Actor,
        attempt: str,
        expected: str,
        outcome: Outcome,
        passed: bool,
        cross_user: str = "",
        note: Optional[str] = None,
    ) -> None:
        """Records the case for the report, then fails the test when it did not pass.

        ``cross_user`` ("read" or "write") marks an attempt on other users' data: a read leaks
        when it returns a row the actor does not own (anon owns none, whatever its claims say),
        a write when it succeeds and adds, changes or removes anything.
        """
        if outcome.refused or not cross_user:
            leaked = False
        elif cross_user == "read":
            owner = None if actor.role == "anon" else str(actor.sub)
            leaked = any(str(row[0]) != owner for row in outcome.rows)
        else:
            leaked = outcome.rowcount != 0  # -1: no count (TRUNCATE), and it succeeded
        text = self.describe(outcome) if note is None else note
        AUDIT_LOG.cases.append(
            Case(table, actor.label, attempt, expected, text, passed, cross_user, leaked)
        )
        assert passed, f"{table}: {actor.label} {attempt}: expected {expected}, got {text}"


@pytest.fixture
def audit(users: Users) -> Audit:
    """The audit record of the current test."""
    return Audit(users)


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--rls-audit PATH``: where the report goes ('' for nowhere)."""
    parser.addoption(
        "--rls-audit",
        default=str(DEFAULT_REPORT),
        help="write the RLS audit report here after a full run ('' to skip; "
        "default docs/RLS_AUDIT.md)",
    )


def pytest_deselected(items: list[pytest.Item]) -> None:
    """A run with deselected tests is partial: its report would be incomplete."""
    if items:
        AUDIT_LOG.partial = True


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Writes the report after a full run that completed (passed or failed)."""
    config = session.config
    path = config.getoption("--rls-audit")
    partial = (
        AUDIT_LOG.partial
        or bool(config.getoption("keyword"))
        or bool(config.getoption("markexpr"))
        or any("::" in str(arg) for arg in config.args)
    )
    if not path or partial or not AUDIT_LOG.cases or exitstatus not in (0, 1):
        return
    Path(path).write_text(render_report(AUDIT_LOG.cases), encoding="utf-8")


def render_report(cases: list[Case]) -> str:
    """The markdown report: the metric, a summary and one table row per case."""
    failed = [c for c in cases if not c.passed]
    reads = [c for c in cases if c.cross_user == "read"]
    writes = [c for c in cases if c.cross_user == "write"]
    leaks = [c for c in cases if c.leaked]
    verdict = (
        "**Confirmed**: no cross-user attempt returned, added or changed a row."
        if not leaks and not failed
        else f"**NOT confirmed**: {len(leaks)} leaking and {len(failed)} failing case(s), "
        "marked FAIL below."
    )
    lines = [
        "# RLS audit",
        "",
        "<!-- Generated by tests/db/test_rls.py (scripts/test-rls); do not edit by hand. -->",
        "",
        f"PRD success metric (§8): \u201c{PRD_METRIC}\u201d",
        "",
        verdict,
        "",
        f"- cases: {len(cases)}, passed: {len(cases) - len(failed)}, failed: {len(failed)}",
        f"- cross-user reads (a user, or anon, reading another user's rows): {len(reads)}, "
        f"returning a row: {sum(c.leaked for c in reads)}",
        f"- cross-user writes (inserting, changing or deleting another user's rows): "
        f"{len(writes)}, succeeding: {sum(c.leaked for c in writes)}",
        "",
        "How: migrations `sql/migrations/*.sql` applied to a fresh database; users A and B each",
        "own one row in every table below (written by the superuser), user C owns none. Each",
        "attempt runs in its own transaction the way PostgREST runs a request,",
        "`SET LOCAL ROLE <role>` and `set_config('request.jwt.claims',",
        "'{\"sub\":\"<user>\",\"role\":\"<role>\"}', true)` (read by `auth.uid()`), and is",
        "rolled back. \u201crefused\u201d quotes the server's error and SQLSTATE (42501:",
        "insufficient_privilege, from a missing grant or a row-level security policy).",
        "",
        "Regenerate: `scripts/test-rls` (a private cluster), or `pytest tests/db/test_rls.py`",
        "with `PG*` variables pointing at a migrated database.",
        "",
        "| # | table | actor | attempt | expected | outcome | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, c in enumerate(cases, 1):
        verdict_cell = "pass" if c.passed else "**FAIL**"
        lines.append(
            f"| {i} | `{c.table}` | {c.actor} | {c.attempt} | {c.expected} | {c.outcome} "
            f"| {verdict_cell} |"
        )
    return "\n".join(lines) + "\n"
