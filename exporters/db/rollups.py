"""Hourly to weekly rollups of the history, kept by database triggers, for fast stats.

``workflow_rollup`` counts runs per period of their start — each run four times: in its UTC
hour (``span_s`` 3600), quarter day (21600), day (86400) and week (604800), ``period`` being
whole periods since the epoch — per workflow name (``''`` for none), status and duration bucket;
``workflow_step_rollup`` counts step attempts the same way per period of their *run's* start,
workflow, step index and name, status, error type (a failed attempt's own, ``''`` for none and
for every other status: revision 0008) and duration bucket. A duration bucket is the index of
the largest lower bound in ``workflow_duration_bucket`` (:data:`BUCKET_LOWER_MS`: 0, then
``ceil(2^(k/8))`` ms) at or below the duration, ``-1`` when the row has none; a bucket is a
count, so it adds and subtracts exactly, and a percentile read from the buckets (each bucket
standing for its geometric middle, :func:`bucket_value`) is within :data:`RELATIVE_ERROR`
(4.5 %) of the exact one. Each cell also keeps the longest duration it held (``max_ms``): exact
while rows are only added, and after a deletion never more than its bucket's width (9 %) above
the truth. Triggers on both history tables (insert, delete, and an update that changes a
counted field: status, duration, start, workflow name, step index or name, error type) subtract
a row's old contribution and add its new one, so every writer — the in-process writer, ingest
replicas, spool replay, the reaper, retention, a hand-written ``UPDATE`` — keeps them right; a
step counts once its run row exists, and moves with the run. SQLite and PostgreSQL have them;
MariaDB/MySQL do not (stats read the base tables there). :func:`install` creates the triggers
and fills the rollups from the stored rows (migrations ``0007`` and ``0008`` and
:func:`exporters.db.schema.create_schema` call it).
"""

from __future__ import annotations

import bisect
import math
from typing import Any

from sqlalchemy import Connection, inspect, text

from instrumentation import attributes

__all__ = [
    "ACTIVE_RUN_STATUSES",
    "ACTIVE_STEP_STATUS",
    "BUCKETS_TABLE",
    "BUCKET_LOWER_MS",
    "ERROR_TYPE_COLUMN",
    "FAILED_STEP_STATUS",
    "NO_DURATION",
    "RELATIVE_ERROR",
    "ROLLUP_DIALECTS",
    "RUN_ROLLUP",
    "SPANS",
    "STEP_ROLLUP",
    "bucket_of",
    "bucket_value",
    "has_rollups",
    "install",
    "refill",
    "runs_counted",
    "uninstall",
]

RUN_ROLLUP = "workflow_rollup"
"""Runs per hour, quarter day, day and week, workflow, status and duration bucket."""
STEP_ROLLUP = "workflow_step_rollup"
"""Step attempts per hour, quarter day, day and week of the run's start, workflow, step,
status, error type and bucket."""
ERROR_TYPE_COLUMN = "error_type"
"""The step rollup's column of a failed attempt's error type (revision 0008)."""
BUCKETS_TABLE = "workflow_duration_bucket"
"""The lower bound (ms) of each duration bucket, read by the triggers."""
ROLLUP_DIALECTS = frozenset({"sqlite", "postgresql"})
"""The databases whose triggers keep the rollups."""
NO_DURATION = -1
"""The bucket of a row without a duration (a step or run that never recorded one)."""
ACTIVE_RUN_STATUSES: tuple[str, ...] = tuple(
    sorted(s.value for s in attributes.ACTIVE_RUN_STATUSES)
)
"""Runs in these statuses are not in the rollups: few, and read from the run table's status
index, so the writer's snapshots of a running run never touch a rollup."""
ACTIVE_STEP_STATUS: str = attributes.StepStatus.RUNNING.value
"""Step attempts in this status are not in the rollups either."""
FAILED_STEP_STATUS: str = attributes.StepStatus.FAILED.value
"""Step attempts in this status are counted per error type too."""
_RUN_COUNTS = "{row}.status NOT IN (" + ", ".join(f"'{s}'" for s in ACTIVE_RUN_STATUSES) + ")"
_STEP_COUNTS = f"{{row}}.status <> '{ACTIVE_STEP_STATUS}'"


