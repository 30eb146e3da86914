"""Profile flowtel's two hot paths: the caller's thread and the writer's work.

``python -m benchmarks.profile_hot_paths [--db URL] [--workflows N] [--cprofile]``

- **caller**: N 23-step workflows on a provider with the history processor and an OTLP
  ``BatchSpanProcessor`` (no-op exporter), profiled on the application's thread;
- **writer**: the writer thread's whole job on the events of N workflows — decoding, folding,
  rendering rows and the metadata JSON, binding and committing — driven directly in this
  thread so the profiler sees it (``exporters.history.writer.HistoryWriter.fold``/``write``).

Uses pyinstrument (``pip install 'flowtel[dev]'``) when installed, else cProfile (or with
``--cprofile``); reports go to stdout and ``benchmarks/results/profile-<path>.txt``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
from collections.abc import Callable
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.bench_writer import batches, capture_events
from benchmarks.common import (
    ROOT,
    database_url,
    flowtel_provider,
    reset_tables,
    run_flowtel_workflows,
)
from exporters import make_engine
from exporters.db.schema import create_schema
from exporters.history.writer import HistoryWriter


def profile(function: Callable[[], Any], use_cprofile: bool) -> str:
    """Run *function* under a profiler and return the text report."""
    if not use_cprofile:
        try:
            from pyinstrument import Profiler
        except ImportError:
            use_cprofile = True
        else:
            profiler = Profiler(interval=0.0005)
            profiler.start()
            function()
            profiler.stop()
            return str(profiler.output_text(unicode=False, color=False, show_all=False))
    collector = cProfile.Profile()
    collector.enable()
    function()
    collector.disable()
    out = io.StringIO()
    pstats.Stats(collector, stream=out).sort_stats("tottime").print_stats(40)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="database URL (default: a SQLite file)")
    parser.add_argument("--workflows", type=int, default=2000)
    parser.add_argument("--cprofile", action="store_true", help="use cProfile")
    args = parser.parse_args()
    url = args.db or database_url("sqlite", "profile")

    provider, processor = flowtel_provider(url)
    run_flowtel_workflows(provider, 50)  # warm-up
    processor.force_flush(60_000)
    caller = profile(lambda: run_flowtel_workflows(provider, args.workflows), args.cprofile)
    processor.force_flush(600_000)
    processor.shutdown()

    engine = make_engine(url)
    create_schema(engine)
    reset_tables(engine)
    events = capture_events(args.workflows)

    def write_all() -> None:
        writer = HistoryWriter(engine, create_tables=False)
        for batch in batches(events):
            writer.fold(batch)
            assert writer.write()

    writer = profile(write_all, args.cprofile)
    engine.dispose()

    folder = os.path.join(ROOT, "benchmarks", "results")
    os.makedirs(folder, exist_ok=True)
    for name, text in (("caller", caller), ("writer", writer)):
        path = os.path.join(folder, f"profile-{name}.txt")
        with open(path, "w") as handle:
            handle.write(text)
        print(f"==== {name} ({path})\n{text}")


if __name__ == "__main__":
    main()
