#!/usr/bin/env bash
# Single-node Apache Kafka (KRaft, combined broker+controller) for development and tests,
# run with the machine's Java from the broker jars on Maven Central. No Docker.
#
# usage: deploy/kafka.sh {fetch|format|start|stop|status|restart}
#
# Environment (defaults):
#   CRM_HOME                   project data folder (<repo>/.crm); Kafka lives in $CRM_HOME/kafka
#   CRM_KAFKA_PORT             client listener on 127.0.0.1 (9092)
#   CRM_KAFKA_CONTROLLER_PORT  KRaft controller listener on 127.0.0.1 (9093)
#   CRM_KAFKA_HEAP             JVM heap, -Xms and -Xmx (512m)
#   CRM_KAFKA_JVM_OPTS         extra JVM options, appended
#   CRM_KAFKA_STOP_TIMEOUT     seconds to wait for a clean shutdown before SIGKILL (30)
#   CRM_PARTITIONS             partitions of the crm.* topics created at start (4)
#   CRM_PYTHON                 Python with the project's requirements (<repo>/.venv/bin/python)
#
# Optional secured listener (docs/transport-security.md), on when CRM_KAFKA_SECURE_PORT is set:
#   CRM_KAFKA_SECURE_PORT              a SASL_SSL listener on 127.0.0.1 (the PLAINTEXT one stays, loopback
#                                      only, for the broker itself and this script's tooling)
#   CRM_KAFKA_SSL_KEYSTORE             the broker's PKCS12 keystore (key + certificate, e.g. made by keytool)
#   CRM_KAFKA_SSL_KEYSTORE_PASSWORD    its password; the broker reads it from its environment
#                                      (${env:...} config provider), it is not written to server.properties
#   CRM_KAFKA_SASL_MECHANISM           SCRAM-SHA-512 (default), SCRAM-SHA-256 or PLAIN
#   CRM_KAFKA_SASL_USERNAME / _PASSWORD  the client user: a SCRAM credential set at every start, or the
#                                      PLAIN user (password likewise read from the environment)
#   CRM_KAFKA_SSL_CAFILE               the CA that signed the keystore's certificate: the readiness check
#                                      over the secured listener verifies the broker with it, as clients do
# The secrets are never on a command line nor in a file this script writes.
#
# Files: jars $CRM_HOME/kafka/libs, data $CRM_HOME/kafka/data, rendered config
# $CRM_HOME/kafka/server.properties, pid $CRM_HOME/run/kafka.pid, log $CRM_HOME/logs/kafka.log.
# Exit codes: 0 ok, 1 failure, 2 usage, 3 `status` when not running.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$SCRIPT_DIR")
CRM_HOME=${CRM_HOME:-$REPO/.crm}
case $CRM_HOME in /*) ;; *) CRM_HOME=$PWD/$CRM_HOME ;; esac

PORT=${CRM_KAFKA_PORT:-9092}
CONTROLLER_PORT=${CRM_KAFKA_CONTROLLER_PORT:-9093}
HEAP=${CRM_KAFKA_HEAP:-512m}
STOP_TIMEOUT=${CRM_KAFKA_STOP_TIMEOUT:-30}
PARTITIONS=${CRM_PARTITIONS:-4}
PY=${CRM_PYTHON:-$REPO/.venv/bin/python}
BOOTSTRAP=127.0.0.1:$PORT
SECURE_PORT=${CRM_KAFKA_SECURE_PORT:-}
SECURE_BOOTSTRAP=${SECURE_PORT:+127.0.0.1:$SECURE_PORT}
SASL_MECHANISM=${CRM_KAFKA_SASL_MECHANISM:-SCRAM-SHA-512}

POM=$SCRIPT_DIR/kafka/pom.xml
TEMPLATE=$SCRIPT_DIR/kafka/server.properties.template
LOG4J=$SCRIPT_DIR/kafka/log4j.properties
KAFKA_DIR=$CRM_HOME/kafka
LIBS=$KAFKA_DIR/libs
DATA=$KAFKA_DIR/data
CONF=$KAFKA_DIR/server.properties
RUN_DIR=$CRM_HOME/run
PID_FILE=$RUN_DIR/kafka.pid
LOG_DIR=$CRM_HOME/logs
LOG=$LOG_DIR/kafka.log

VERSION=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$POM")
[[ -n $VERSION ]] || { echo "kafka: ERROR: no <kafka.version> in $POM" >&2; exit 1; }

say() { echo "kafka: $*"; }
die() { echo "kafka: ERROR: $*" >&2; exit 1; }

java_bin() {
  if [[ -n ${JAVA_HOME:-} && -x $JAVA_HOME/bin/java ]]; then echo "$JAVA_HOME/bin/java"
  else command -v java || die "java not found (Java 17 is needed: apt-get install openjdk-17-jre-headless)"; fi
}

# True when pid $1 exists and is not a zombie.
proc_alive() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [[ ${stat%% *} != Z ]]
}

# Prints the broker's pid when the pid file names a live broker of THIS $CRM_HOME.
running_pid() {
  local pid
  [[ -f $PID_FILE ]] || return 1
  pid=$(<"$PID_FILE")
  [[ $pid =~ ^[0-9]+$ ]] && proc_alive "$pid" || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "kafka.Kafka $CONF" || return 1
  echo "$pid"
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

check_python() { [[ -x $PY ]] || die "python not found at $PY (set CRM_PYTHON or create <repo>/.venv)"; }

# The PLAINTEXT loopback listener, whatever CRM_KAFKA_SECURITY_PROTOCOL the caller's environment holds.
py_admin() { (cd "$REPO" && CRM_KAFKA_SECURITY_PROTOCOL=PLAINTEXT exec "$PY" -m services.common.kafka_admin "$@"); }

# The secured listener, as a client configured by the environment (CRM_KAFKA_SASL_*, CRM_KAFKA_SSL_*).
py_admin_secure() {
  (cd "$REPO" && CRM_KAFKA_SECURITY_PROTOCOL=SASL_SSL CRM_KAFKA_SASL_MECHANISM=$SASL_MECHANISM \
    exec "$PY" -m services.common.kafka_admin "$@")
}

# Checks the secured listener's settings before anything starts (nothing secret is printed).
check_secure_env() {
  [[ -n $SECURE_PORT ]] || return 0
  local missing=() v
  for v in CRM_KAFKA_SSL_KEYSTORE CRM_KAFKA_SSL_KEYSTORE_PASSWORD CRM_KAFKA_SASL_USERNAME CRM_KAFKA_SASL_PASSWORD; do
    [[ -n ${!v:-} ]] || missing+=("$v")
  done
  ((${#missing[@]} == 0)) || die "CRM_KAFKA_SECURE_PORT is set: set ${missing[*]} too (docs/transport-security.md)"
  [[ -r $CRM_KAFKA_SSL_KEYSTORE ]] || die "cannot read the keystore CRM_KAFKA_SSL_KEYSTORE=$CRM_KAFKA_SSL_KEYSTORE"
  case $SASL_MECHANISM in SCRAM-SHA-256|SCRAM-SHA-512|PLAIN) ;;
    *) die "CRM_KAFKA_SASL_MECHANISM must be SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN (not $SASL_MECHANISM)" ;; esac
  [[ $CRM_KAFKA_SASL_USERNAME =~ ^[A-Za-z0-9._-]+$ ]] || die "CRM_KAFKA_SASL_USERNAME: letters, digits, . _ - only"
  [[ $SECURE_PORT != "$PORT" && $SECURE_PORT != "$CONTROLLER_PORT" ]] || die "CRM_KAFKA_SECURE_PORT must differ from the other ports"
}

log_tail() {
  echo "----- last lines of $LOG -----" >&2
  tail -n 40 "$LOG" >&2 2>/dev/null || true
  echo "-----" >&2
}

cmd_fetch() {
  local marker=$LIBS/.kafka-version tmp
  if [[ -f $marker && $(<"$marker") == "$VERSION" ]]; then
    say "Kafka $VERSION jars already fetched ($LIBS)"
    return
  fi
  if running_pid >/dev/null; then die "a broker is running from $LIBS: stop it before fetching $VERSION"; fi
  command -v mvn >/dev/null || die "mvn not found (apt-get install maven)"
  say "fetching Kafka $VERSION jars from Maven Central into $LIBS ..."
  mkdir -p "$KAFKA_DIR"
  tmp=$LIBS.tmp.$$
  rm -rf "$tmp"
  if ! mvn -B -Dstyle.color=never -f "$POM" dependency:copy-dependencies -DincludeScope=runtime \
      -DoutputDirectory="$tmp" >"$KAFKA_DIR/fetch.log" 2>&1; then
    tail -n 30 "$KAFKA_DIR/fetch.log" >&2
    rm -rf "$tmp"
    die "mvn dependency:copy-dependencies failed (full output: $KAFKA_DIR/fetch.log)"
  fi
  [[ -f $tmp/kafka_2.13-$VERSION.jar ]] || { rm -rf "$tmp"; die "kafka_2.13-$VERSION.jar missing after fetch"; }
  rm -rf "$LIBS"
  mv "$tmp" "$LIBS"
  echo "$VERSION" >"$LIBS/.kafka-version"
  say "fetched $(find "$LIBS" -name '*.jar' | wc -l) jars"
}

render_config() {
  mkdir -p "$KAFKA_DIR" "$DATA"
  local secure=()
  if [[ -n $SECURE_PORT ]]; then  # the SASL_SSL listener beside the PLAINTEXT one
    secure=(-e "s|^listeners=\(.*\)$|listeners=\1,SASL_SSL://127.0.0.1:$SECURE_PORT|"
            -e "s|^advertised.listeners=\(.*\)$|advertised.listeners=\1,SASL_SSL://127.0.0.1:$SECURE_PORT|"
            -e "s|^listener.security.protocol.map=\(.*\)$|listener.security.protocol.map=\1,SASL_SSL:SASL_SSL|")
  fi
  sed -e "s|@PORT@|$PORT|g" -e "s|@CONTROLLER_PORT@|$CONTROLLER_PORT|g" -e "s|@DATA_DIR@|$DATA|g" \
    "${secure[@]}" "$TEMPLATE" >"$CONF.tmp"
  [[ -z $SECURE_PORT ]] || secure_config >>"$CONF.tmp"
  mv "$CONF.tmp" "$CONF"
}

# The secured listener's TLS and SASL settings; its secrets stay references to the broker's environment.
secure_config() {
  local mech=$SASL_MECHANISM login
  if [[ $mech == PLAIN ]]; then
    login="org.apache.kafka.common.security.plain.PlainLoginModule required user_$CRM_KAFKA_SASL_USERNAME=\"\${env:CRM_KAFKA_SASL_PASSWORD}\";"
  else
    login="org.apache.kafka.common.security.scram.ScramLoginModule required;"
  fi
  cat <<EOF

# --- Rendered by deploy/kafka.sh from CRM_KAFKA_SECURE_PORT (docs/transport-security.md): the SASL_SSL
# listener. Passwords are read from the broker's environment, never written here.
config.providers=env
config.providers.env.class=org.apache.kafka.common.config.provider.EnvVarConfigProvider
config.providers.env.param.allowlist.pattern=^CRM_KAFKA_(SSL_KEYSTORE|SASL)_PASSWORD\$
ssl.keystore.type=PKCS12
ssl.keystore.location=$CRM_KAFKA_SSL_KEYSTORE
ssl.keystore.password=\${env:CRM_KAFKA_SSL_KEYSTORE_PASSWORD}
ssl.client.auth=none
sasl.enabled.mechanisms=$mech
listener.name.sasl_ssl.${mech,,}.sasl.jaas.config=$login
EOF
}

# The command-line tools (StorageTool) log only warnings, to stderr.
tool_java_opts() {
  printf '%s\n' 'log4j.rootLogger=WARN, stderr' \
    'log4j.appender.stderr=org.apache.log4j.ConsoleAppender' \
    'log4j.appender.stderr.Target=System.err' \
    'log4j.appender.stderr.layout=org.apache.log4j.PatternLayout' \
    'log4j.appender.stderr.layout.ConversionPattern=[%d] %p %m (%c)%n' >"$KAFKA_DIR/tools-log4j.properties"
  JAVA_OPTS=(-Xmx256m -Djava.awt.headless=true "-Dlog4j.configuration=file:$KAFKA_DIR/tools-log4j.properties")
}

cmd_format() {
  cmd_fetch
  render_config
  if [[ -f $DATA/meta.properties ]]; then
    say "storage already formatted ($DATA)"
    return
  fi
  local java cluster_id
  java=$(java_bin)
  tool_java_opts
  cluster_id=$("$java" "${JAVA_OPTS[@]}" -cp "$LIBS/*" kafka.tools.StorageTool random-uuid | tail -n 1)
  say "formatting $DATA (cluster id $cluster_id)"
  "$java" "${JAVA_OPTS[@]}" -cp "$LIBS/*" kafka.tools.StorageTool format -t "$cluster_id" -c "$CONF" \
    | sed 's/^/kafka:   /'
  [[ -f $DATA/meta.properties ]] || die "StorageTool format did not write $DATA/meta.properties"
}

# Waits for produce+fetch to work while watching the broker; on death prints its log and fails.
wait_ready() {
  local pid=$1 timeout=$2 rpid rc
  (cd "$REPO" && CRM_KAFKA_SECURITY_PROTOCOL=PLAINTEXT \
    exec "$PY" -m services.common.kafka_admin ready --bootstrap "$BOOTSTRAP" --timeout "$timeout") &
  rpid=$!   # the python process itself (exec), so kill reaches it
  while proc_alive "$rpid"; do
    if ! running_pid >/dev/null; then
      kill "$rpid" 2>/dev/null || true
      wait "$rpid" 2>/dev/null || true
      rm -f "$PID_FILE"
      log_tail
      die "the broker (pid $pid) died during start-up"
    fi
    sleep 0.3
  done
  rc=0
  wait "$rpid" || rc=$?
  return "$rc"
}

# The secured listener: its user (a SCRAM credential, set over the PLAINTEXT loopback listener), then
# a produce+fetch through it as a client configured by the environment.
secure_ready() {
  [[ -n $SECURE_PORT ]] || return 0
  if [[ $SASL_MECHANISM != PLAIN ]]; then
    CRM_KAFKA_SASL_MECHANISM=$SASL_MECHANISM py_admin scram-user --bootstrap "$BOOTSTRAP" \
      | sed 's/^kafka_admin: /kafka: /'
  fi
  py_admin_secure ready --bootstrap "$SECURE_BOOTSTRAP" --timeout 60 | sed 's/^kafka_admin: /kafka: /' \
    || die "the SASL_SSL listener $SECURE_BOOTSTRAP does not serve produce/fetch (CRM_KAFKA_SSL_CAFILE set? see $LOG)"
}

cmd_start() {
  local pid java t0=$SECONDS extra=()
  check_python
  check_secure_env
  if pid=$(running_pid); then
    say "already running (pid $pid, $BOOTSTRAP${SECURE_PORT:+, SASL_SSL $SECURE_BOOTSTRAP})"
    wait_ready "$pid" 30 >/dev/null || die "running but not serving produce/fetch; see $LOG"
    py_admin create-topics --bootstrap "$BOOTSTRAP" --partitions "$PARTITIONS" | sed 's/^kafka_admin: /kafka: /'
    secure_ready
    return
  fi
  rm -f "$PID_FILE"
  cmd_format
  for p in "$PORT" "$CONTROLLER_PORT" $SECURE_PORT; do
    port_in_use "$p" && die "127.0.0.1:$p is already in use by another process (set CRM_KAFKA_PORT / CRM_KAFKA_CONTROLLER_PORT${SECURE_PORT:+ / CRM_KAFKA_SECURE_PORT})"
  done
  java=$(java_bin)
  mkdir -p "$RUN_DIR" "$LOG_DIR"
  [[ -f $LOG ]] && mv -f "$LOG" "$LOG.1"   # keep the previous run's log
  read -r -a extra <<<"${CRM_KAFKA_JVM_OPTS:-}"
  local jvm=(
    "-Xms$HEAP" "-Xmx$HEAP"
    -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent
    -Djava.awt.headless=true "-Dlog4j.configuration=file:$LOG4J" "-Dkafka.logs.dir=$LOG_DIR"
    "${extra[@]}"
  )
  say "starting Kafka $VERSION on $BOOTSTRAP${SECURE_PORT:+ and SASL_SSL $SECURE_BOOTSTRAP ($SASL_MECHANISM)} (controller 127.0.0.1:$CONTROLLER_PORT, heap $HEAP, data $DATA)"
  # setsid: own session, so the broker outlives this shell and a Ctrl-C here. The inner shell
  # writes its own pid, then execs java, so the pid file names the JVM itself.
  # shellcheck disable=SC2016  # $$ and $@ belong to the inner shell
  (cd "$KAFKA_DIR" && exec nohup setsid bash -c 'echo $$ >"$0"; exec "$@"' "$PID_FILE" \
    "$java" "${jvm[@]}" -cp "$LIBS/*" kafka.Kafka "$CONF" >>"$LOG" 2>&1 </dev/null) &
  for _ in $(seq 50); do [[ -s $PID_FILE ]] && break; sleep 0.1; done
  pid=$(<"$PID_FILE") || die "no pid file written"
  if ! wait_ready "$pid" 90; then
    log_tail
    say "stopping the broker that did not become ready"
    cmd_stop >/dev/null || true
    die "Kafka did not become ready on $BOOTSTRAP"
  fi
  say "running (pid $pid), ready in $((SECONDS - t0))s; log $LOG"
  py_admin create-topics --bootstrap "$BOOTSTRAP" --partitions "$PARTITIONS" | sed 's/^kafka_admin: /kafka: /'
  secure_ready
}

cmd_stop() {
  local pid i t0=$SECONDS
  if ! pid=$(running_pid); then
    rm -f "$PID_FILE"
    say "not running"
    return 0
  fi
  say "stopping (pid $pid) ..."
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do
    proc_alive "$pid" || break
    sleep 0.1
  done
  if proc_alive "$pid"; then
    say "no clean shutdown after ${STOP_TIMEOUT}s: sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do proc_alive "$pid" || break; sleep 0.1; done
  fi
  rm -f "$PID_FILE"
  say "stopped in $((SECONDS - t0))s"
}

cmd_status() {
  local pid
  if pid=$(running_pid); then
    say "running (pid $pid, $BOOTSTRAP, data $DATA)"
    return 0
  fi
  say "not running ($BOOTSTRAP)"
  return 3
}

case ${1:-} in
  fetch) cmd_fetch ;;
  format) cmd_format ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  restart) cmd_stop; cmd_start ;;
  *) echo "usage: $0 {fetch|format|start|stop|status|restart}" >&2; exit 2 ;;
esac