def _lower_bounds() -> tuple[int, ...]:
    bounds = {0}
    k = 0
    while (value := math.ceil(2 ** (k / 8))) <= 2**42:  # 139 years in ms: the last, open bucket
        bounds.add(value)
        k += 1
    return tuple(sorted(bounds))


BUCKET_LOWER_MS: tuple[int, ...] = _lower_bounds()
"""Bucket *i* holds durations from ``BUCKET_LOWER_MS[i]`` ms up to (not including) the next."""


def bucket_of(duration_ms: int | None) -> int:
    """The bucket the triggers give *duration_ms* (negative durations go to bucket 0)."""
    if duration_ms is None:
        return NO_DURATION
    return max(0, bisect.bisect_right(BUCKET_LOWER_MS, duration_ms) - 1)


def bucket_value(bucket: int) -> float:
    """The value a bucket stands for: the geometric middle of the whole milliseconds it holds."""
    low = BUCKET_LOWER_MS[bucket]
    if bucket + 1 >= len(BUCKET_LOWER_MS) or low == 0:
        return float(low)
    high = BUCKET_LOWER_MS[bucket + 1] - 1  # durations are whole milliseconds
    return math.sqrt(low * high)


RELATIVE_ERROR: float = max(
    max(bucket_value(b) / BUCKET_LOWER_MS[b], (BUCKET_LOWER_MS[b + 1] - 1) / bucket_value(b)) - 1
    for b in range(1, len(BUCKET_LOWER_MS) - 1)
)
"""The most a bucket's value differs from a duration it holds, relative (about 4.4 %)."""

# --- SQL pieces, per dialect: the period of a row's start, and a duration's bucket ----------

SPANS: tuple[int, ...] = (3600, 21600, 86400, 604800)
"""The lengths (s) of the periods each row is counted in: its hour, quarter day (6 h), day and
week (UTC; weeks from the epoch, a Thursday). Ascending, each a multiple of the one before: a
reader covers a window with the longest that fit, so a 7-day window reads at most 5 hours and
3 quarter days of finer cells at each edge, and a 90-day window mostly weeks."""
_RUN_KEY = "(span_s, period, workflow_name, status, bucket)"
_STEP_KEY = "(span_s, period, workflow_name, step_index, step_name, status, error_type, bucket)"


def _period(dialect: str, started: str, span: int | str) -> str:
    """The index of the *span*-long period holding the timestamp *started* (epoch-aligned)."""
    if dialect == "postgresql":
        return f"floor(extract(epoch FROM {started}) / {span})::bigint"
    return f"(CAST(strftime('%s', {started}) AS INTEGER) / {span})"


def _bucket(dialect: str, row: str) -> str:
    if dialect == "postgresql":
        return f"workflow_duration_bucket_of({row}.duration_ms)"
    return (
        f"CASE WHEN {row}.duration_ms IS NULL THEN {NO_DURATION} ELSE COALESCE((SELECT bucket "
        f"FROM {BUCKETS_TABLE} WHERE lower_ms <= {row}.duration_ms "
        "ORDER BY lower_ms DESC LIMIT 1), 0) END"
    )


def _error(row: str) -> str:
    """The error type a step row is counted under: its own when it failed (``''`` for none),
    ``''`` in any other status."""
    return (
        f"CASE WHEN {row}.status = '{FAILED_STEP_STATUS}' THEN COALESCE({row}.error_type, '') "
        "ELSE '' END"
    )


def _greatest(dialect: str, table: str) -> str:
    if dialect == "postgresql":
        return f"GREATEST({table}.max_ms, EXCLUDED.max_ms)"
    return (  # SQLite's max(a, b) is NULL when either is
        "CASE WHEN excluded.max_ms IS NULL THEN max_ms WHEN max_ms IS NULL "
        "OR excluded.max_ms > max_ms THEN excluded.max_ms ELSE max_ms END"
    )


