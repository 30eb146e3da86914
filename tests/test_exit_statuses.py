"""Every command ends with one line and a documented exit status, never a traceback.

The statuses (``exporters.cli.exit_status.ExitStatus``): 0 done, 1 the answer is no, 2 usage
error, 3 history database unavailable, 130 interrupted. Covered here: an out-of-range
``--limit``, a run reference that is not text, an unwritable SQLite directory (also through
``configure()``), ``db prune --status`` with a status that does not exist, the demo's hints
and time estimate, and the demo with the collector down.
"""

from __future__ import annotations

import datetime as dt
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy.engine import make_url

from exporters.cli import main
from exporters.db.engine import make_engine
from exporters.db.schema import create_schema
from exporters.errors import DatabaseFileError, FlowtelError
from exporters.ops.retention import prune

from .test_cli import ROOT, seed
from .test_queries import T0, add, run_row

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX paths and file modes")


def flowtel(
    *args: str | bytes, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the command line in a child process, as a shell would (arguments may be bytes)."""
    environ = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    environ.pop("FLOWTEL_DATABASE_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "exporters.cli", *args],
        capture_output=True,
        text=True,
        errors="replace",
        cwd=ROOT,
        env=environ,
        timeout=120,
        check=False,
    )


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    """The error output, asserted to be a usage block or one line, never a traceback."""
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
    return done.stderr


@pytest.fixture
def db(tmp_path: Path) -> str:
    """A SQLite history with the failed and completed runs of test_cli."""
    url = f"sqlite:///{tmp_path / 'exit.db'}"
    engine = make_engine(url)
    create_schema(engine)
    seed(engine)
    engine.dispose()
    return url


@pytest.mark.parametrize("command", ["runs", "tail"])
def test_an_out_of_range_limit_is_a_usage_error(db: str, command: str) -> None:
    """--limit 99999999999999999999 is refused with status 2, not clamped or a traceback."""
    extra = ["--once"] if command == "tail" else []
    done = flowtel(command, "--limit", "99999999999999999999", "--db", db, *extra)
    assert done.returncode == 2
    assert "--limit" in one_line_error(done)


def test_a_run_reference_that_is_not_text_is_one_line(db: str) -> None:
    """show with bytes that are not UTF-8 ends with one line and status 2."""
    done = flowtel("show", b"\xff\xfe", "--db", db)
    assert done.returncode == 2
    assert "not valid UTF-8" in one_line_error(done)


def test_a_filter_that_is_not_text_is_one_line(db: str) -> None:
    """runs --workflow with bytes that are not UTF-8 ends with one line and status 2."""
    done = flowtel("runs", "--workflow", b"\xff\xfe", "--db", db)
    assert (done.returncode, "not valid UTF-8" in one_line_error(done)) == (2, True)


@pytest.mark.parametrize("driver", ["postgresql+psycopg", "mysql+pymysql"])
def test_a_host_name_the_resolver_refuses_is_one_line(driver: str) -> None:
    """A host label over 63 characters is a database that cannot be reached: status 3."""
    done = flowtel("runs", "--db", f"{driver}://u:s3cret@{'a' * 70}.example/x")
    assert done.returncode == 3
    error = one_line_error(done)
    assert ("cannot use the history database" in error, "s3cret" in error) == (True, False)


def _unwritable_directory(tmp_path: Path) -> Path:
    """A directory this process cannot create files in (root ignores modes: use /sys)."""
    if os.geteuid() == 0:
        return Path("/sys/flowtel-unwritable")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    return locked / "sub"


def test_demo_on_an_unwritable_directory_exits_3(tmp_path: Path) -> None:
    """demo --db sqlite:///<unwritable>/x.db: one line naming the file, status 3."""
    path = _unwritable_directory(tmp_path) / "x.db"
    done = flowtel("demo", "--runs", "1", "--step-delay", "0", "--db", f"sqlite:///{path}")
    assert done.returncode == 3
    error = one_line_error(done)
    assert str(path) in error
    assert "cannot create" in error


def test_configure_on_an_unwritable_directory_raises_a_flowtel_error(tmp_path: Path) -> None:
    """configure() raises DatabaseFileError (a FlowtelError and an OSError), not PermissionError."""
    from exporters import configure

    path = _unwritable_directory(tmp_path) / "x.db"
    with pytest.raises(DatabaseFileError) as caught:
        configure(database_url=f"sqlite:///{path}", otlp=False, metrics=False, logs=False)
    assert isinstance(caught.value, FlowtelError)
    assert isinstance(caught.value, OSError)
    assert caught.value.errno is not None
    assert str(caught.value).startswith(f"cannot create the SQLite history database {path}: ")


def test_prune_accepts_only_real_statuses(db: str) -> None:
    """A typo in --status is a usage error (2) that deletes nothing."""
    runner = CliRunner()
    base = ["db", "prune", "--db", db, "--older-than", "1d"]
    typo = runner.invoke(main, [*base, "--status", "complted"])
    assert typo.exit_code == 2
    assert "completed" in typo.output  # the choices are listed
    kept = runner.invoke(main, ["runs", "--db", db, "--json"])
    assert kept.output.count('"run_id"') == 2


def test_prune_says_how_to_reclaim_disk_space_on_sqlite(db: str) -> None:
    """After deleting, prune on SQLite names VACUUM; a dry run does not."""
    runner = CliRunner()
    base = ["db", "prune", "--db", db, "--older-than", "1d"]
    dry = runner.invoke(main, [*base, "--dry-run"])
    done = runner.invoke(main, base)
    assert (dry.exit_code, done.exit_code) == (0, 0)
    assert "VACUUM" not in dry.output
    assert "Deleted 2 runs" in done.output
    assert "VACUUM" in done.output


def test_prune_shows_progress_on_a_terminal(tmp_path: Path) -> None:
    """On a terminal prune draws a rich progress bar on stderr while it deletes."""
    from exporters.cli.db import prune_progress

    url = f"sqlite:///{tmp_path / 'many.db'}"
    engine = make_engine(url)
    create_schema(engine)
    add(engine, [run_row(f"old-{n:04d}", workflow_id=f"wf-{n}", started_at=T0) for n in range(30)])
    engine.dispose()
    seen: list[tuple[int, int]] = []
    with prune_progress(30, force_terminal=True) as advance:
        engine = make_engine(url)
        result = prune(
            engine,
            dt.timedelta(days=1),
            batch_size=7,
            progress=lambda runs, steps: (seen.append((runs, steps)), advance(runs)),
        )
        engine.dispose()
    assert result.runs_deleted == 30
    assert [runs for runs, _ in seen] == [7, 14, 21, 28, 30]


def test_demo_next_hints_are_copy_pasteable(tmp_path: Path) -> None:
    """The Next: commands carry the --db URL as given (quoted for the shell), never masked."""
    url = f"sqlite:///{tmp_path / 'demo db.db'}"
    done = flowtel("demo", "--runs", "3", "--step-delay", "0", "--failure-rate", "1", "--db", url)
    assert done.returncode == 0, done.stderr
    hints = done.stdout.split("Next:")[1].strip().splitlines()
    assert hints and all(f"--db {shlex.quote(url)}" in line for line in hints), hints
    assert "***" not in done.stdout


def test_demo_hints_for_a_url_with_a_password_use_the_variable() -> None:
    """A URL with a password is neither masked nor echoed: the hints use $FLOWTEL_DATABASE_URL."""
    from exporters.cli.demo import db_argument

    url = "postgresql+psycopg://flowtel:s3cret@127.0.0.1/flowtel"
    assert db_argument(url) == ' --db "$FLOWTEL_DATABASE_URL"'
    assert db_argument("sqlite:///x y.db") == " --db 'sqlite:///x y.db'"
    assert db_argument(None) == ""


def test_a_long_demo_says_how_long_it_will_take(tmp_path: Path) -> None:
    """demo --runs 2000 announces its duration and suggests --step-delay 0."""
    from exporters.cli.demo import duration_notice

    notice = duration_notice(2000, 0.005)
    assert notice is not None
    assert "--step-delay 0" in notice
    assert "5m 00s" in notice
    assert duration_notice(20, 0.005) is None
    assert duration_notice(2000, 0.0) is None


def test_demo_with_the_collector_down_reports_instead_of_dumping(tmp_path: Path) -> None:
    """No raw SDK export errors on the terminal: one line counting the failed exports."""
    url = f"sqlite:///{tmp_path / 'otlp.db'}"
    done = flowtel(
        "demo",
        "--runs",
        "2",
        "--step-delay",
        "0",
        "--db",
        url,
        env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "FLOWTEL_OTLP_TIMEOUT": "1",
        },
    )
    assert done.returncode == 0, done.stderr
    assert '"event"' not in done.stderr  # no structured log record of the SDK
    exports = [line for line in done.stderr.splitlines() if "export" in line.lower()]
    assert len(exports) == 1, done.stderr
    assert "OTLP export failed" in exports[0]
    assert "every run is in the history database" in exports[0]


