#!/usr/bin/env bash
# Start, stop and inspect the platform's own processes (collector, processors, query API and the
# demo simulator) in the background, with pid files and logs under $CRM_HOME.
#
# usage: deploy/services.sh {start|stop|status} [service...]
#   services: ingest processor api webhooks mail shop simulator (start default: ingest processor api webhooks mail)
#
# Environment: CRM_HOME (<repo>/.crm), CRM_VENV (<repo>/.venv), and the CRM_* settings of the
# services themselves (CRM_KAFKA_BOOTSTRAP, CRM_PG_DSN, CRM_INGEST_PORT, CRM_API_PORT, CRM_WEBHOOKS_PORT, ...).
# CRM_SIMULATOR_ARGS: extra arguments for crm-simulator (default: --rate 150 --backfill 3 --loop: a busy
# shop, with the last 3 hours of history sent first so the 1 h and 24 h windows are not empty).
#
# API keys: `start` makes sure the demo has two keys in the database, created once with `crm keys
# create` and kept in $CRM_HOME/keys/ (mode 0600, never in the repository): simulator.key
# (events:write; the simulator is started with it as CRM_API_KEY) and operator.key (admin: for curl,
# the dashboard and `crm`). A key file whose key is no longer live (a new database) is replaced.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$SCRIPT_DIR")
CRM_HOME=${CRM_HOME:-$REPO/.crm}
VENV=${CRM_VENV:-$REPO/.venv}
RUN_DIR=$CRM_HOME/run
LOG_DIR=$CRM_HOME/logs
KEY_DIR=$CRM_HOME/keys
mkdir -p "$RUN_DIR" "$LOG_DIR"

# The master key of personal data (services/common/vault.py): without CRM_MASTER_KEY or
# CRM_MASTER_KEY_FILE the demo makes one once in $CRM_HOME/keys/master.key (mode 0600, never in the
# repository), which every service and `crm` command of this folder then uses.
ensure_master_key() {
  if [[ -n ${CRM_MASTER_KEY:-} || -n ${CRM_MASTER_KEY_FILE:-} ]]; then return 0; fi
  if [[ ! -s $KEY_DIR/master.key ]]; then
    mkdir -p "$KEY_DIR" && chmod 700 "$KEY_DIR"
    "$VENV/bin/crm" privacy keygen "$KEY_DIR/master.key" >/dev/null
    say "created the master key of personal data: $KEY_DIR/master.key (keep a copy in your secret store)"
  fi
  export CRM_MASTER_KEY_FILE=$KEY_DIR/master.key
}

say() { echo "services: $*"; }

# PostgreSQL as the services' least-privilege role (deploy/postgres.sh makes it and its password,
# kept in $KEY_DIR/postgres-service.password, mode 0600): rows only, no schema changes. The `crm`
# commands run here (keys, operators) need no more. Migrations and `crm replay` run as the owner.
if [[ -z ${CRM_PG_DSN:-} && -s $KEY_DIR/postgres-service.password ]]; then
  export CRM_PG_DSN=postgresql://${CRM_PG_SERVICE_USER:-crm_service}@127.0.0.1:${CRM_PG_PORT:-5432}/${CRM_PG_DB:-crm}
  CRM_PG_PASSWORD=$(cat "$KEY_DIR/postgres-service.password")
  export CRM_PG_PASSWORD
fi

# The demo's webhook receivers run on this machine: let webhooks reach loopback by name (anywhere
# else webhooks reach public addresses only; README: Security and privacy).
export CRM_WEBHOOKS_ALLOWED_HOSTS=${CRM_WEBHOOKS_ALLOWED_HOSTS-127.0.0.1,localhost}

command_of() {
  case $1 in
    ingest) echo "$VENV/bin/crm-ingest" ;;
    processor) echo "$VENV/bin/crm-processor" ;;
    api) echo "$VENV/bin/crm-api" ;;
    webhooks) echo "$VENV/bin/crm-webhooks" ;;
    mail) echo "$VENV/bin/crm-mail" ;;
    # the demo shop's static pages (examples/shop), on an origin of their own for the web tracker
    shop) echo "$VENV/bin/python -m http.server ${CRM_SHOP_PORT:-8081} --bind 127.0.0.1 --directory $REPO/examples/shop" ;;
    # shellcheck disable=SC2086
    simulator) echo "$VENV/bin/crm-simulator ${CRM_SIMULATOR_ARGS:---rate 150 --backfill 3 --loop}" ;;
    *) echo "services: unknown service $1" >&2; exit 2 ;;
  esac
}

health_url() {
  case $1 in
    ingest) echo "http://127.0.0.1:${CRM_INGEST_PORT:-8080}/healthz" ;;
    api) echo "http://127.0.0.1:${CRM_API_PORT:-8000}/healthz" ;;
    processor) echo "http://127.0.0.1:${CRM_PROCESSOR_WEB_PORT:-6066}/healthz" ;;
    webhooks) echo "http://127.0.0.1:${CRM_WEBHOOKS_PORT:-8090}/healthz" ;;
    mail) echo "http://127.0.0.1:${CRM_MAIL_WEB_PORT:-8025}/healthz" ;;
    shop) echo "http://127.0.0.1:${CRM_SHOP_PORT:-8081}/index.html" ;;
    *) echo "" ;;
  esac
}

