"""The SQL database: one SQLAlchemy engine, its sessions and its migrations.

``Database(url)`` works with SQLite (the default, a file in the data dir) and PostgreSQL
(``postgresql+psycopg://...``). SQLite gets the settings a small multi-threaded server
needs: write-ahead logging so readers never block the writer, ``synchronous=NORMAL``
(durable at checkpoints, fast commits), enforced foreign keys and a busy timeout so that
writers queue instead of failing with "database is locked".

Nothing is created at import time: the server builds one ``Database`` and hands it on.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, make_url, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from modelport.errors import InvalidInput, Unavailable

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

# Execution option carrying the SQLite BEGIN mode of a connection ("" or "IMMEDIATE").
_BEGIN_OPTION = "modelport_sqlite_begin"
# Key of the PostgreSQL advisory lock that serialises concurrent migrations ("modelpor").
_MIGRATION_LOCK_KEY = 0x6D6F64656C706F72


class Database:
    """A SQLAlchemy engine plus session factories for one database URL.

    ``session()`` is for reads and ordinary writes; ``session(write=True)`` is for
    read-then-write transactions (e.g. "next version = max + 1"): on SQLite it starts with
    ``BEGIN IMMEDIATE`` so two such transactions queue on the write lock instead of one
    failing at commit; on PostgreSQL callers lock rows themselves.
    """

    def __init__(self, url: str, *, busy_timeout_ms: int = 30_000, echo: bool = False) -> None:
        parsed = _normalise_url(url)
        self.url: URL = parsed
        self.dialect_name: str = parsed.get_backend_name()
        kwargs: dict[str, Any] = {"echo": echo}
        if self.dialect_name == "sqlite":
            if _is_memory(parsed):
                # One shared connection, or every checkout would see its own empty database.
                kwargs.update(poolclass=StaticPool, connect_args={"check_same_thread": False})
            else:
                database = parsed.database
                assert database is not None  # _is_memory covers None
                Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        else:
            # Connections dropped by a database restart are replaced instead of failing once.
            kwargs["pool_pre_ping"] = True
        self.engine: Engine = create_engine(parsed, **kwargs)
        if self.dialect_name == "sqlite":
            _configure_sqlite(self.engine, busy_timeout_ms)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._write_sessions = sessionmaker(
            self.engine.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"}),
            expire_on_commit=False,
        )

    def __repr__(self) -> str:
        return f"Database({self.url.render_as_string(hide_password=True)!r})"

    @property
    def display_url(self) -> str:
        """The URL with any password masked, fit for logs and status pages."""
        return self.url.render_as_string(hide_password=True)

    @contextmanager
    def session(self, *, write: bool = False) -> Iterator[Session]:
        """A session in one transaction: committed on success, rolled back on any error."""
        maker = self._write_sessions if write else self._sessions
        with maker.begin() as session:
            yield session

    def migrate(self) -> None:
        """Bring the schema up to date (Alembic ``upgrade head``); safe to run at every start.

        The upgrade runs in one transaction on the engine's own connection. Concurrent
        starters are serialised: by an advisory lock on PostgreSQL, by the write lock on
        SQLite.
        """
        # Imported here: only the process that owns the database needs Alembic.
        from alembic import command
        from alembic.config import Config

        config = Config()
        # ConfigParser interpolation: a literal '%' in the path must be doubled.
        config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
        config.set_main_option("path_separator", "os")
        with self.engine.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"}).begin() as conn:
            if self.dialect_name == "postgresql":
                conn.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY}
                )
            config.attributes["connection"] = conn
            command.upgrade(config, "head")

    def ping(self) -> None:
        """Check the database answers; raises ``Unavailable`` naming the cause if not."""
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except SQLAlchemyError as exc:
            raise Unavailable(f"database {self.display_url} unreachable: {exc}") from exc

    def dispose(self) -> None:
        """Close every pooled connection (call once at shutdown)."""
        self.engine.dispose()


def _normalise_url(url: str) -> URL:
    """Parse ``url``; plain ``postgresql://`` means the psycopg 3 driver we ship with."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise InvalidInput(f"invalid database URL {url!r}: {exc}", param="database_url") from exc
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise InvalidInput(
            f"unsupported database {backend!r}: use sqlite:/// or postgresql+psycopg://",
            param="database_url",
        )
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def _is_memory(url: URL) -> bool:
    return url.database in (None, "", ":memory:") or "mode=memory" in str(url.query)


def _configure_sqlite(engine: Engine, busy_timeout_ms: int) -> None:
    """Per-connection pragmas, and transaction control taken over from the sqlite3 module.

    The sqlite3 module only emits BEGIN before DML, so a SELECT-then-INSERT transaction is
    not isolated. With the module's own handling disabled we emit BEGIN ourselves on every
    transaction start (the recipe of the SQLAlchemy SQLite docs), IMMEDIATE where asked.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get(_BEGIN_OPTION, "")
        conn.exec_driver_sql(f"BEGIN {mode}".strip())
