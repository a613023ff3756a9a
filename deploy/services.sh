#!/usr/bin/env bash
# Start, stop and inspect the platform's own processes (collector, processors, query API and the
# demo simulator) in the background, with pid files and logs under $CRM_HOME.
#
# usage: deploy/services.sh {start|stop|status} [service...]
#   services: ingest processor api webhooks simulator (start default: ingest processor api webhooks)
#
# Environment: CRM_HOME (<repo>/.crm), CRM_VENV (<repo>/.venv), and the CRM_* settings of the
# services themselves (CRM_KAFKA_BOOTSTRAP, CRM_PG_DSN, CRM_INGEST_PORT, CRM_API_PORT, CRM_WEBHOOKS_PORT, ...).
# CRM_SIMULATOR_ARGS: extra arguments for crm-simulator (default: --rate 20 --loop).
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$SCRIPT_DIR")
CRM_HOME=${CRM_HOME:-$REPO/.crm}
VENV=${CRM_VENV:-$REPO/.venv}
RUN_DIR=$CRM_HOME/run
LOG_DIR=$CRM_HOME/logs
mkdir -p "$RUN_DIR" "$LOG_DIR"

say() { echo "services: $*"; }

command_of() {
  case $1 in
    ingest) echo "$VENV/bin/crm-ingest" ;;
    processor) echo "$VENV/bin/crm-processor" ;;
    api) echo "$VENV/bin/crm-api" ;;
    webhooks) echo "$VENV/bin/crm-webhooks" ;;
    # shellcheck disable=SC2086
    simulator) echo "$VENV/bin/crm-simulator ${CRM_SIMULATOR_ARGS:---rate 20 --loop}" ;;
    *) echo "services: unknown service $1" >&2; exit 2 ;;
  esac
}

health_url() {
  case $1 in
    ingest) echo "http://127.0.0.1:${CRM_INGEST_PORT:-8080}/healthz" ;;
    api) echo "http://127.0.0.1:${CRM_API_PORT:-8000}/healthz" ;;
    processor) echo "http://127.0.0.1:${CRM_PROCESSOR_WEB_PORT:-6066}/healthz" ;;
    webhooks) echo "http://127.0.0.1:${CRM_WEBHOOKS_PORT:-8090}/healthz" ;;
    *) echo "" ;;
  esac
}

running() {
  local pid_file=$RUN_DIR/$1.pid
  [[ -f $pid_file ]] && kill -0 "$(cat "$pid_file")" 2>/dev/null
}

start_one() {
  local name=$1
  if running "$name"; then say "$name already running (pid $(cat "$RUN_DIR/$name.pid"))"; return 0; fi
  local cmd; cmd=$(command_of "$name")
  # shellcheck disable=SC2086
  setsid nohup $cmd >>"$LOG_DIR/$name.log" 2>&1 < /dev/null &
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
  start) for s in "${@:-ingest processor api webhooks}"; do for t in $s; do start_one "$t"; done; done ;;
  stop) for s in "${@:-simulator webhooks api processor ingest}"; do for t in $s; do stop_one "$t"; done; done ;;
  status)
    rc=0
    for s in ${*:-ingest processor api webhooks simulator}; do
      if running "$s"; then say "$s running (pid $(cat "$RUN_DIR/$s.pid"))"; else say "$s not running"; rc=3; fi
    done
    exit $rc ;;
  *) echo "usage: $0 {start|stop|status} [ingest|processor|api|webhooks|simulator ...]" >&2; exit 2 ;;
esac
