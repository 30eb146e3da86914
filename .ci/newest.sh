#!/usr/bin/env bash
# The SQLite part of the suite against the NEWEST releases of the OpenTelemetry SDK and
# SQLAlchemy, past pyproject.toml's upper bounds (flowtel reads private internals of both: this
# job says when a bound can be lifted, or what broke). Idempotent; the venv is kept and reused:
#   bash .ci/newest.sh                # extra arguments go to pytest, e.g. -x -k upsert
# FLOWTEL_NEWEST_VENV chooses the venv (default /var/tmp/flowtel-newest).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${FLOWTEL_NEWEST_VENV:-/var/tmp/flowtel-newest}"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore

if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"

# flowtel with its development dependencies (within its bounds), then the newest SDK and SQLAlchemy
# over them. pip warns that they break flowtel's bounds: that is the point of this job.
"$PY" -m pip install --quiet --editable '.[dev]'
"$PY" -m pip install --quiet --upgrade \
    opentelemetry-api opentelemetry-sdk opentelemetry-exporter-otlp SQLAlchemy 2>&1 \
    | grep -v "^ERROR: pip's dependency resolver\|requires .* but you have" >&2 || true
"$PY" - <<'PY' >&2
from importlib.metadata import version
for name in ("opentelemetry-sdk", "opentelemetry-api", "opentelemetry-exporter-otlp", "SQLAlchemy"):
    print(f"== newest: {name} {version(name)}")
PY

# SQLite only: the server databases' tests are deselected (their ids name the backend),
# nothing requires the services (the collector, Zipkin and browser tests skip) and there is no
# benchmark smoke run.
MARKS="not postgresql and not mysql"
if grep -q '"benchmark:' pyproject.toml; then
    MARKS="$MARKS and not benchmark"
fi
env -u FLOWTEL_TEST_POSTGRES_URL -u FLOWTEL_TEST_MYSQL_URL -u FLOWTEL_REQUIRE_SERVICES -u CI \
    -u FLOWTEL_OTELCOL -u FLOWTEL_TEST_ZIPKIN_URL -u FLOWTEL_CHROMEDRIVER \
    PYTHONPATH="$PWD" "$PY" -m pytest -p no:cacheprovider \
    -m "$MARKS" -k "not postgresql and not mysql" "$@"
