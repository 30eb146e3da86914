#!/usr/bin/env bash
# Install (if missing), start (if not answering) and provision the test databases:
# PostgreSQL on 127.0.0.1:5432 and MariaDB on 127.0.0.1:3306, both loopback only.
#
# Usage:
#   eval "$(bash .ci/databases.sh)"        # sets FLOWTEL_TEST_POSTGRES_URL / FLOWTEL_TEST_MYSQL_URL
#   bash .ci/databases.sh stop-postgres    # really stops the PostgreSQL server (simulated outage)
#   bash .ci/databases.sh start-postgres   # starts it again and waits until flowtel can log in
#   bash .ci/databases.sh status           # says what answers; exit 1 if either does not
#
# stdout carries only the `export ...` lines (for eval); all progress goes to stderr.
# Idempotent: a second run installs nothing, restarts nothing and takes about a second.
#
# Accounts (test only, never for production):
#   PostgreSQL: role flowtel / password flowtel, LOGIN CREATEDB, owns database flowtel.
#   MariaDB:    flowtel@127.0.0.1 and flowtel@localhost / password flowtel,
#               ALL PRIVILEGES ON `flowtel%`.* (tests create flowtel_test_xyz etc.), database flowtel.
#
# How PostgreSQL is found (nothing hard-codes a version):
#   Debian's postgresql-common runs one or more "clusters", listed by `pg_lsclusters`
#   (version, name, port, status, owner, data directory, log file). We use the cluster named
#   $FLOWTEL_PG_CLUSTER (default "main") of version $FLOWTEL_PG_VERSION if set, otherwise of the
#   newest version that has such a cluster. If there is none, the newest server installed under
#   /usr/lib/postgresql/<version>/bin/postgres gets a new cluster with pg_createcluster. The
#   cluster is configured through /etc/postgresql/<version>/<cluster>/conf.d/99-flowtel.conf
#   (listen_addresses='127.0.0.1', port=5432) and started or stopped with pg_ctlcluster
#   (no systemd needed). Its log is the one pg_lsclusters names,
#   e.g. /var/log/postgresql/postgresql-15-main.log.
#
# How MariaDB runs:
#   Debian's mariadb-server initialises /var/lib/mysql. Settings live in
#   /etc/mysql/mariadb.conf.d/99-flowtel.cnf (bind-address=127.0.0.1, port=3306). If the server
#   does not answer, `mariadbd --user=mysql` is started detached (setsid, all output to the log
#   below) with pid file /run/mysqld/mysqld.pid. No systemd or init script is involved, so it
#   behaves the same in a container and on CI. Log: /var/log/mysql/flowtel-mariadb.log.
#
# Package installs use `apt-get install -y --no-install-recommends` (non-interactive); `apt-get
# update` runs only when a missing package has no install candidate or the install fails.
# While installing, a temporary policy-rc.d stops the packages' maintainer scripts from starting
# daemons themselves (a daemon started there would inherit our output pipes); this script
# starts them.
#
# Environment knobs: FLOWTEL_PG_VERSION, FLOWTEL_PG_CLUSTER, FLOWTEL_DB_TIMEOUT (seconds, default
# 60), FLOWTEL_MARIADB_LOG (default /var/log/mysql/flowtel-mariadb.log).
set -euo pipefail

PG_PORT=5432
MY_PORT=3306
DB_USER=flowtel
DB_PASS=flowtel
DB_NAME=flowtel
TIMEOUT="${FLOWTEL_DB_TIMEOUT:-60}"
PG_CLUSTER="${FLOWTEL_PG_CLUSTER:-main}"
MY_LOG="${FLOWTEL_MARIADB_LOG:-/var/log/mysql/flowtel-mariadb.log}"
MY_PID=/run/mysqld/mysqld.pid
MY_CNF=/etc/mysql/mariadb.conf.d/99-flowtel.cnf

