"""A process that calls ``configure()`` the moment a start file appears, then records runs.

Run as ``python -m tests.concurrent_start URL START_FILE PREFIX RUNS``: it waits (polling) for
START_FILE so that several such processes call ``configure()`` at the same moment on a database
that may not exist yet, records RUNS one-step workflows, shuts down and prints one JSON line:
``{"configured": true, "error": null, "runs": RUNS, ...}`` with the writer's counters, or the
exception ``configure()`` raised (then exit status 1).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import exporters
from instrumentation import workflow_run


def main() -> int:
    url, start_file, prefix, runs = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    deadline = time.monotonic() + 60
    while not start_file.exists() and time.monotonic() < deadline:
        time.sleep(0.001)
    try:
        handle = exporters.configure(
            database_url=url, otlp=False, metrics=False, logs=False, service_name=prefix
        )
    except Exception as exc:  # reported: the test asserts there is none
        print(json.dumps({"configured": False, "error": f"{type(exc).__name__}: {exc}"}))
        return 1
    for n in range(runs):
        with workflow_run("start_race", workflow_id=f"{prefix}-{n}") as run, run.step("only"):
            pass
    flushed = handle.force_flush(120_000)  # a loaded machine: generous
    stats = dict(getattr(handle.processor, "stats", {}))
    handle.shutdown()
    print(json.dumps({"configured": True, "error": None, "flushed": flushed, **stats}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
