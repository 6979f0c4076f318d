#!/usr/bin/env bash
# The head node's MLflow server, started and stopped by one script so that `ray up` can run it again and again:
#
#   clusters/mlflow_server.sh start BACKEND_STORE_URI ARTIFACTS_DESTINATION
#   clusters/mlflow_server.sh stop
#   clusters/mlflow_server.sh status
#
# start: stops the server this script started before (by its pid file, and only if that pid is still an MLflow
# server), starts a new one in its own session, writes its pid, and waits until /health answers; on failure it
# prints the log's tail and exits 1. With a Ray head of this user running, it also leaves a watcher that stops the
# server when that head stops: `ray down` runs `ray stop` on the head (and nothing else on an on-premise head),
# so this is how `ray down` ends the server there too.
# Settings (environment): MLFLOW_HOST (127.0.0.1: reach it through an SSH tunnel), MLFLOW_PORT (5000),
# MLFLOW_WORKERS (2), MLFLOW_STATE_DIR (where the pid file and log go: $HOME), MLFLOW_START_TIMEOUT_S (120).
set -euo pipefail

host="${MLFLOW_HOST:-127.0.0.1}"
port="${MLFLOW_PORT:-5000}"
workers="${MLFLOW_WORKERS:-2}"
state_dir="${MLFLOW_STATE_DIR:-$HOME}"
timeout_s="${MLFLOW_START_TIMEOUT_S:-120}"
pid_file="$state_dir/mlflow-server.pid"
watcher_file="$state_dir/mlflow-server.watcher.pid"
log_file="$state_dir/mlflow-server.log"

# Whether pid $1 is alive and runs command line text $2 (a stale pid file may name a pid reused by another program).
runs() {
    [ -n "$1" ] && [ -r "/proc/$1/cmdline" ] && tr '\0' ' ' < "/proc/$1/cmdline" | grep -q -- "$2"
}

healthy() {
    python3 - "$host" "$port" <<'EOF'
import sys, urllib.request
try:
    with urllib.request.urlopen(f"http://{sys.argv[1]}:{sys.argv[2]}/health", timeout=2) as response:
        sys.exit(0 if response.status == 200 else 1)
except Exception:
    sys.exit(1)
EOF
}

stop_pid_file() {  # $1: pid file, $2: what its process must be running
    local pid
    pid="$(cat "$1" 2>/dev/null || true)"
    if runs "$pid" "$2"; then
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 100); do runs "$pid" "$2" || break; sleep 0.1; done
        if runs "$pid" "$2"; then kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true; fi
    fi
    rm -f "$1"
}

stop() {
    stop_pid_file "$watcher_file" "mlflow_server.sh watch"
    stop_pid_file "$pid_file" "mlflow server"
}

watch() {  # $1: the Ray head's GCS pid, $2: the server's pid; stops that server if it is still the one started
    tail --pid="$1" -f /dev/null
    if [ "$(cat "$pid_file" 2>/dev/null)" = "$2" ]; then
        rm -f "$watcher_file"
        stop_pid_file "$pid_file" "mlflow server"
    fi
}

start() {
    if [ "$#" -ne 2 ]; then
        echo "usage: $0 start BACKEND_STORE_URI ARTIFACTS_DESTINATION" >&2
        exit 2
    fi
    command -v mlflow > /dev/null || { echo "mlflow-server: no mlflow command on PATH ($PATH)" >&2; exit 1; }
    mkdir -p "$state_dir"
    stop
    if healthy; then
        echo "mlflow-server: something else already answers on $host:$port; stop it or set MLFLOW_PORT" >&2
        exit 1
    fi
    setsid nohup mlflow server --host "$host" --port "$port" --workers "$workers" --backend-store-uri "$1" \
        --artifacts-destination "$2" > "$log_file" 2>&1 < /dev/null &
    local pid=$!
    echo "$pid" > "$pid_file"
    local deadline=$((SECONDS + timeout_s))
    until healthy; do
        if ! runs "$pid" "mlflow server" || [ "$SECONDS" -ge "$deadline" ]; then
            echo "mlflow-server: the server did not answer http://$host:$port/health within ${timeout_s} s; $log_file ends:" >&2
            tail -n 20 "$log_file" >&2 || true
            stop
            exit 1
        fi
        sleep 0.5
    done
    local gcs
    gcs="$(pgrep -u "$(id -u)" -x gcs_server | head -n 1 || true)"  # the process name: no other Ray process
    if [ -n "$gcs" ]; then
        setsid nohup "$(readlink -f "$0")" watch "$gcs" "$pid" > /dev/null 2>&1 < /dev/null &
        echo "$!" > "$watcher_file"
    fi
    echo "mlflow-server: serving $1 on http://$host:$port (pid $pid, log $log_file)"
}

case "${1:-}" in
    start) shift; start "$@" ;;
    stop) stop; echo "mlflow-server: stopped" ;;
    watch) shift; watch "$@" ;;
    status)
        if runs "$(cat "$pid_file" 2>/dev/null || true)" "mlflow server" && healthy; then
            echo "mlflow-server: running on http://$host:$port (pid $(cat "$pid_file"))"
        else
            echo "mlflow-server: not running"; exit 3
        fi ;;
    *) echo "usage: $0 start BACKEND_STORE_URI ARTIFACTS_DESTINATION | stop | status" >&2; exit 2 ;;
esac