def _add_steps(d: str, started: str, name: str, run_id: str, when: str = "TRUE") -> list[str]:
    """Add every step row of *run_id* under (*started*'s periods, *name*), if *when* holds."""
    return [
        f"INSERT INTO {STEP_ROLLUP} {_STEP_KEY[:-1]}, attempts, max_ms) "
        f"SELECT {span}, {_period(d, started, span)}, {name}, s.step_index, s.step_name, "
        f"s.status, {_error('s')}, {_bucket(d, 's')}, COUNT(*), MAX(s.duration_ms) "
        f"FROM workflow_step_history s WHERE s.run_id = {run_id} AND {started} IS NOT NULL "
        f"AND {_STEP_COUNTS.format(row='s')} "
        f"AND {when} GROUP BY s.step_index, s.step_name, s.status, 7, 8 "
        f"ON CONFLICT {_STEP_KEY} DO UPDATE SET attempts = {STEP_ROLLUP}.attempts + "
        f"excluded.attempts, max_ms = {_greatest(d, STEP_ROLLUP)}"
        for span in SPANS
    ]


def _subtract_steps(d: str, started: str, name: str, run_id: str, when: str = "TRUE") -> list[str]:
    """Subtract every step row of *run_id* from (*started*'s periods, *name*), then drop the
    emptied cells."""
    grouped = (
        f"SELECT step_index, step_name, status, {_error('s')} AS error_type, "
        f"{_bucket(d, 's')} AS bucket, COUNT(*) AS n FROM workflow_step_history s "
        f"WHERE s.run_id = {run_id} AND {_STEP_COUNTS.format(row='s')} "
        "GROUP BY step_index, step_name, status, 4, 5"
    )
    statements = []
    for span in SPANS:
        period = _period(d, started, span)
        cell = f"span_s = {span} AND period = {period} AND workflow_name = {name}"
        statements += [
            f"UPDATE {STEP_ROLLUP} SET attempts = {STEP_ROLLUP}.attempts - g.n FROM ({grouped}) "
            f"AS g WHERE {cell} AND {when} "
            f"AND {STEP_ROLLUP}.step_index = g.step_index "
            f"AND {STEP_ROLLUP}.step_name = g.step_name AND {STEP_ROLLUP}.status = g.status "
            f"AND {STEP_ROLLUP}.error_type = g.error_type AND {STEP_ROLLUP}.bucket = g.bucket",
            f"DELETE FROM {STEP_ROLLUP} WHERE {cell} AND attempts <= 0 AND {when}",
        ]
    return statements


def _run_cell(d: str, row: str, span: int) -> str:
    return (
        f"span_s = {span} AND period = {_period(d, f'{row}.started_at', span)} "
        f"AND workflow_name = COALESCE({row}.workflow_name, '') "
        f"AND status = {row}.status AND bucket = {_bucket(d, row)} "
        f"AND {_RUN_COUNTS.format(row=row)}"
    )


_SQLITE_SPANS = "(" + " UNION ALL ".join(f"SELECT {span} AS span" for span in SPANS) + ") AS p"


def _add_run(d: str, row: str) -> list[str]:
    """Count the run *row* in each of its periods: one statement (SQLite)."""
    period = _period(d, f"{row}.started_at", "p.span")
    return [
        f"INSERT INTO {RUN_ROLLUP} {_RUN_KEY[:-1]}, runs, max_ms) "
        f"SELECT p.span, {period}, COALESCE({row}.workflow_name, ''), {row}.status, "
        f"{_bucket(d, row)}, 1, {row}.duration_ms FROM {_SQLITE_SPANS} "
        f"WHERE {_RUN_COUNTS.format(row=row)} AND {period} IS NOT NULL "
        f"ON CONFLICT {_RUN_KEY} DO UPDATE SET runs = {RUN_ROLLUP}.runs + 1, "
        f"max_ms = {_greatest(d, RUN_ROLLUP)}"
    ]