def test_demo_on_a_server_database_hints_with_the_variable(db_url: str) -> None:
    """With a password in --db, the hints name $FLOWTEL_DATABASE_URL: no password, no ***."""
    done = flowtel(
        "demo", "--runs", "2", "--step-delay", "0", "--failure-rate", "1", "--db", db_url
    )
    assert done.returncode == 0, done.stderr
    hints = done.stdout.split("Next:")[1]
    password = make_url(db_url).password
    if password is None:  # the SQLite case: the URL as given
        assert f"--db {shlex.quote(db_url)}" in hints
        return
    assert hints.count('--db "$FLOWTEL_DATABASE_URL"') == 3  # runs, show, serve
    assert "FLOWTEL_DATABASE_URL set to the URL you gave --db" in hints
    assert f":{password}@" not in done.stdout + done.stderr
    assert "***" not in hints


def test_ctrl_c_ends_a_command_with_130(tmp_path: Path) -> None:
    """SIGINT during a long demo: 'Interrupted.' on stderr, status 130, no traceback."""
    url = f"sqlite:///{tmp_path / 'interrupted.db'}"
    environ = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "exporters.cli", "demo", "--runs", "100000", "--db", url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=environ,
    )
    assert process.stderr is not None
    first = process.stderr.readline()  # the duration notice: the demo is under way
    assert "--step-delay 0" in first
    time.sleep(1.0)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == "Interrupted."


def test_demo_ends_by_suggesting_flowtel_serve(tmp_path: Path) -> None:
    """The last Next: hint opens the web view on the same database."""
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    done = flowtel("demo", "--runs", "2", "--step-delay", "0", "--db", url)
    assert done.returncode == 0, done.stderr
    last = done.stdout.split("Next:")[1].strip().splitlines()[-1]
    assert last.strip().startswith(f"flowtel serve --db {shlex.quote(url)}"), last
    assert "http://127.0.0.1:8765/" in last
