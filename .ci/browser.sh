#!/usr/bin/env bash
# Headless Chromium and its WebDriver from Debian's packages, for tests/test_browser.py
# (Selenium drives the real browser; nothing is downloaded at run time by Selenium itself).
#
# Usage (as root on Debian/Ubuntu; idempotent: installs only what is missing):
#   eval "$(bash .ci/browser.sh)"
# prints on stdout only:
#   export FLOWTEL_CHROMEDRIVER=/usr/bin/chromedriver
#   export FLOWTEL_CHROMIUM=/usr/bin/chromium
# Progress goes to stderr. Without FLOWTEL_CHROMEDRIVER the browser tests skip (and fail
# under CI / FLOWTEL_REQUIRE_SERVICES=1).
set -euo pipefail

log() { printf 'browser.sh: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

driver=/usr/bin/chromedriver
browser=/usr/bin/chromium

if [ ! -x "$driver" ] || [ ! -x "$browser" ]; then
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found: install chromium and chromium-driver by hand"
  [ "$(id -u)" -eq 0 ] || die "run as root to install chromium and chromium-driver"
  log "installing chromium and chromium-driver from Debian's packages"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y --no-install-recommends chromium chromium-driver >&2; then
    apt-get update >&2
    apt-get install -y --no-install-recommends chromium chromium-driver >&2
  fi
fi
[ -x "$driver" ] || die "$driver is missing after the install"
[ -x "$browser" ] || die "$browser is missing after the install"
log "$("$browser" --version 2>/dev/null || echo chromium) / $("$driver" --version 2>/dev/null | head -n 1)"
printf 'export FLOWTEL_CHROMEDRIVER=%s\n' "$driver"
printf 'export FLOWTEL_CHROMIUM=%s\n' "$browser"