def _subtract_run(d: str, row: str) -> list[str]:
    statements = []
    for span in SPANS:
        cell = _run_cell(d, row, span)
        statements += [
            f"UPDATE {RUN_ROLLUP} SET runs = runs - 1 WHERE {cell}",
            f"DELETE FROM {RUN_ROLLUP} WHERE {cell} AND runs <= 0",
        ]
    return statements


def _step_cell(d: str, row: str, started: str, name: str, span: int) -> str:
    return (
        f"span_s = {span} AND period = {_period(d, started, span)} AND workflow_name = {name} "
        f"AND step_index = {row}.step_index AND step_name = {row}.step_name "
        f"AND status = {row}.status AND error_type = {_error(row)} AND bucket = {_bucket(d, row)} "
        f"AND {_STEP_COUNTS.format(row=row)}"
    )


def _add_step(d: str, row: str) -> list[str]:
    """Count the step *row* in each period of its run's start: one statement (SQLite)."""
    period = _period(d, "r.started_at", "p.span")
    return [
        f"INSERT INTO {STEP_ROLLUP} {_STEP_KEY[:-1]}, attempts, max_ms) "
        f"SELECT p.span, {period}, COALESCE(r.workflow_name, ''), {row}.step_index, "
        f"{row}.step_name, {row}.status, {_error(row)}, {_bucket(d, row)}, 1, {row}.duration_ms "
        f"FROM workflow_history r, {_SQLITE_SPANS} WHERE r.run_id = {row}.run_id "
        f"AND {period} IS NOT NULL AND {_STEP_COUNTS.format(row=row)} "
        f"ON CONFLICT {_STEP_KEY} DO UPDATE SET attempts = {STEP_ROLLUP}.attempts + 1, "
        f"max_ms = {_greatest(d, STEP_ROLLUP)}"
    ]


def _subtract_step(d: str, row: str, started: str, name: str) -> list[str]:
    statements = []
    for span in SPANS:
        cell = _step_cell(d, row, started, name, span)
        statements += [
            f"UPDATE {STEP_ROLLUP} SET attempts = attempts - 1 WHERE {cell}",
            f"DELETE FROM {STEP_ROLLUP} WHERE {cell} AND attempts <= 0",
        ]
    return statements


_RUN_COUNTED = ("status", "duration_ms", "started_at", "workflow_name")
_STEP_COUNTED = ("status", "duration_ms", "step_index", "step_name", "run_id", "error_type")
_TRIGGERS = (
    ("workflow_rollup_run_insert", "workflow_history"),
    ("workflow_rollup_run_update", "workflow_history"),
    ("workflow_rollup_run_delete", "workflow_history"),
    ("workflow_rollup_step_insert", "workflow_step_history"),
    ("workflow_rollup_step_update", "workflow_step_history"),
    ("workflow_rollup_step_delete", "workflow_step_history"),
    ("workflow_rollup_run_update_add", "workflow_history"),  # SQLite's one trigger per effect
    ("workflow_rollup_run_move", "workflow_history"),
    ("workflow_rollup_step_update_add", "workflow_step_history"),
)


def _changed(columns: tuple[str, ...], distinct: str) -> str:
    return " OR ".join(f"OLD.{c} {distinct} NEW.{c}" for c in columns)


def _body(statements: list[str]) -> str:
    return " ".join(f"{statement};" for statement in statements)


