#!/usr/bin/env bash
# A project-owned PostgreSQL cluster for development and tests, from Debian's packages. No Docker.
#
# usage: deploy/postgres.sh {install|init|start|stop|status|psql [psql args...]}
#
# Environment (defaults):
#   CRM_HOME     project data folder (<repo>/.crm); the cluster lives in $CRM_HOME/postgres
#   CRM_PG_PORT  TCP port on 127.0.0.1 (5432)
#   CRM_PG_USER  the owner role (crm): owns the database, runs migrations and `crm replay`
#   CRM_PG_SERVICE_USER  the services' role (crm_service): reads and writes rows, nothing more
#   CRM_PG_DB    the application's database (crm)
#   CRM_PYTHON   Python with the project's requirements (<repo>/.venv/bin/python), for migrations
#
# Files: data $CRM_HOME/postgres/data, unix socket $CRM_HOME/postgres/run, log $CRM_HOME/logs/postgres.log.
# The services connect with CRM_PG_DSN=postgresql://$CRM_PG_SERVICE_USER@127.0.0.1:$CRM_PG_PORT/$CRM_PG_DB
# and CRM_PG_PASSWORD=$(cat $CRM_HOME/keys/postgres-service.password); migrations and `crm replay` as
# the owner, CRM_PG_USER, with $CRM_HOME/keys/postgres-owner.password.
# Exit codes: 0 ok, 1 failure, 2 usage, 3 `status` when not running.
#
# Security: a DEV cluster on loopback only. Neither role is a superuser. TCP connections need a
# password (scram-sha-256), for every role: the owner's and the services' are made once, 24 random
# bytes each, and kept in $CRM_HOME/keys/ (mode 0600, never in the repository) beside the demo's
# other secrets, unless CRM_PG_PASSWORD (the owner's) and CRM_PG_SERVICE_PASSWORD give them. The
# superuser `postgres` has no password: only the cluster's OS owner reaches it, over the unix socket
# (its directory 0700), which this script uses for its own administration. The services' role gets
# SELECT, INSERT, UPDATE and DELETE on the tables and sequences, also on those later migrations make
# (default privileges): `crm db migrate` grants them. Production does not use this script: it points
# CRM_PG_DSN at a managed server and takes the password from the environment.
#
# Optional TLS and password mode (docs/transport-security.md), applied at every start:
#   CRM_PG_SERVER_CERT, CRM_PG_SERVER_KEY  the server's PEM certificate and key: ssl = on, and TCP
#                connections must use TLS (pg_hba `hostssl` only); copied beside the data, key 0600
#   CRM_PG_SERVER_CA  optional CA file for client certificates (ssl_ca_file)
#   CRM_PG_PASSWORD   the owner role's password, instead of the generated one (set from the
#                environment with psql \getenv, never on a command line)
#
# PostgreSQL refuses to run as root: when this script runs as root, initdb/pg_ctl run as the
# `postgres` system user (created by Debian's package; created here if missing), which owns
# $CRM_HOME/postgres.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$SCRIPT_DIR")
CRM_HOME=${CRM_HOME:-$REPO/.crm}
case $CRM_HOME in /*) ;; *) CRM_HOME=$PWD/$CRM_HOME ;; esac

PORT=${CRM_PG_PORT:-5432}
APP_USER=${CRM_PG_USER:-crm}
SERVICE_USER=${CRM_PG_SERVICE_USER:-crm_service}
APP_DB=${CRM_PG_DB:-crm}
PY=${CRM_PYTHON:-$REPO/.venv/bin/python}
DSN=postgresql://$APP_USER@127.0.0.1:$PORT/$APP_DB

PG_DIR=$CRM_HOME/postgres
DATA=$PG_DIR/data
SOCK_DIR=$PG_DIR/run
LOG_DIR=$CRM_HOME/logs
LOG=$LOG_DIR/postgres.log
KEY_DIR=$CRM_HOME/keys
OWNER_PASSWORD_FILE=$KEY_DIR/postgres-owner.password
SERVICE_PASSWORD_FILE=$KEY_DIR/postgres-service.password

say() { echo "postgres: $*"; }
die() { echo "postgres: ERROR: $*" >&2; exit 1; }

if [[ $EUID -eq 0 ]]; then
  OWNER=postgres
  AS_OWNER=(runuser -u postgres --)
else
  OWNER=$(id -un)
  AS_OWNER=()
fi

# Newest installed server's bin dir (/usr/lib/postgresql/<version>/bin), or nothing.
find_bindir() {
  local d
  d=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin 2>/dev/null | sort -V | tail -n 1)
  if [[ -n $d && -x $d/pg_ctl && -x $d/initdb ]]; then echo "$d"; fi
}

as_root() {
  if [[ $EUID -eq 0 ]]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else die "need root to run: $*"; fi
}

# Debian's package creates and starts a system cluster (e.g. 15/main on 5432). A system cluster
# configured on OUR port is stopped and set to start manually (start.conf), so it neither holds the
# port now nor takes it at the next boot. Clusters on other ports are left alone.
disable_system_cluster_on_port() {
  command -v pg_lsclusters >/dev/null || return 0
  local ver name port status _rest
  while read -r ver name port status _rest; do
    [[ $port == "$PORT" ]] || continue
    if [[ $status == online* ]]; then
      say "stopping the system cluster $ver/$name, which holds port $PORT"
      as_root pg_ctlcluster "$ver" "$name" stop
    fi
    local conf=/etc/postgresql/$ver/$name/start.conf
    if [[ -f $conf ]] && grep -qx 'auto' "$conf"; then
      as_root sed -i 's/^auto$/manual/' "$conf"
      say "system cluster $ver/$name (port $PORT) set to start manually ($conf)"
    fi
  done < <(pg_lsclusters -h 2>/dev/null || true)
}

cmd_install() {
  local bindir
  bindir=$(find_bindir)
  if [[ -z $bindir ]]; then
    say "installing PostgreSQL from Debian's packages ..."
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null
    bindir=$(find_bindir)
    [[ -n $bindir ]] || die "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin after install"
    say "installed $("$bindir/postgres" --version)"
  fi
  disable_system_cluster_on_port
  BIN=$bindir
  if [[ $EUID -eq 0 ]] && ! id postgres >/dev/null 2>&1; then
    useradd --system --user-group --home-dir /var/lib/postgresql --shell /bin/bash postgres
    say "created the system user postgres"
  fi
}

# Every directory on the way to $PG_DIR must be searchable by the postgres user (root 755 usually is).
ensure_traversable() {
  local path="" part parts
  IFS=/ read -r -a parts <<<"${1#/}"
  for part in "${parts[@]}"; do
    [[ -n $part ]] || continue
    path+=/$part
    [[ -d $path ]] || break
    if ! "${AS_OWNER[@]}" test -x "$path"; then
      chmod o+x "$path"
      say "note: made $path searchable (o+x) so the postgres user can reach its data"
    fi
  done
}

pg() { "${AS_OWNER[@]}" "$BIN/$1" "${@:2}"; }

is_running() { [[ -f $DATA/PG_VERSION ]] && pg pg_ctl status -D "$DATA" >/dev/null 2>&1; }

cmd_init() {
  [[ -n ${BIN:-} ]] || cmd_install
  if [[ -f $DATA/PG_VERSION ]]; then
    say "cluster already initialized ($DATA)"
    return
  fi
  mkdir -p "$PG_DIR" "$DATA" "$SOCK_DIR" "$LOG_DIR"
  touch "$LOG"
  if [[ $EUID -eq 0 ]]; then
    ensure_traversable "$PG_DIR"
    chown -R postgres: "$PG_DIR" "$LOG"
  fi
  chmod 700 "$DATA"
  say "initializing a cluster in $DATA ($("$BIN/postgres" --version | awk '{print $3}'), owner $OWNER)"
  pg initdb -D "$DATA" -U postgres -E UTF8 --locale=C.UTF-8 --auth-local=trust --auth-host=trust \
    --no-instructions >"$PG_DIR/initdb.log" 2>&1 || { cat "$PG_DIR/initdb.log" >&2; die "initdb failed"; }

  write_hba  # passwords on TCP (see the header); written again at every start
  "${AS_OWNER[@]}" tee -a "$DATA/postgresql.conf" >/dev/null <<'EOF'

# --- deploy/postgres.sh: project settings; crm.conf (port, addresses) is rewritten at every start.
max_connections = 200
shared_buffers = 256MB
fsync = on
synchronous_commit = on
full_page_writes = on
log_line_prefix = '%m [%p] %q%u@%d '
log_timezone = 'UTC'
timezone = 'UTC'
include_if_exists = 'crm.conf'
EOF
  say "initialized"
}

# The optional TLS and password mode (see the header).
TLS_DIR=$PG_DIR/tls
tls_mode() { [[ -n ${CRM_PG_SERVER_CERT:-} || -n ${CRM_PG_SERVER_KEY:-} ]]; }

# Copies the server's certificate and key beside the data (the key readable by the owner only).
install_tls_files() {
  tls_mode || return 0
  local f
  for f in CRM_PG_SERVER_CERT CRM_PG_SERVER_KEY; do
    [[ -n ${!f:-} ]] || die "TLS mode: set both CRM_PG_SERVER_CERT and CRM_PG_SERVER_KEY"
    [[ -r ${!f} ]] || die "cannot read $f=${!f}"
  done
  [[ -z ${CRM_PG_SERVER_CA:-} || -r $CRM_PG_SERVER_CA ]] || die "cannot read CRM_PG_SERVER_CA=$CRM_PG_SERVER_CA"
  mkdir -p "$TLS_DIR"
  install -m 0644 "$CRM_PG_SERVER_CERT" "$TLS_DIR/server.crt"
  install -m 0600 "$CRM_PG_SERVER_KEY" "$TLS_DIR/server.key"
  if [[ -n ${CRM_PG_SERVER_CA:-} ]]; then install -m 0644 "$CRM_PG_SERVER_CA" "$TLS_DIR/ca.crt"; else rm -f "$TLS_DIR/ca.crt"; fi
  chmod 0700 "$TLS_DIR"
  if [[ $EUID -eq 0 ]]; then chown -R postgres: "$TLS_DIR"; fi
}

write_runtime_conf() {
  "${AS_OWNER[@]}" tee "$DATA/crm.conf" >/dev/null <<EOF
# Written by deploy/postgres.sh at start; edits are overwritten.
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$SOCK_DIR'
# a batch (and a replay's catch-up) holds an advisory lock per customer and identifier it touches;
# the default (64 per connection) ran out rebuilding a log of 1,000,000 events
max_locks_per_transaction = 256
EOF
  if tls_mode; then
    local ca=''
    [[ -f $TLS_DIR/ca.crt ]] && ca=$TLS_DIR/ca.crt
    "${AS_OWNER[@]}" tee -a "$DATA/crm.conf" >/dev/null <<EOF
ssl = on
ssl_cert_file = '$TLS_DIR/server.crt'
ssl_key_file = '$TLS_DIR/server.key'
ssl_ca_file = '$ca'
ssl_min_protocol_version = 'TLSv1.2'
EOF
  fi
  echo "password_encryption = 'scram-sha-256'" | "${AS_OWNER[@]}" tee -a "$DATA/crm.conf" >/dev/null
}

# pg_hba.conf: the unix socket (its directory 0700) is the cluster owner's; TCP needs a password
# for every role, and TLS when the server has a certificate.
write_hba() {
  local tcp="host     "
  tls_mode && tcp="hostnossl all       all   127.0.0.1/32  reject
hostssl  "
  "${AS_OWNER[@]}" tee "$DATA/pg_hba.conf" >/dev/null <<EOF
# Written by deploy/postgres.sh at start; edits are overwritten. A DEV cluster on 127.0.0.1 only.
# The unix socket (its directory 0700) is the cluster owner's; TCP: $(tls_mode && echo "TLS only, ")scram-sha-256.
# TYPE   DATABASE  USER  ADDRESS       METHOD
local    all       all                 trust
${tcp}all       all   127.0.0.1/32  scram-sha-256
EOF
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Administration as the postgres superuser, over the cluster owner's unix socket.
psql_admin() {
  "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$SOCK_DIR" -p "$PORT" -U postgres -d postgres "$@"
}

# A password made once into FILE (mode 0600) unless it exists.
ensure_password_file() {
  [[ -s $1 ]] && return 0
  mkdir -p "$KEY_DIR" && chmod 700 "$KEY_DIR"
  (umask 077; od -An -N24 -tx1 /dev/urandom | tr -d ' \n' > "$1")
  say "made a password for $2 in $1 (mode 0600)"
}

owner_password() { if [[ -n ${CRM_PG_PASSWORD:-} ]]; then printf '%s' "$CRM_PG_PASSWORD"; else cat "$OWNER_PASSWORD_FILE"; fi; }
service_password() {
  if [[ -n ${CRM_PG_SERVICE_PASSWORD:-} ]]; then printf '%s' "$CRM_PG_SERVICE_PASSWORD"; else cat "$SERVICE_PASSWORD_FILE"; fi
}

ensure_role_and_db() {
  [[ -n ${CRM_PG_PASSWORD:-} ]] || ensure_password_file "$OWNER_PASSWORD_FILE" "the owner role $APP_USER"
  [[ -n ${CRM_PG_SERVICE_PASSWORD:-} ]] || ensure_password_file "$SERVICE_PASSWORD_FILE" "the services' role $SERVICE_USER"
  # the passwords reach psql through its environment (\getenv), never a command line
  CRM_PG_OWNER_SECRET=$(owner_password) CRM_PG_SERVICE_SECRET=$(service_password) \
    psql_admin -v role="$APP_USER" -v service="$SERVICE_USER" -v db="$APP_DB" <<'SQL'
\getenv owner_password CRM_PG_OWNER_SECRET
\getenv service_password CRM_PG_SERVICE_SECRET
SELECT format('CREATE ROLE %I LOGIN', :'role') WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role') \gexec
-- the owner makes databases (the tests make one per test) and tables; no superuser
SELECT format('ALTER ROLE %I LOGIN NOSUPERUSER CREATEDB NOCREATEROLE PASSWORD %L', :'role', :'owner_password') \gexec
-- the owner may end the services' connections (a database copy or drop needs none left)
SELECT format('GRANT pg_signal_backend TO %I', :'role') \gexec
SELECT format('CREATE ROLE %I LOGIN', :'service') WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'service') \gexec
SELECT format('ALTER ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD %L', :'service', :'service_password') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'role')
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db') \gexec
SQL
  say "owner role $APP_USER, services' role $SERVICE_USER (passwords in $KEY_DIR/) and database $APP_DB present"
}

migrate() {
  if [[ ! -f $REPO/services/cli.py ]]; then
    say "services/cli.py not there yet: migrations skipped"
    return
  fi
  [[ -x $PY ]] || die "python not found at $PY (set CRM_PYTHON or create <repo>/.venv)"
  say "applying migrations (services.cli db migrate)"
  (cd "$REPO" && CRM_PG_DSN=$DSN CRM_PG_PASSWORD=$(owner_password) CRM_PG_SERVICE_USER=$SERVICE_USER \
     exec "$PY" -m services.cli db migrate) || die "migrations failed"
}

cmd_start() {
  local t0=$SECONDS
  cmd_install
  cmd_init
  install_tls_files
  mkdir -p "$SOCK_DIR"; chmod 0700 "$SOCK_DIR"  # the cluster owner's socket (see the header)
  if is_running; then
    say "already running (port $PORT)"
    write_runtime_conf  # TLS as the environment says now; passwords on TCP
    write_hba
    pg pg_ctl reload -D "$DATA" >/dev/null || die "pg_ctl reload failed; log $LOG"
  else
    port_in_use "$PORT" && die "127.0.0.1:$PORT is already in use by another process (set CRM_PG_PORT)"
    mkdir -p "$SOCK_DIR" "$LOG_DIR"
    touch "$LOG"
    if [[ $EUID -eq 0 ]]; then chown postgres: "$SOCK_DIR" "$LOG"; fi
    write_runtime_conf
    write_hba
    say "starting on 127.0.0.1:$PORT (data $DATA$(tls_mode && echo ", TLS required"), scram-sha-256 passwords)"
    if ! pg pg_ctl start -D "$DATA" -l "$LOG" -w -t 60 >/dev/null; then
      tail -n 30 "$LOG" >&2 || true
      die "pg_ctl start failed; log $LOG"
    fi
    say "running, ready in $((SECONDS - t0))s; log $LOG"
  fi
  ensure_role_and_db
  migrate
  say "the services' DSN: postgresql://$SERVICE_USER@127.0.0.1:$PORT/$APP_DB, password in $SERVICE_PASSWORD_FILE"
}

cmd_stop() {
  BIN=$(find_bindir)
  if [[ -z $BIN ]] || ! is_running; then
    say "not running"
    return 0
  fi
  local t0=$SECONDS
  say "stopping ..."
  pg pg_ctl stop -D "$DATA" -m fast -w -t 60 >/dev/null || die "pg_ctl stop failed; log $LOG"
  say "stopped in $((SECONDS - t0))s"
}

cmd_status() {
  BIN=$(find_bindir)
  if [[ -n $BIN ]] && is_running; then
    say "running (pid $(head -n 1 "$DATA/postmaster.pid"), 127.0.0.1:$PORT, $DSN)"
    return 0
  fi
  say "not running (127.0.0.1:$PORT)"
  return 3
}

cmd_psql() {
  BIN=$(find_bindir)
  [[ -n $BIN ]] || die "PostgreSQL is not installed (deploy/postgres.sh install)"
  # as the owner; libpq takes the password from the environment (PGPASSWORD), not the command line
  PGPASSWORD=$(owner_password)
  export PGPASSWORD
  exec "$BIN/psql" -h 127.0.0.1 -p "$PORT" -U "$APP_USER" -d "$APP_DB" "$@"
}

case ${1:-} in
  install) cmd_install ;;
  init) cmd_init ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  psql) shift; cmd_psql "$@" ;;
  *) echo "usage: $0 {install|init|start|stop|status|psql [args...]}" >&2; exit 2 ;;
esac
