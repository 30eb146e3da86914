"""What redacting every stdlib log record costs: ratios against the same records unredacted.

``python -m benchmarks.bench_log_redaction [--records N] [--rounds R]`` logs N warnings through a
``NullHandler`` three ways, interleaved round by round in one process: without flowtel's
logging bridge (the baseline), with the bridge but redaction switched off, and with the bridge
as ``configure()`` installs it (every record masked as it is created). Two kinds of message are
timed: a plain one and one with ``key=value`` text that the redactor has to look at. The medians
of the per-round ratios are printed; no figure is absolute, and no test asserts one.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections.abc import Callable

import exporters.telemetry.logs as flowtel_logs
from exporters.telemetry.logs import install_logging_bridge, uninstall_logging_bridge

MESSAGES = {
    "plain": ("request %d done", lambda i: (i,)),
    "key=value": ("request %d took %s ms for user=%s", lambda i: (i, 12, "bob")),
}


def _timed(
    logger: logging.Logger, message: str, args: Callable[[int], tuple[object, ...]], n: int
) -> float:
    started = time.perf_counter()
    for i in range(n):
        logger.warning(message, *args(i))
    return time.perf_counter() - started


def _setup(mode: str) -> None:
    uninstall_logging_bridge()
    flowtel_logs.redact_record = _REDACT if mode == "redacted" else (lambda record: None)
    if mode != "none":
        install_logging_bridge()


_REDACT = flowtel_logs.redact_record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    options = parser.parse_args()
    root = logging.getLogger()
    saved = list(root.handlers)
    root.handlers[:] = [logging.NullHandler()]
    logger = logging.getLogger("bench")
    try:
        for kind, (message, args) in MESSAGES.items():
            ratios: dict[str, list[float]] = {"bridge, no redaction": [], "bridge, redacted": []}
            for round_ in range(options.rounds):
                order = ["none", "bridge", "redacted"]
                if round_ % 2:
                    order.reverse()
                times: dict[str, float] = {}
                for mode in order:
                    _setup(mode)
                    times[mode] = _timed(logger, message, args, options.records)
                ratios["bridge, no redaction"].append(times["bridge"] / times["none"])
                ratios["bridge, redacted"].append(times["redacted"] / times["none"])
            for name, values in ratios.items():
                print(f"{kind:<10} {name:<22} {statistics.median(values):5.2f}x no bridge")
    finally:
        _setup("none")
        flowtel_logs.redact_record = _REDACT
        root.handlers[:] = saved


if __name__ == "__main__":
    main()