def _sqlite_triggers() -> list[str]:
    d = "sqlite"
    old_name, new_name = "COALESCE(OLD.workflow_name, '')", "COALESCE(NEW.workflow_name, '')"
    moved = "(OLD.started_at IS NOT NEW.started_at OR OLD.workflow_name IS NOT NEW.workflow_name)"
    run_of = "(SELECT {what} FROM workflow_history r WHERE r.run_id = OLD.run_id)"
    old_started = run_of.format(what="r.started_at")
    old_run_name = run_of.format(what="COALESCE(r.workflow_name, '')")
    step_add = _add_step(d, "NEW")
    step_sub = _subtract_step(d, "OLD", old_started, old_run_name)
    run_sub = _subtract_run(d, "OLD")
    run_changed = f"ON workflow_history WHEN ({_changed(_RUN_COUNTED, 'IS NOT')})"
    step_changed = f"ON workflow_step_history WHEN ({_changed(_STEP_COUNTED, 'IS NOT')})"
    run_update = f"AFTER UPDATE OF {', '.join(_RUN_COUNTED)} {run_changed}"
    step_update = f"AFTER UPDATE OF {', '.join(_STEP_COUNTED)} {step_changed}"
    # One trigger per effect, each guarded by its own WHEN: a running row's update skips them.
    return [
        "CREATE TRIGGER workflow_rollup_run_insert AFTER INSERT ON workflow_history BEGIN "
        f"{_body(_add_run(d, 'NEW') + _add_steps(d, 'NEW.started_at', new_name, 'NEW.run_id'))}"
        " END",
        f"CREATE TRIGGER workflow_rollup_run_update {run_update} "
        f"AND {_RUN_COUNTS.format(row='OLD')} BEGIN {_body(run_sub)} END",
        f"CREATE TRIGGER workflow_rollup_run_update_add {run_update} "
        f"AND {_RUN_COUNTS.format(row='NEW')} BEGIN {_body(_add_run(d, 'NEW'))} END",
        f"CREATE TRIGGER workflow_rollup_run_move {run_update} AND {moved} BEGIN "
        + _body(
            _subtract_steps(d, "OLD.started_at", old_name, "OLD.run_id")
            + _add_steps(d, "NEW.started_at", new_name, "NEW.run_id")
        )
        + " END",
        "CREATE TRIGGER workflow_rollup_run_delete AFTER DELETE ON workflow_history BEGIN "
        f"{_body(run_sub + _subtract_steps(d, 'OLD.started_at', old_name, 'OLD.run_id'))} END",
        "CREATE TRIGGER workflow_rollup_step_insert AFTER INSERT ON workflow_step_history "
        f"WHEN {_STEP_COUNTS.format(row='NEW')} BEGIN {_body(step_add)} END",
        f"CREATE TRIGGER workflow_rollup_step_update {step_update} "
        f"AND {_STEP_COUNTS.format(row='OLD')} BEGIN {_body(step_sub)} END",
        f"CREATE TRIGGER workflow_rollup_step_update_add {step_update} "
        f"AND {_STEP_COUNTS.format(row='NEW')} BEGIN {_body(step_add)} END",
        "CREATE TRIGGER workflow_rollup_step_delete AFTER DELETE ON workflow_step_history "
        f"WHEN {_STEP_COUNTS.format(row='OLD')} BEGIN {_body(step_sub)} END",
    ]


_PG_SPANS = "(VALUES " + ", ".join(f"({span})" for span in SPANS) + ") AS p(span)"
_PG_PERIOD = "floor(extract(epoch FROM d.started_at) / p.span)::bigint"


def _pg_apply(table: str, count: str, columns: tuple[str, ...], delta: str) -> list[str]:
    """Add the signed rows of *delta* (``started_at, workflow_name, <columns>, bucket, ms,
    k``) to *table* in each period, then drop the cells they emptied."""
    keys = ", ".join(f"d.{c}" for c in columns)
    cell = " AND ".join(f"r.{c} = c.{c}" for c in ("workflow_name", *columns, "bucket"))
    key_list = f"(span_s, period, workflow_name, {', '.join(columns)}, bucket)"
    grouped = ", ".join(str(n) for n in range(1, len(columns) + 5))
    return [
        f"INSERT INTO {table} {key_list[:-1]}, {count}, max_ms) SELECT p.span, {_PG_PERIOD}, "
        f"d.workflow_name, {keys}, d.bucket, SUM(d.k), MAX(CASE WHEN d.k > 0 THEN d.ms END) "
        f"FROM ({delta}) AS d CROSS JOIN {_PG_SPANS} WHERE d.started_at IS NOT NULL "
        f"GROUP BY {grouped} ORDER BY {grouped} "  # cells locked in one order: no deadlock
        f"ON CONFLICT {key_list} DO UPDATE SET {count} = {table}.{count} + "
        f"EXCLUDED.{count}, max_ms = GREATEST({table}.max_ms, EXCLUDED.max_ms)",
        f"DELETE FROM {table} r USING (SELECT DISTINCT p.span, {_PG_PERIOD} AS period, "
        f"d.workflow_name, {keys}, d.bucket FROM ({delta}) AS d CROSS JOIN {_PG_SPANS} "
        f"WHERE d.started_at IS NOT NULL AND d.k < 0) AS c WHERE r.span_s = c.span "
        f"AND r.period = c.period AND {cell} AND r.{count} <= 0",
    ]