# ensure_key NAME KEY_NAME SCOPES [crm keys create options]: $KEY_DIR/NAME.key holds a live key, made now if needed.
ensure_key() {
  local file=$KEY_DIR/$1.key rc=0
  if [[ -s $file ]]; then
    "$VENV/bin/crm" keys verify --key-file "$file" >/dev/null 2>&1 || rc=$?
    if [[ $rc == 0 ]]; then return 0; fi
    if [[ $rc != 3 ]]; then say "cannot check the $1 API key (is PostgreSQL up and migrated?)"; return 1; fi
    say "the $1 API key in $file is not live in this database; making a new one"
    rm -f "$file"
  fi
  "$VENV/bin/crm" keys create --name "$2" --scopes "$3" "${@:4}" --key-file "$file" >/dev/null \
    || { say "could not create the $1 API key"; return 1; }
  say "created the $1 API key ($3)"
}

ensure_keys() {
  mkdir -p "$KEY_DIR"
  chmod 700 "$KEY_DIR"
  ensure_key simulator demo-simulator events:write
  ensure_key operator demo-operator admin
  ensure_key mail demo-mail events:write
  ensure_key shop demo-shop events:write --publishable --origin "http://127.0.0.1:${CRM_SHOP_PORT:-8081}"
  say "API keys in $KEY_DIR/ (mode 0600): operator.key (admin), simulator.key and mail.key (events:write), shop.key (publishable); e.g."
  say "  curl -H \"Authorization: Bearer \$(cat $KEY_DIR/operator.key)\" http://127.0.0.1:${CRM_API_PORT:-8000}/v1/indicators"
  ensure_operator
}

# The dashboard's demo operator: username demo, its password made once and kept in
# $KEY_DIR/dashboard.password (mode 0600, never in the repository).
ensure_operator() {
  local file=$KEY_DIR/dashboard.password
  if [[ ! -s $file ]]; then
    (umask 077; "$VENV/bin/python" -c 'import secrets; print(secrets.token_urlsafe(15))' > "$file")
  fi
  # No display name: the page then shows the username, which reads the same in English and Chinese.
  "$VENV/bin/crm" operators add demo --password-stdin --if-missing < "$file" >/dev/null \
    || { say "could not create the dashboard's demo operator"; return 1; }
  say "dashboard sign-in: user demo, password in $file"
}

running() {
  local pid_file=$RUN_DIR/$1.pid
  [[ -f $pid_file ]] && kill -0 "$(cat "$pid_file")" 2>/dev/null
}

start_one() {
  local name=$1
  if running "$name"; then say "$name already running (pid $(cat "$RUN_DIR/$name.pid"))"; return 0; fi
  local cmd; cmd=$(command_of "$name")
  local -a with_key=()  # the simulator's key, in its environment only
  if [[ $name == simulator || $name == mail ]]; then with_key=(env "CRM_API_KEY=$(cat "$KEY_DIR/$name.key")"); fi
  # shellcheck disable=SC2086
  setsid nohup "${with_key[@]}" $cmd >>"$LOG_DIR/$name.log" 2>&1 < /dev/null &
  echo $! > "$RUN_DIR/$name.pid"
  local url; url=$(health_url "$name")
  if [[ -n $url ]]; then
    for _ in $(seq 1 120); do
      if curl -fsS -o /dev/null "$url" 2>/dev/null; then say "$name up (pid $(cat "$RUN_DIR/$name.pid"), $url)"; return 0; fi
      if ! running "$name"; then say "$name exited during start; last log lines:"; tail -n 30 "$LOG_DIR/$name.log" >&2; return 1; fi
      sleep 0.5
    done
    say "$name did not become healthy within 60 s; see $LOG_DIR/$name.log"; return 1
  fi
  say "$name started (pid $(cat "$RUN_DIR/$name.pid"), log $LOG_DIR/$name.log)"
}

stop_one() {
  local name=$1 pid_file=$RUN_DIR/$1.pid
  if ! running "$name"; then rm -f "$pid_file"; return 0; fi
  local pid; pid=$(cat "$pid_file")
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  if kill -0 "$pid" 2>/dev/null; then say "$name did not stop in 30 s; killing"; kill -KILL -- "-$pid" 2>/dev/null || true; fi
  rm -f "$pid_file"
  say "$name stopped"
}

action=${1:-}
shift || true
case $action in
  start) ensure_master_key; ensure_keys; for s in "${@:-ingest processor api webhooks mail}"; do for t in $s; do start_one "$t"; done; done ;;
  stop) for s in "${@:-simulator shop mail webhooks api processor ingest}"; do for t in $s; do stop_one "$t"; done; done ;;
  status)
    rc=0
    for s in ${*:-ingest processor api webhooks mail shop simulator}; do
      if running "$s"; then say "$s running (pid $(cat "$RUN_DIR/$s.pid"))"; else say "$s not running"; rc=3; fi
    done
    exit $rc ;;
  *) echo "usage: $0 {start|stop|status} [ingest|processor|api|webhooks|mail|shop|simulator ...]" >&2; exit 2 ;;
esac