log() { printf '[databases.sh] %s\n' "$*" >&2; }
die() { printf '[databases.sh] ERROR: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (installs packages and starts system services)"

# ------------------------------------------------------------------------------------------
# packages
# ------------------------------------------------------------------------------------------
is_installed() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

has_candidate() {
  local c
  c="$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2; exit}')"
  [ -n "$c" ] && [ "$c" != "(none)" ]
}

POLICY_RC=/usr/sbin/policy-rc.d
created_policy_rc=0
remove_policy_rc() {
  if [ "$created_policy_rc" = 1 ]; then rm -f "$POLICY_RC"; created_policy_rc=0; fi
}

ensure_packages() {
  local missing=() p updated=0
  for p in "$@"; do is_installed "$p" || missing+=("$p"); done
  [ "${#missing[@]}" -eq 0 ] && return 0
  log "installing: ${missing[*]}"
  for p in "${missing[@]}"; do
    if ! has_candidate "$p"; then
      log "no install candidate for $p: running apt-get update"
      apt-get update >&2
      updated=1
      break
    fi
  done
  if [ ! -e "$POLICY_RC" ]; then
    printf '#!/bin/sh\n# temporary, from flowtel .ci/databases.sh\nexit 101\n' >"$POLICY_RC"
    chmod 0755 "$POLICY_RC"
    created_policy_rc=1
    trap remove_policy_rc EXIT
  fi
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y --no-install-recommends "${missing[@]}" >&2; then
    [ "$updated" = 1 ] && die "apt-get install ${missing[*]} failed"
    log "install failed: running apt-get update and retrying"
    apt-get update >&2
    apt-get install -y --no-install-recommends "${missing[@]}" >&2 || die "apt-get install ${missing[*]} failed"
  fi
  remove_policy_rc
}

# ------------------------------------------------------------------------------------------
# PostgreSQL
# ------------------------------------------------------------------------------------------
PG_VERSION="" PG_LOG=""

pg_find_cluster() {
  # Sets PG_VERSION and PG_LOG; creates the cluster if the version has none.
  local line ver
  line="$(pg_lsclusters --no-header 2>/dev/null | awk -v c="$PG_CLUSTER" -v v="${FLOWTEL_PG_VERSION:-}" \
    '$2 == c && (v == "" || $1 == v)' | sort -V -k1,1 | tail -n 1 || true)"
  if [ -z "$line" ]; then
    if [ -n "${FLOWTEL_PG_VERSION:-}" ]; then
      ver="$FLOWTEL_PG_VERSION"
    else
      ver="$(find /usr/lib/postgresql -mindepth 3 -maxdepth 3 -path '*/bin/postgres' 2>/dev/null | awk -F/ '{print $5}' | sort -V | tail -n 1)"
    fi
    if [ -z "$ver" ] || [ ! -x "/usr/lib/postgresql/$ver/bin/postgres" ]; then
      die "no PostgreSQL server found under /usr/lib/postgresql"
    fi
    log "creating PostgreSQL cluster $ver/$PG_CLUSTER"
    pg_createcluster --port="$PG_PORT" "$ver" "$PG_CLUSTER" >&2
    line="$(pg_lsclusters --no-header | awk -v c="$PG_CLUSTER" -v v="$ver" '$2 == c && $1 == v')"
    [ -n "$line" ] || die "pg_createcluster $ver $PG_CLUSTER did not create a cluster"
  fi
  PG_VERSION="$(awk '{print $1}' <<<"$line")"
  PG_LOG="$(awk '{print $7}' <<<"$line")"
  [ -n "$PG_LOG" ] || PG_LOG="/var/log/postgresql/postgresql-${PG_VERSION}-${PG_CLUSTER}.log"
}

pg_is_running() {
  pg_lsclusters --no-header | awk -v c="$PG_CLUSTER" -v v="$PG_VERSION" '$1 == v && $2 == c {print $4}' | grep -q '^online'
}

pg_configure() {
  # Our settings go to conf.d/99-flowtel.conf, which Debian's postgresql.conf includes at its end
  # (include_dir = 'conf.d'), so they win over anything earlier. (pg_conftool is not used to
  # write them: it leaves 127.0.0.1 unquoted, which the server rejects.)
  # Returns 0 if something changed (a restart is needed).
  local conf_dir="/etc/postgresql/${PG_VERSION}/${PG_CLUSTER}" want file
  file="${conf_dir}/conf.d/99-flowtel.conf"
  want="$(printf '%s\n' \
    '# Written by flowtel .ci/databases.sh: test server on loopback only.' \
    "listen_addresses = '127.0.0.1'" \
    "port = ${PG_PORT}")"
  [ -f "${conf_dir}/postgresql.conf" ] || die "no ${conf_dir}/postgresql.conf"
  if ! grep -Eq "^[[:space:]]*include_dir[[:space:]]*=[[:space:]]*'conf\.d'" "${conf_dir}/postgresql.conf"; then
    printf "\ninclude_dir = 'conf.d'\t\t# added by flowtel .ci/databases.sh\n" >>"${conf_dir}/postgresql.conf"
  fi
  if [ -f "$file" ] && [ "$(cat "$file")" = "$want" ]; then
    return 1
  fi
  install -d -o postgres -g postgres -m 0755 "${conf_dir}/conf.d"
  printf '%s\n' "$want" >"$file"
  chown postgres:postgres "$file"
  return 0
}

pg_login_ok() {
  PGPASSWORD="$DB_PASS" PGCONNECT_TIMEOUT=3 psql -X -q -h 127.0.0.1 -p "$PG_PORT" -U "$DB_USER" -d "$DB_NAME" \
    -Atc 'select 1' >/dev/null 2>&1
}

pg_wait() {
  # $1: "server" (accepting connections) or "login" (flowtel can log in over TCP).
  local what="$1" deadline=$((SECONDS + TIMEOUT))
  while :; do
    if [ "$what" = server ]; then
      pg_isready -q -h 127.0.0.1 -p "$PG_PORT" -t 2 && return 0
    else
      pg_login_ok && return 0
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "last lines of $PG_LOG:"; tail -n 20 "$PG_LOG" >&2 2>/dev/null || true
      die "PostgreSQL ${PG_VERSION}/${PG_CLUSTER} did not accept ${what} on 127.0.0.1:${PG_PORT} within ${TIMEOUT}s (log: $PG_LOG)"
    fi
    sleep 0.5
  done
}

pg_start() {
  install -d -o postgres -g postgres -m 2775 /var/run/postgresql
  if pg_is_running; then
    log "PostgreSQL ${PG_VERSION}/${PG_CLUSTER} already running"
  else
    log "starting PostgreSQL ${PG_VERSION}/${PG_CLUSTER} (log: $PG_LOG)"
    pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" start </dev/null >&2 \
      || { tail -n 20 "$PG_LOG" >&2 2>/dev/null || true; die "pg_ctlcluster $PG_VERSION $PG_CLUSTER start failed (log: $PG_LOG)"; }
  fi
  pg_wait server
}

pg_stop() {
  if pg_is_running; then
    log "stopping PostgreSQL ${PG_VERSION}/${PG_CLUSTER}"
    pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" stop -m fast </dev/null >&2 \
      || die "pg_ctlcluster $PG_VERSION $PG_CLUSTER stop failed (log: $PG_LOG)"
  else
    log "PostgreSQL ${PG_VERSION}/${PG_CLUSTER} is not running"
  fi
  local deadline=$((SECONDS + TIMEOUT))
  while pg_isready -q -h 127.0.0.1 -p "$PG_PORT" -t 1; do
    [ "$SECONDS" -ge "$deadline" ] && die "PostgreSQL still answers on 127.0.0.1:${PG_PORT} after ${TIMEOUT}s"
    sleep 0.2
  done
}

pg_provision() {
  local sql
  sql="$(cat <<SQL
DO \$\$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '${DB_USER}') THEN
    CREATE ROLE ${DB_USER} LOGIN CREATEDB PASSWORD '${DB_PASS}';
  ELSE
    ALTER ROLE ${DB_USER} LOGIN CREATEDB PASSWORD '${DB_PASS}';
  END IF;
END
\$\$;
SQL
)"
  runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -p "$PG_PORT" -d postgres -c "$sql" >&2
  if [ "$(runuser -u postgres -- psql -X -p "$PG_PORT" -d postgres -Atc "SELECT 1 FROM pg_database WHERE datname = '${DB_NAME}'")" != 1 ]; then
    log "creating PostgreSQL database ${DB_NAME}"
    runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -p "$PG_PORT" -d postgres \
      -c "CREATE DATABASE ${DB_NAME} OWNER ${DB_USER}" >&2
  else
    runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -p "$PG_PORT" -d postgres \
      -c "ALTER DATABASE ${DB_NAME} OWNER TO ${DB_USER}" >&2
  fi
}

