#!/usr/bin/env bash
# Tests stop what they start. .ci/run exports FLOWTEL_CI_RUN=<id> once its services (databases,
# Zipkin) are up, so every process the linters and tests start carries it in its environment;
# at the end of the run this finds those still running:
#   bash .ci/leftovers.sh <id>
# A `flowtel ingest`, `flowtel serve`, fault-test child (tests.children) or collector
# (otelcol*) still running after a 10 s grace fails the run (exit 1); any other marked process
# is listed as a warning. Both kinds are then killed, so nothing outlives the run.
set -euo pipefail
mark="${1:?usage: bash .ci/leftovers.sh FLOWTEL_CI_RUN-value}"
exec python3 - "$mark" <<'PY'
import os
import signal
import sys
import time

MARK = f"FLOWTEL_CI_RUN={sys.argv[1]}".encode()
OURS = {os.getpid(), os.getppid()}


def marked():
    """pid -> argv of every live, non-zombie process carrying the mark (but this check)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in OURS:
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as environ:
                if MARK not in environ.read().split(b"\0"):
                    continue
            with open(f"/proc/{entry}/stat") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                argv = [a.decode(errors="replace") for a in cmdline.read().split(b"\0") if a]
        except OSError:  # gone meanwhile, or not ours to read
            continue
        found[int(entry)] = argv
    return found


def flowtel_child(argv):
    words = " ".join(argv)
    return (
        os.path.basename(argv[0]).startswith("otelcol")
        or "tests.children" in words
        or any(f"{cli} {cmd}" in words
               for cli in ("flowtel", "exporters.cli") for cmd in ("ingest", "serve"))
    )


deadline = time.monotonic() + 10
left = marked()
while left and time.monotonic() < deadline:
    time.sleep(0.5)
    left = marked()
bad = {pid: argv for pid, argv in left.items() if flowtel_child(argv)}
for pid, argv in sorted(left.items()):
    kind = "LEFT RUNNING" if pid in bad else "warning: still running"
    print(f"[leftovers] {kind}: pid {pid}: {' '.join(argv)[:300]}", file=sys.stderr)
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
if bad:
    print(f"[leftovers] {len(bad)} process(es) started by the tests outlived them: a test must "
          "stop what it starts (tests/spawn.py)", file=sys.stderr)
    sys.exit(1)
print("[leftovers] none: every process the tests started was stopped", file=sys.stderr)
PY
