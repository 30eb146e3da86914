#!/usr/bin/env bash
# Zipkin server, the end-to-end tests' real tracing backend (fed by the collector's zipkin/test
# exporter, see tests/collector_overlay.yaml, and queried through its HTTP API).
#
# Usage:
#   jar="$(bash .ci/zipkin.sh | tail -n 1)"      # fetch (once) and print the jar's path
#   eval "$(bash .ci/zipkin.sh start)"           # fetch, start on 127.0.0.1:9411, wait until
#                                                #   healthy; prints export FLOWTEL_TEST_ZIPKIN_URL=...
#   bash .ci/zipkin.sh stop                      # stop the server that `start` started
#
# The jar is Zipkin's executable server jar (io.zipkin:zipkin-server:<version>:jar:exec) from Maven
# Central, copied with Maven's dependency plugin into
#   ${FLOWTEL_CACHE_DIR:-$HOME/.cache/flowtel}/zipkin/zipkin-server-<version>-exec.jar
# and reused from there. stdout carries only the result (path, or export lines); progress goes
# to stderr.
#
# Running it by hand (in-memory storage is Zipkin's default; Java 17+):
#   java -Xmx512m -jar "$jar" \
#     --armeria.ports[0].ip=127.0.0.1 --armeria.ports[0].port=9411 --armeria.ports[0].protocols[0]=http
# Zipkin 3 serves HTTP with Armeria, so Spring's --server.address does NOT choose the address:
# the armeria.ports list does, and a list given on the command line replaces the built-in one
# whole, hence all three entries. --server.port / QUERY_PORT still set the default port.
# Measured here (2 cores): healthy about 3.5 s after `java` starts; the jar is ~130 MB.
# Endpoints: POST /api/v2/spans (intake), GET /api/v2/traces?serviceName=..., GET
# /api/v2/trace/<traceId>, GET /api/v2/services, GET /health.
#
# Environment: FLOWTEL_ZIPKIN_VERSION (default below), FLOWTEL_ZIPKIN_PORT (default 9411),
# FLOWTEL_ZIPKIN_TIMEOUT (seconds to wait for health, default 60), FLOWTEL_CACHE_DIR.
set -euo pipefail

ZIPKIN_VERSION="${FLOWTEL_ZIPKIN_VERSION:-3.5.1}"
DEPENDENCY_PLUGIN=org.apache.maven.plugins:maven-dependency-plugin:3.8.1
PORT="${FLOWTEL_ZIPKIN_PORT:-9411}"
TIMEOUT="${FLOWTEL_ZIPKIN_TIMEOUT:-60}"

log() { printf '[zipkin.sh] %s\n' "$*" >&2; }
die() { printf '[zipkin.sh] ERROR: %s\n' "$*" >&2; exit 1; }

cache_dir="${FLOWTEL_CACHE_DIR:-$HOME/.cache/flowtel}/zipkin"
jar="${cache_dir}/zipkin-server-${ZIPKIN_VERSION}-exec.jar"
pid_file="${cache_dir}/zipkin-${PORT}.pid"
log_file="${cache_dir}/zipkin-${PORT}.log"
base_url="http://127.0.0.1:${PORT}"

ensure_tool() {  # ensure_tool COMMAND DEBIAN_PACKAGE
  command -v "$1" >/dev/null 2>&1 && return 0
  [ "$(id -u)" = 0 ] || die "$1 is missing (Debian package $2) and we are not root"
  log "installing $2 (for $1)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends "$2" >&2 \
    || { apt-get update >&2 && apt-get install -y --no-install-recommends "$2" >&2; } \
    || die "could not install $2"
}

