#!/usr/bin/env bash
# Build (once) and print the path of flowtel's OpenTelemetry Collector distribution.
#
#   bin="$(bash .ci/collector.sh | tail -n 1)"
#   "$bin" --config otel-collector.yaml --config tests/collector_overlay.yaml
#
# What it does:
#   * reads collector/manifest.yaml (the ocb manifest; its "builder-version:" comment names
#     the release of go.opentelemetry.io/collector/cmd/builder to use),
#   * installs that builder with `go install` into the cache (once per version),
#   * runs it from ${FLOWTEL_CACHE_DIR:-$HOME/.cache/flowtel}/otelcol-<sha256 of the manifest,
#     12 hex chars>/ and keeps the binary there as otelcol-flowtel. A changed manifest gives a
#     new directory, so the binary is rebuilt exactly when the manifest changes.
#   * prints the binary's absolute path as the LAST line of stdout; all progress goes to stderr.
#
# Needs: Go (PATH, else /usr/local/go/bin; override with FLOWTEL_GO=/path/to/go) and the Go
# module proxy. GOPATH, GOCACHE and GOMODCACHE keep Go's defaults. GOTOOLCHAIN defaults to
# "local" so no other toolchain is ever downloaded.
#
# Cost, measured on the 2-core CI machine with Go 1.26.8 (builder v0.148.0):
#   cold (empty Go module and build caches):    ~2 min 20 s (138 s: builder install, ~1.4 GB of
#                                               modules downloaded, ~650 MB build cache, compile)
#   warm (binary cached, manifest unchanged):   ~0.02 s
#   manifest changed, Go caches warm:           ~4 s (FLOWTEL_COLLECTOR_REBUILD=1 measures this)
# CI has 90 minutes for everything, so a cold build fits but is not free: keep the component
# list short.
#
# The builder itself compiles with -trimpath and -ldflags="-s -w" (stripped) unless the
# manifest sets debug_compilation; FLOWTEL_COLLECTOR_LDFLAGS, if set, replaces those ldflags.
# FLOWTEL_COLLECTOR_REBUILD=1 forces a rebuild even when a cached binary exists.
set -euo pipefail

log() { printf '[collector.sh] %s\n' "$*" >&2; }
die() { printf '[collector.sh] ERROR: %s\n' "$*" >&2; exit 1; }

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
manifest="${repo_root}/collector/manifest.yaml"
[ -f "$manifest" ] || die "manifest not found: $manifest"

cache_root="${FLOWTEL_CACHE_DIR:-$HOME/.cache/flowtel}"
mkdir -p "$cache_root"
cache_root="$(cd "$cache_root" && pwd)"

# --- Go toolchain ----------------------------------------------------------------------------
go_bin="${FLOWTEL_GO:-}"
if [ -z "$go_bin" ]; then
  if command -v go >/dev/null 2>&1; then
    go_bin="$(command -v go)"
  elif [ -x /usr/local/go/bin/go ]; then
    go_bin=/usr/local/go/bin/go
  else
    die "Go toolchain not found (looked in PATH and /usr/local/go/bin); set FLOWTEL_GO"
  fi
fi
# The builder runs plain `go`, so make sure the chosen one is first on PATH.
go_dir="$(dirname "$go_bin")"
export PATH="${go_dir}:$PATH"
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
# Modules come from the module proxy only: drop a trailing "direct" so that a module the proxy
# does not serve fails at once instead of Go trying to clone its repository from GitHub.
go_proxy="$("$go_bin" env GOPROXY)"
case "$go_proxy" in
  *,direct|*\|direct) export GOPROXY="${go_proxy%[,|]direct}" ;;
esac

# --- what to build ---------------------------------------------------------------------------
builder_version="$(sed -n 's/^#[[:space:]]*builder-version:[[:space:]]*\(v[0-9][0-9.]*\).*/\1/p' "$manifest" | head -n 1)"
[ -n "$builder_version" ] || die "no '# builder-version: vX.Y.Z' line in $manifest"
dist_name="$(sed -n 's/^[[:space:]]*name:[[:space:]]*\(otelcol-[A-Za-z0-9_-]*\).*/\1/p' "$manifest" | head -n 1)"
[ -n "$dist_name" ] || die "no dist name (otelcol-...) in $manifest"

manifest_sha="$(sha256sum "$manifest" | cut -c1-12)"
build_dir="${cache_root}/otelcol-${manifest_sha}"
binary="${build_dir}/${dist_name}"

if [ -x "$binary" ] && [ "${FLOWTEL_COLLECTOR_REBUILD:-0}" != 1 ]; then
  log "cached: $binary (manifest sha256 ${manifest_sha})"
  printf '%s\n' "$binary"
  exit 0
fi

