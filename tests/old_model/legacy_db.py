"""The old system's tables on each database, filled with generated old-style rows.

``OLD_DDL`` holds the old ``workflow_history`` (and the ``servers`` table its foreign key
names) for SQLite exactly as the old system created it, and its faithful equivalents for
PostgreSQL and MariaDB. :func:`old_rows` makes rows the way the old code wrote them: metadata
as JSON text in several spellings, naive local ISO timestamps (some left to the column default),
statuses ``running``, ``failed``, ``success`` and ``completed``, ids with SQL metacharacters.
:func:`old_values` reads the old columns back for a before/after comparison.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import sqlite3
from contextlib import closing
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

__all__ = [
    "OLD_COLUMNS",
    "OLD_DDL",
    "SERVERS",
    "build_old_database",
    "create_old_tables",
    "insert_old_rows",
    "old_rows",
    "old_values",
    "old_values_query",
    "raw_old_values",
]

OLD_COLUMNS = (
    "id",
    "workflow_id",
    "server_id",
    "device_type",
    "status",
    "started_at",
    "completed_at",
    "steps_completed",
    "total_steps",
    "error_message",
    "metadata",
)
SERVERS = tuple(f"srv-{n:04d}" for n in range(1, 41))

OLD_DDL: dict[str, tuple[str, ...]] = {
    "sqlite": (
        "CREATE TABLE servers (server_id TEXT PRIMARY KEY, hostname TEXT)",
        """CREATE TABLE workflow_history (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            workflow_id TEXT NOT NULL,
            server_id TEXT NOT NULL,
            device_type TEXT,
            status TEXT NOT NULL,
            started_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
            completed_at TIMESTAMP,
            steps_completed INTEGER DEFAULT 0,
            total_steps INTEGER DEFAULT 0,
            error_message TEXT,
            metadata TEXT,
            FOREIGN KEY (server_id) REFERENCES servers (server_id)
        )""",
    ),
    "postgresql": (
        "CREATE TABLE servers (server_id TEXT PRIMARY KEY, hostname TEXT)",
        """CREATE TABLE workflow_history (
            id SERIAL PRIMARY KEY,
            workflow_id TEXT NOT NULL,
            server_id TEXT NOT NULL REFERENCES servers (server_id),
            device_type TEXT,
            status TEXT NOT NULL,
            started_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
            completed_at TIMESTAMP,
            steps_completed INTEGER DEFAULT 0,
            total_steps INTEGER DEFAULT 0,
            error_message TEXT,
            metadata TEXT
        )""",
    ),
    "mysql": (
        "CREATE TABLE servers (server_id VARCHAR(255) PRIMARY KEY, hostname TEXT)",
        """CREATE TABLE workflow_history (
            id INTEGER PRIMARY KEY AUTO_INCREMENT,
            workflow_id VARCHAR(255) NOT NULL,
            server_id VARCHAR(255) NOT NULL,
            device_type VARCHAR(255),
            status VARCHAR(32) NOT NULL,
            started_at TIMESTAMP NULL DEFAULT CURRENT_TIMESTAMP,
            completed_at TIMESTAMP NULL,
            steps_completed INTEGER DEFAULT 0,
            total_steps INTEGER DEFAULT 0,
            error_message TEXT,
            metadata TEXT,
            FOREIGN KEY (server_id) REFERENCES servers (server_id)
        ) ENGINE=InnoDB""",
    ),
}

_STATUSES = ("running", "failed", "success", "completed")
_DEVICES = ("s2_c2_small", "a1_c5_large", "g1_c4_gpu", None)
_STEPS = ("select_machine", "wait_for_commissioning", "verify_ipmi_access", "mark_ready")
_ERRORS = ("BMC refused: user 'admin'; DROP TABLE servers; --", "Zeitüberschreitung nach 600 s")


def create_old_tables(connection: Connection) -> None:
    """Create the old ``servers`` and ``workflow_history`` tables and the servers' rows."""
    dialect = "mysql" if connection.dialect.name == "mariadb" else connection.dialect.name
    for statement in OLD_DDL[dialect]:
        connection.exec_driver_sql(statement)
    insert = sa.text("INSERT INTO servers (server_id, hostname) VALUES (:s, :h)")
    connection.execute(insert, [{"s": s, "h": f"node-{s}"} for s in SERVERS])


def _metadata(rng: random.Random, index: int, status: str, broken: bool) -> str | None:
    choice = rng.randrange(12)
    if choice == 0:
        return None
    if broken and choice == 1:
        return rng.choice(["{not json", "", "[truncated"])
    meta = {
        "workflow_name": "provision_server" if choice != 2 else "decommission_server",
        "description": "Provision a bare-metal server",
        "current_step_name": rng.choice(_STEPS),
        "current_step_index": rng.randrange(1, 24),
        "steps": [{"name": s, "status": "completed"} for s in _STEPS[: rng.randrange(5)]],
        "context_data": {"server_ip": f"192.0.2.{index % 250}", "note": "café ☕"},
        "errors": [rng.choice(_ERRORS)] if status == "failed" else [],
    }
    if choice == 3:
        return json.dumps(meta, indent=2, ensure_ascii=False)
    if choice == 4:
        return json.dumps(dict(reversed(meta.items())), separators=(",", ":"))
    return json.dumps(meta)