pg_up() {
  pg_find_cluster
  if pg_configure && pg_is_running; then
    log "PostgreSQL configuration changed: restarting ${PG_VERSION}/${PG_CLUSTER}"
    pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" restart -m fast </dev/null >&2 \
      || die "pg_ctlcluster $PG_VERSION $PG_CLUSTER restart failed (log: $PG_LOG)"
  fi
  pg_start
  pg_provision
  pg_wait login
  log "PostgreSQL ${PG_VERSION}/${PG_CLUSTER}: ${DB_USER} can log in on 127.0.0.1:${PG_PORT}"
}

# ------------------------------------------------------------------------------------------
# MariaDB
# ------------------------------------------------------------------------------------------
my_alive() {  # the server answers on its socket (root uses unix_socket authentication)
  mariadb-admin --protocol=socket --connect-timeout=2 ping >/dev/null 2>&1
}

my_tcp_alive() {  # something answers on 127.0.0.1:3306 (ping succeeds even if access is denied)
  mariadb-admin --protocol=tcp -h 127.0.0.1 -P "$MY_PORT" --connect-timeout=2 ping >/dev/null 2>&1
}

my_login_ok() {
  MYSQL_PWD="$DB_PASS" mariadb --protocol=tcp -h 127.0.0.1 -P "$MY_PORT" -u "$DB_USER" \
    --connect-timeout=3 -D "$DB_NAME" -Nse 'select 1' >/dev/null 2>&1
}