fetch() {
  if [ -s "$jar" ]; then
    log "cached: $jar"
    return 0
  fi
  ensure_tool java openjdk-17-jre-headless
  ensure_tool mvn maven
  mkdir -p "$cache_dir"
  local tmp
  tmp="$(mktemp -d "${cache_dir}/.fetch.XXXXXX")"
  log "fetching io.zipkin:zipkin-server:${ZIPKIN_VERSION}:jar:exec with Maven"
  # Run from the empty temporary directory so no pom.xml around us is picked up.
  if ! (cd "$tmp" && mvn -B -q -Dstyle.color=never "${DEPENDENCY_PLUGIN}:copy" \
          "-Dartifact=io.zipkin:zipkin-server:${ZIPKIN_VERSION}:jar:exec" \
          "-DoutputDirectory=${tmp}/out") >&2; then
    rm -rf "$tmp"
    die "Maven could not fetch io.zipkin:zipkin-server:${ZIPKIN_VERSION}:jar:exec"
  fi
  [ -s "${tmp}/out/zipkin-server-${ZIPKIN_VERSION}-exec.jar" ] || { rm -rf "$tmp"; die "Maven reported success but no jar"; }
  mv -f "${tmp}/out/zipkin-server-${ZIPKIN_VERSION}-exec.jar" "$jar"
  rm -rf "$tmp"
  log "fetched: $jar ($(du -h "$jar" | cut -f1))"
}

healthy() {
  curl -fsS --max-time 2 "${base_url}/health" 2>/dev/null | grep -q '"UP"'
}

running_pid() {
  local pid=""
  [ -s "$pid_file" ] && pid="$(cat "$pid_file" 2>/dev/null || true)"
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then printf '%s\n' "$pid"; fi
}

print_exports() {
  printf 'export FLOWTEL_TEST_ZIPKIN_URL=%s/api/v2/spans\n' "$base_url"
}

start() {
  fetch
  if healthy; then
    log "Zipkin already answers at ${base_url}"
    print_exports
    return 0
  fi
  if curl -s --max-time 2 -o /dev/null "${base_url}/" 2>/dev/null; then
    die "something that is not a healthy Zipkin answers on 127.0.0.1:${PORT}"
  fi
  ensure_tool java openjdk-17-jre-headless
  log "starting Zipkin ${ZIPKIN_VERSION} on 127.0.0.1:${PORT} (log: $log_file)"
  local start_ts=$SECONDS
  # Detached: new session and no inherited stdin/stdout/stderr, so `eval "$(...)"` returns.
  setsid java -Xms64m -Xmx512m -jar "$jar" \
    "--armeria.ports[0].ip=127.0.0.1" "--armeria.ports[0].port=${PORT}" "--armeria.ports[0].protocols[0]=http" \
    </dev/null >"$log_file" 2>&1 &
  local pid=$!
  echo "$pid" >"$pid_file"
  until healthy; do
    if ! kill -0 "$pid" 2>/dev/null; then
      log "last lines of $log_file:"; tail -n 20 "$log_file" >&2 || true
      die "Zipkin exited while starting (log: $log_file)"
    fi
    if [ $((SECONDS - start_ts)) -ge "$TIMEOUT" ]; then
      log "last lines of $log_file:"; tail -n 20 "$log_file" >&2 || true
      die "Zipkin not healthy at ${base_url}/health within ${TIMEOUT}s (log: $log_file)"
    fi
    sleep 0.25
  done
  log "Zipkin healthy after $((SECONDS - start_ts))s (pid $pid)"
  print_exports
}

stop() {
  local pid _
  pid="$(running_pid)"
  if [ -z "$pid" ]; then
    log "no Zipkin started by this script is running on port ${PORT}"
    rm -f "$pid_file"
    return 0
  fi
  log "stopping Zipkin (pid $pid)"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid" 2>/dev/null || true; fi
  rm -f "$pid_file"
}

case "${1:-fetch}" in
  fetch) fetch; printf '%s\n' "$jar" ;;
  start) start ;;
  stop) stop ;;
  -h|--help|help) sed -n '2,12p' "$0" >&2 ;;
  *) die "unknown command '$1' (use: fetch, start, stop)" ;;
esac