def old_rows(
    count: int, *, seed: int = 7, broken_json: bool = False, orphans: bool = False
) -> list[dict[str, Any]]:
    """*count* rows as the old system wrote them (``started_at`` absent: the column default).

    Args:
        count: how many rows.
        seed: the generator's seed.
        broken_json: include metadata that is not JSON (SQLite never checked it).
        orphans: include rows naming servers missing from ``servers`` (SQLite never enforced
            the foreign key).
    """
    rng = random.Random(seed)
    base = dt.datetime(2024, 1, 1, 8, 0, 0)
    rows = []
    for index in range(count):
        server = "srv-9999" if orphans and index % 101 == 5 else rng.choice(SERVERS)
        status = rng.choice(_STATUSES)
        started = base + dt.timedelta(hours=index * 7, seconds=rng.randrange(3600))
        if rng.randrange(3) == 0:
            started = started.replace(microsecond=rng.randrange(1_000_000))
        row: dict[str, Any] = {
            "workflow_id": f"provision_{server}",
            "server_id": server,
            "device_type": rng.choice(_DEVICES),
            "status": status,
            "started_at": started.isoformat(" " if rng.randrange(2) else "T"),
            "completed_at": None,
            "steps_completed": None if index % 97 == 0 else rng.randrange(24),
            "total_steps": 23,
            "error_message": rng.choice(_ERRORS) if status == "failed" else None,
            "metadata": _metadata(rng, index, status, broken_json),
        }
        if status != "running":
            finished = started + dt.timedelta(seconds=rng.randrange(60, 5400))
            row["completed_at"] = finished.isoformat()
        if index % 50 == 0:
            del row["started_at"]
        rows.append(row)
    return rows


def insert_old_rows(connection: Connection, rows: list[dict[str, Any]]) -> None:
    """Insert *rows* the way the old code did (explicit columns, text parameters)."""
    for row in rows:
        columns = ", ".join(row)
        values = ", ".join(f":{name}" for name in row)
        connection.execute(
            sa.text(f"INSERT INTO workflow_history ({columns}) VALUES ({values})"), row
        )


def old_values_query(dialect: str) -> str:
    """A query returning the old columns of every row in a form the upgrade must not change.

    SQLite: ``quote()`` of each value, i.e. its exact bytes and storage class. PostgreSQL:
    timestamps as wall-clock text in the session's time zone and metadata as a JSON value
    (the upgrade turns ``timestamp`` into ``timestamptz`` and ``text`` into ``jsonb``).
    MariaDB: values as the driver returns them, metadata as hex bytes.
    """
    if dialect == "sqlite":
        columns = [f"quote({name})" for name in OLD_COLUMNS]
    elif dialect == "postgresql":
        columns = [
            f"to_char({name}, 'YYYY-MM-DD HH24:MI:SS.US')" if name.endswith("_at") else name
            for name in OLD_COLUMNS
        ]
        columns[OLD_COLUMNS.index("metadata")] = "metadata::jsonb"
    else:
        columns = ["HEX(metadata)" if name == "metadata" else name for name in OLD_COLUMNS]
    return f"SELECT {', '.join(columns)} FROM workflow_history ORDER BY id"


def old_values(connection: Connection) -> list[tuple[Any, ...]]:
    """Run :func:`old_values_query` on *connection*."""
    query = old_values_query(connection.dialect.name)
    return [tuple(row) for row in connection.exec_driver_sql(query)]


def raw_old_values(url: str) -> list[tuple[Any, ...]]:
    """The old columns, read without flowtel (plain sqlite3 for SQLite)."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        with closing(sqlite3.connect(str(parsed.database))) as connection:
            return connection.execute(old_values_query("sqlite")).fetchall()
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return old_values(connection)
    finally:
        engine.dispose()


def build_old_database(
    url: str, *, count: int = 1000, broken_json: bool = True
) -> list[dict[str, Any]]:
    """The old tables with *count* old-style rows, written without flowtel.

    On SQLite some rows name servers that do not exist and, with *broken_json*, hold
    metadata that is not JSON (the old system checked neither).
    """
    sqlite = url.startswith("sqlite")
    rows = old_rows(count, broken_json=sqlite and broken_json, orphans=sqlite)
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        create_old_tables(connection)
        insert_old_rows(connection, rows)
    engine.dispose()
    return rows