my_configure() {
  # Returns 0 if the file changed (a restart is needed).
  local want
  want="$(printf '%s\n' \
    '# Written by flowtel .ci/databases.sh: test server on loopback only.' \
    '[mysqld]' \
    'bind-address = 127.0.0.1' \
    "port = ${MY_PORT}")"
  if [ -f "$MY_CNF" ] && [ "$(cat "$MY_CNF")" = "$want" ]; then
    return 1
  fi
  mkdir -p "$(dirname "$MY_CNF")"
  printf '%s\n' "$want" >"$MY_CNF"
  return 0
}

my_pid() {
  local pid=""
  [ -s "$MY_PID" ] && pid="$(cat "$MY_PID" 2>/dev/null || true)"
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then printf '%s\n' "$pid"; fi
}

my_stop() {
  local pid deadline
  if my_alive; then
    mariadb-admin --protocol=socket shutdown >&2 || true
  fi
  pid="$(my_pid)"
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; fi
  deadline=$((SECONDS + TIMEOUT))
  while my_alive || [ -n "$(my_pid)" ]; do
    [ "$SECONDS" -ge "$deadline" ] && die "MariaDB did not stop within ${TIMEOUT}s (log: $MY_LOG)"
    sleep 0.3
  done
}

my_start() {
  if my_alive; then
    log "MariaDB already running"
    return 0
  fi
  if my_tcp_alive; then
    die "something that is not our MariaDB answers on 127.0.0.1:${MY_PORT}"
  fi
  install -d -o mysql -g mysql -m 0755 /run/mysqld
  install -d -o mysql -g adm -m 2750 "$(dirname "$MY_LOG")"
  touch "$MY_LOG" && chown mysql:adm "$MY_LOG"
  if [ ! -d /var/lib/mysql/mysql ]; then
    log "initialising the MariaDB data directory /var/lib/mysql"
    mariadb-install-db --user=mysql --datadir=/var/lib/mysql >>"$MY_LOG" 2>&1 \
      || die "mariadb-install-db failed (log: $MY_LOG)"
  fi
  log "starting MariaDB (log: $MY_LOG)"
  # Detached: new session, no inherited stdin/stdout/stderr (an `eval "$(...)"` caller would
  # otherwise wait for the server to exit).
  setsid mariadbd --user=mysql --pid-file="$MY_PID" --log-error="$MY_LOG" </dev/null >>"$MY_LOG" 2>&1 &
  local starter=$! deadline=$((SECONDS + TIMEOUT))
  until my_alive; do
    if ! kill -0 "$starter" 2>/dev/null && [ -z "$(my_pid)" ]; then
      log "last lines of $MY_LOG:"; tail -n 20 "$MY_LOG" >&2 || true
      die "MariaDB exited while starting (log: $MY_LOG)"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "last lines of $MY_LOG:"; tail -n 20 "$MY_LOG" >&2 || true
      die "MariaDB did not answer within ${TIMEOUT}s (log: $MY_LOG)"
    fi
    sleep 0.5
  done
}