# One build at a time per cache directory (two CI steps may race for it).
mkdir -p "$build_dir"
if command -v flock >/dev/null 2>&1; then
  exec 9>"${build_dir}/.lock"
  flock 9
  if [ -x "$binary" ] && [ "${FLOWTEL_COLLECTOR_REBUILD:-0}" != 1 ]; then
    log "built meanwhile by another process: $binary"
    printf '%s\n' "$binary"
    exit 0
  fi
fi

start_ts=$(date +%s)
log "building ${dist_name} (manifest sha256 ${manifest_sha}) with $("$go_bin" version)"

# --- the builder (ocb) -----------------------------------------------------------------------
builder_dir="${cache_root}/ocb-${builder_version}"
builder="${builder_dir}/builder"
if [ ! -x "$builder" ]; then
  log "installing go.opentelemetry.io/collector/cmd/builder@${builder_version}"
  mkdir -p "$builder_dir"
  GOBIN="$builder_dir" "$go_bin" install -trimpath -ldflags='-s -w' \
    "go.opentelemetry.io/collector/cmd/builder@${builder_version}" >&2
fi
[ -x "$builder" ] || die "builder was not installed at $builder"

# --- build -----------------------------------------------------------------------------------
# output_path in the manifest is relative ("./build"), so the builder runs from the cache dir.
# The builder's own module step (`go mod tidy`, no -e) is replaced by ours: tidy also resolves
# the *tests* of every dependency, and at contrib v0.148.0 fileexporter's tests import
# extension/encoding/otlpencodingextension, which the module proxy reachable here does not
# serve. `go mod tidy -e` records everything the collector itself imports and only reports that
# test-only module; anything the binary really needs but cannot get still fails `go build`.
# We then check, like the builder's strict versioning, that every module keeps the version
# pinned in the manifest.
rm -rf "${build_dir}/build"
if ! (cd "$build_dir" && "$builder" --config="$manifest" --skip-compilation --skip-get-modules) >&2; then
  die "the builder could not generate sources from $manifest"
fi
log "resolving modules (go mod tidy -e)"
tidy_ok=0
for attempt in 1 2 3; do
  if tidy_log="$( (cd "${build_dir}/build" && "$go_bin" mod tidy -e) 2>&1 )"; then tidy_ok=1; fi
  # Report the resolution problems (not the "go: downloading" chatter).
  grep -v '^go: downloading' <<<"$tidy_log" | sed 's/^/[collector.sh]   tidy: /' >&2 || true
  [ "$tidy_ok" = 1 ] && break
  log "go mod tidy failed (attempt ${attempt}/3); retrying in 5s"
  sleep 5
done
[ "$tidy_ok" = 1 ] || die "go mod tidy failed in ${build_dir}/build"

resolved="$(cd "${build_dir}/build" && "$go_bin" list -m -e -f '{{.Path}} {{.Version}}' all 2>/dev/null)" \
  || die "go list -m all failed in ${build_dir}/build"
pin_errors=0
while read -r mod ver; do
  got="$(awk -v m="$mod" '$1 == m {print $2; exit}' <<<"$resolved")"
  if [ "$got" != "$ver" ]; then
    log "version drift: $mod is pinned to $ver in the manifest but resolved to '${got:-missing}'"
    pin_errors=1
  fi
done < <(sed -n 's/^[[:space:]]*-\{0,1\}[[:space:]]*gomod:[[:space:]]*\([^[:space:]]*\)[[:space:]]\{1,\}\(v[^[:space:]]*\).*/\1 \2/p' "$manifest")
[ "$pin_errors" = 0 ] || die "resolved module versions differ from collector/manifest.yaml"

log "compiling (this is the slow part on a cold cache)"
builder_args=(--config="$manifest" --skip-generate --skip-get-modules)
if [ -n "${FLOWTEL_COLLECTOR_LDFLAGS:-}" ]; then
  builder_args+=(--ldflags="$FLOWTEL_COLLECTOR_LDFLAGS")
fi
if ! (cd "$build_dir" && "$builder" "${builder_args[@]}") >&2; then
  die "the builder failed to compile (sources kept in ${build_dir}/build; rerun with FLOWTEL_COLLECTOR_REBUILD=1)"
fi
[ -x "${build_dir}/build/${dist_name}" ] || die "builder succeeded but ${build_dir}/build/${dist_name} is missing"

# Move the binary into place atomically; keep the generated sources for reference.
mv -f "${build_dir}/build/${dist_name}" "${binary}.tmp"
mv -f "${binary}.tmp" "$binary"
"$binary" --version >&2 || die "built binary does not run: $binary"

log "built in $(( $(date +%s) - start_ts ))s: $binary"
printf '%s\n' "$binary"