def _pg_runs(row: str, k: int, source: str, where: str = "TRUE") -> str:
    return (
        f"SELECT {row}.started_at, COALESCE({row}.workflow_name, '') AS workflow_name, "
        f"{row}.status, workflow_duration_bucket_of({row}.duration_ms) AS bucket, "
        f"{row}.duration_ms AS ms, {k} AS k FROM {source} WHERE {where} "
        f"AND {_RUN_COUNTS.format(row=row)}"
    )


def _pg_steps_of_runs(row: str, k: int, source: str, where: str = "TRUE") -> str:
    return (
        f"SELECT {row}.started_at, COALESCE({row}.workflow_name, '') AS workflow_name, "
        f"s.step_index, s.step_name, s.status, {_error('s')} AS error_type, "
        "workflow_duration_bucket_of(s.duration_ms) AS bucket, "
        f"s.duration_ms AS ms, {k} AS k FROM {source} "
        f"JOIN workflow_step_history s ON s.run_id = {row}.run_id WHERE {where} "
        f"AND {_STEP_COUNTS.format(row='s')}"
    )


def _pg_steps(row: str, k: int, source: str, where: str = "TRUE") -> str:
    return (
        "SELECT r.started_at, COALESCE(r.workflow_name, '') AS workflow_name, "
        f"{row}.step_index, {row}.step_name, {row}.status, {_error(row)} AS error_type, "
        f"workflow_duration_bucket_of({row}.duration_ms) AS bucket, {row}.duration_ms AS ms, "
        f"{k} AS k FROM {source} JOIN workflow_history r ON r.run_id = {row}.run_id "
        f"WHERE {where} AND {_STEP_COUNTS.format(row=row)}"
    )


_PG_PAIRS = "old_rows o JOIN new_rows n ON n.id = o.id"
_PG_NEW_RUNS = "new_rows n JOIN workflow_history w ON w.id = n.id"
_PG_EARLIER_STEPS = "NOT (s.xmin = w.xmin AND s.cmin = w.cmin)"
"""Steps written before their run's insert: those the run's own statement wrote (the writer's
one-statement batch, ``WITH runs AS (...) INSERT INTO workflow_step_history ...``) are counted
by the steps' trigger, which sees the run at the statement's end."""


def _pg_differ(columns: tuple[str, ...]) -> str:
    return "(" + " OR ".join(f"o.{c} IS DISTINCT FROM n.{c}" for c in columns) + ")"


