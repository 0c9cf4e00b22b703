"""Opening an SQLAlchemy database the way convlens needs it, and saying why one failed.

Any SQLAlchemy URL works. PostgreSQL goes through psycopg2 (SQLAlchemy 2.1 maps a bare
postgresql:// to psycopg 3, which is not installed) and gives up on a server that does not
answer within `CONNECT_TIMEOUT_S`; an SQLite file gets its folder created and waits up to
`BUSY_TIMEOUT_S` for another process's write lock. Connections are checked before use, so a
server that went away and came back is reconnected to without a restart.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

CONNECT_TIMEOUT_S = 5
BUSY_TIMEOUT_S = 10


class BadURL(ValueError):
    """Not a database URL SQLAlchemy can use; the message never holds the URL itself."""


def open_engine(url: str) -> Engine:
    """An engine for `url`. Raises `BadURL`, or OSError when an SQLite file's folder cannot
    be created."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise BadURL("not an SQLAlchemy database URL") from None
    connect_args: dict[str, object] = {}
    backend = parsed.get_backend_name()
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg2")
    if backend == "postgresql":
        connect_args["connect_timeout"] = CONNECT_TIMEOUT_S
    elif backend == "sqlite":
        connect_args["timeout"] = BUSY_TIMEOUT_S
        if parsed.database and parsed.database != ":memory:" and "uri" not in parsed.query:
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    try:
        return create_engine(parsed, pool_pre_ping=True, connect_args=connect_args)
    except (ArgumentError, NoSuchModuleError, ImportError) as error:
        raise BadURL(str(error)) from None


def shown(url: str) -> str:
    """The URL with its password hidden, for logs and terminals."""
    return make_url(url).render_as_string(hide_password=True)


def failure_reason(error: BaseException) -> str:
    """Why the database failed, in one line without the URL, the SQL or its parameters."""
    original = getattr(error, "orig", None) or error
    text = " ".join(str(original).split()) or type(original).__name__
    lowered = text.lower()
    if "no space left" in lowered or "disk is full" in lowered or "disk full" in lowered:
        return f"the disk is full ({text[:200]})"
    if "readonly" in lowered or "read-only" in lowered or "read only" in lowered:
        return f"the database is read-only ({text[:200]})"
    return text[:300]