my_provision() {
  local u
  {
    printf "CREATE DATABASE IF NOT EXISTS \`%s\`;\n" "$DB_NAME"
    for u in "'${DB_USER}'@'127.0.0.1'" "'${DB_USER}'@'localhost'"; do
      printf "CREATE USER IF NOT EXISTS %s IDENTIFIED BY '%s';\n" "$u" "$DB_PASS"
      printf "ALTER USER %s IDENTIFIED BY '%s';\n" "$u" "$DB_PASS"
      printf "GRANT ALL PRIVILEGES ON \`%s%%\`.* TO %s;\n" "$DB_NAME" "$u"
    done
    printf 'FLUSH PRIVILEGES;\n'
  } | mariadb --protocol=socket -u root >&2 || die "provisioning MariaDB failed (log: $MY_LOG)"
}

my_up() {
  if my_configure && my_alive; then
    log "MariaDB configuration changed: restarting"
    my_stop
  fi
  my_start
  my_provision
  local deadline=$((SECONDS + TIMEOUT))
  until my_login_ok; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "last lines of $MY_LOG:"; tail -n 20 "$MY_LOG" >&2 || true
      die "MariaDB did not accept ${DB_USER} logins on 127.0.0.1:${MY_PORT} within ${TIMEOUT}s (log: $MY_LOG)"
    fi
    sleep 0.5
  done
  log "MariaDB: ${DB_USER} can log in on 127.0.0.1:${MY_PORT}"
}

# ------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------
cmd="${1:-up}"
case "$cmd" in
  up)
    ensure_packages postgresql postgresql-client mariadb-server mariadb-client
    pg_up
    my_up
    printf 'export FLOWTEL_TEST_POSTGRES_URL=postgresql+psycopg://%s:%s@127.0.0.1:%s/%s\n' "$DB_USER" "$DB_PASS" "$PG_PORT" "$DB_NAME"
    printf 'export FLOWTEL_TEST_MYSQL_URL=mysql+pymysql://%s:%s@127.0.0.1:%s/%s\n' "$DB_USER" "$DB_PASS" "$MY_PORT" "$DB_NAME"
    ;;
  stop-postgres)
    pg_find_cluster
    pg_stop
    log "PostgreSQL ${PG_VERSION}/${PG_CLUSTER} stopped"
    ;;
  start-postgres)
    pg_find_cluster
    pg_start
    pg_wait login
    log "PostgreSQL ${PG_VERSION}/${PG_CLUSTER} started; ${DB_USER} can log in"
    ;;
  status)
    rc=0
    pg_find_cluster
    if pg_login_ok; then log "PostgreSQL: up (${PG_VERSION}/${PG_CLUSTER}, log $PG_LOG)"; else log "PostgreSQL: DOWN (log $PG_LOG)"; rc=1; fi
    if my_login_ok; then log "MariaDB: up (log $MY_LOG)"; else log "MariaDB: DOWN (log $MY_LOG)"; rc=1; fi
    exit "$rc"
    ;;
  -h|--help|help)
    sed -n '2,12p' "$0" >&2
    ;;
  *)
    die "unknown command '$cmd' (use: up, stop-postgres, start-postgres, status)"
    ;;
esac