def _postgres_objects() -> list[str]:
    """Statement-level triggers over transition tables: one set-based statement per batch."""
    step_columns = ("step_index", "step_name", "status", "error_type")
    runs_changed = _pg_differ(_RUN_COUNTED)
    moved = _pg_differ(("started_at", "workflow_name"))
    steps_changed = _pg_differ(_STEP_COUNTED)

    def runs(delta: str) -> str:
        return _body(_pg_apply(RUN_ROLLUP, "runs", ("status",), delta))

    def steps(delta: str) -> str:
        return _body(_pg_apply(STEP_ROLLUP, "attempts", step_columns, delta))

    def both(build: Any, where: str) -> str:
        return f"{build('o', -1, _PG_PAIRS, where)} UNION ALL {build('n', 1, _PG_PAIRS, where)}"

    bounds = "{" + ",".join(map(str, BUCKET_LOWER_MS)) + "}"
    bucket_sql = (  # a binary search in C, inlined into the query: no lookup per row
        f"SELECT CASE WHEN ms IS NULL THEN {NO_DURATION} "
        f"ELSE GREATEST(width_bucket(ms, '{bounds}'::bigint[]) - 1, 0) END"
    )
    return [
        "CREATE OR REPLACE FUNCTION workflow_duration_bucket_of(ms bigint) RETURNS integer "
        f"LANGUAGE sql IMMUTABLE AS $$ {bucket_sql} $$",
        "CREATE OR REPLACE FUNCTION workflow_rollup_runs() RETURNS trigger LANGUAGE plpgsql AS $$"
        " BEGIN IF TG_OP = 'INSERT' THEN"
        f" {runs(_pg_runs('n', 1, 'new_rows n'))}"
        f" {steps(_pg_steps_of_runs('n', 1, _PG_NEW_RUNS, _PG_EARLIER_STEPS))}"
        " ELSIF TG_OP = 'DELETE' THEN"
        f" {runs(_pg_runs('o', -1, 'old_rows o'))}"
        f" {steps(_pg_steps_of_runs('o', -1, 'old_rows o'))}"
        f" ELSIF EXISTS (SELECT 1 FROM {_PG_PAIRS} WHERE {runs_changed}) THEN"
        f" {runs(both(_pg_runs, runs_changed))}"
        f" IF EXISTS (SELECT 1 FROM {_PG_PAIRS} WHERE {moved}) THEN"
        f" {steps(both(_pg_steps_of_runs, moved))}"
        " END IF; END IF; RETURN NULL; END $$",
        "CREATE OR REPLACE FUNCTION workflow_rollup_steps() RETURNS trigger LANGUAGE plpgsql"
        " AS $$ BEGIN IF TG_OP = 'INSERT' THEN"
        f" {steps(_pg_steps('n', 1, 'new_rows n'))}"
        " ELSIF TG_OP = 'DELETE' THEN"
        f" {steps(_pg_steps('o', -1, 'old_rows o'))}"
        f" ELSIF EXISTS (SELECT 1 FROM {_PG_PAIRS} WHERE {steps_changed}) THEN"
        f" {steps(both(_pg_steps, steps_changed))}"
        " END IF; RETURN NULL; END $$",
        "CREATE TRIGGER workflow_rollup_run_insert AFTER INSERT ON workflow_history"
        " REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT"
        " EXECUTE FUNCTION workflow_rollup_runs()",
        "CREATE TRIGGER workflow_rollup_run_update AFTER UPDATE ON workflow_history"
        " REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT"
        " EXECUTE FUNCTION workflow_rollup_runs()",
        "CREATE TRIGGER workflow_rollup_run_delete AFTER DELETE ON workflow_history"
        " REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT"
        " EXECUTE FUNCTION workflow_rollup_runs()",
        "CREATE TRIGGER workflow_rollup_step_insert AFTER INSERT ON workflow_step_history"
        " REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT"
        " EXECUTE FUNCTION workflow_rollup_steps()",
        "CREATE TRIGGER workflow_rollup_step_update AFTER UPDATE ON workflow_step_history"
        " REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT"
        " EXECUTE FUNCTION workflow_rollup_steps()",
        "CREATE TRIGGER workflow_rollup_step_delete AFTER DELETE ON workflow_step_history"
        " REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT"
        " EXECUTE FUNCTION workflow_rollup_steps()",
    ]


def _drop_triggers(connection: Connection) -> None:
    postgres = connection.dialect.name == "postgresql"
    for trigger, table in _TRIGGERS:
        on = f" ON {table}" if postgres else ""
        connection.execute(text(f"DROP TRIGGER IF EXISTS {trigger}{on}"))


