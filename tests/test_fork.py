"""Fork: a child gets its own queue, writer and pool; the parent's writer is unaffected.

The parent keeps recording workflows on a second thread while it forks (``os.fork`` or
``multiprocessing`` with the fork start method), so the fork lands while its queue holds events
and its writer may be mid-commit. Every run must end up written exactly once, by its own
process: the child's rows carry the child's pid, the parent's the parent's.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from exporters import make_engine
from exporters.db.schema import workflow_history, workflow_step_history

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("mode", ["os", "multiprocessing"])
def test_forked_children_record_their_runs_and_the_parent_keeps_writing(
    mode: str, tmp_path: Path
) -> None:
    """Children's runs with their own pid, the parent's with its pid, none twice or lost."""
    url = f"sqlite:///{tmp_path}/h.db"
    done = subprocess.run(
        [sys.executable, "-m", "tests.children", "fork", url, mode],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["flushed"] and report["writer_alive"]
    assert set(report["children"].values()) == {0}
    engine = make_engine(url)
    with engine.connect() as connection:
        runs = connection.execute(
            sa.select(
                workflow_history.c.workflow_id, workflow_history.c.pid, workflow_history.c.status
            )
        ).all()
        step_count = connection.scalar(sa.select(sa.func.count(workflow_step_history.c.id)))
    engine.dispose()
    parent = {w for w, pid, _ in runs if w.startswith("parent-")}
    children = {(w, pid) for w, pid, _ in runs if w.startswith("child-")}
    assert len(runs) == report["parent_runs"] + 5 * len(report["children"])
    assert parent == {f"parent-{n}" for n in range(report["parent_runs"])}
    assert {pid for w, pid, _ in runs if w.startswith("parent-")} == {report["parent"]}
    assert {pid for _, pid in children} == {int(pid) for pid in report["children"]}
    assert {status for *_, status in runs} == {"completed"}
    assert step_count == 3 * len(runs)
    assert report["events_dropped"] == report["write_errors"] == 0