def refill(connection: Connection) -> None:
    """Recompute both rollups from the stored rows (one ``INSERT ... SELECT`` per table and
    period length)."""
    d = connection.dialect.name
    connection.execute(text(f"DELETE FROM {RUN_ROLLUP}"))
    connection.execute(text(f"DELETE FROM {STEP_ROLLUP}"))
    for span in SPANS:
        period = _period(d, "h.started_at", span)
        connection.execute(
            text(
                f"INSERT INTO {RUN_ROLLUP} {_RUN_KEY[:-1]}, runs, max_ms) SELECT {span}, {period}, "
                f"COALESCE(h.workflow_name, ''), h.status, {_bucket(d, 'h')}, COUNT(*), "
                f"MAX(h.duration_ms) FROM workflow_history h WHERE {period} IS NOT NULL "
                f"AND {_RUN_COUNTS.format(row='h')} GROUP BY 2, 3, 4, 5 ORDER BY 2, 3, 4, 5"
            )
        )
        connection.execute(
            text(
                f"INSERT INTO {STEP_ROLLUP} {_STEP_KEY[:-1]}, attempts, max_ms) SELECT {span}, "
                f"{period}, COALESCE(h.workflow_name, ''), s.step_index, s.step_name, s.status, "
                f"{_error('s')}, {_bucket(d, 's')}, COUNT(*), MAX(s.duration_ms) "
                "FROM workflow_history h JOIN workflow_step_history s ON s.run_id = h.run_id "
                f"WHERE {period} IS NOT NULL AND {_STEP_COUNTS.format(row='s')} "
                # stored by period, as the triggers store them
                "GROUP BY 2, 3, 4, 5, 6, 7, 8 ORDER BY 2, 3, 4, 5, 6, 7, 8"
            )
        )


def install(connection: Connection) -> None:
    """Create the triggers of *connection*'s database and fill the rollups from its rows.

    The three tables must exist (:mod:`exporters.db.schema` defines them). Runs inside the
    caller's transaction; on MariaDB/MySQL it does nothing (their stats read the base tables).
    """
    d = connection.dialect.name
    if d not in ROLLUP_DIALECTS:
        return
    _drop_triggers(connection)
    connection.execute(text(f"DELETE FROM {BUCKETS_TABLE}"))
    connection.execute(
        text(f"INSERT INTO {BUCKETS_TABLE} (lower_ms, bucket) VALUES (:lower_ms, :bucket)"),
        [{"lower_ms": low, "bucket": i} for i, low in enumerate(BUCKET_LOWER_MS)],
    )
    if d == "postgresql":  # filling reads every row once: longer than a query may take
        connection.execute(text("SET LOCAL statement_timeout = 0"))
    for statement in _postgres_objects() if d == "postgresql" else _sqlite_triggers():
        connection.execute(text(statement))
    refill(connection)


def uninstall(connection: Connection) -> None:
    """Drop the triggers (and PostgreSQL's functions); the caller drops the tables."""
    _drop_triggers(connection)
    if connection.dialect.name == "postgresql":
        for function in ("workflow_rollup_runs()", "workflow_rollup_steps()"):
            connection.execute(text(f"DROP FUNCTION IF EXISTS {function}"))
        connection.execute(text("DROP FUNCTION IF EXISTS workflow_duration_bucket_of(bigint)"))


def runs_counted(connection: Connection) -> int:
    """How many runs the rollups count (each once: their hours), for the upgrade's notes."""
    hours = text(f"SELECT COALESCE(SUM(runs), 0) FROM {RUN_ROLLUP} WHERE span_s = {SPANS[0]}")
    return int(connection.execute(hours).scalar() or 0)


def has_rollups(connection: Connection) -> bool:
    """Whether *connection*'s database keeps the rollups this module reads: revision 0008 on
    SQLite and PostgreSQL (a database still at 0007 keeps neither weeks nor error types)."""
    if connection.dialect.name not in ROLLUP_DIALECTS:
        return False
    inspector = inspect(connection)
    if not inspector.has_table(STEP_ROLLUP):
        return False
    return any(c["name"] == ERROR_TYPE_COLUMN for c in inspector.get_columns(STEP_ROLLUP))
