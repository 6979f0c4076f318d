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
# server when that head's GCS process ends: `ray down` runs only `ray stop` on the head (Ray has no teardown hook;
# the clouds then delete the machine, an on-premise head stays up), so this is how `ray down` ends the server.
# The watcher polls /proc and counts a zombie as ended: a GCS orphaned by `ray start` whose new parent never reaps
# (a container's or a pid namespace's pid 1) stays a zombie, on which `tail --pid`/`kill -0` would wait forever.
# Settings (environment): MLFLOW_HOST (127.0.0.1: reach it through an SSH tunnel), MLFLOW_PORT (5000),
# MLFLOW_WORKERS (2), MLFLOW_STATE_DIR (where the pid file and log go: $HOME), MLFLOW_START_TIMEOUT_S (120),
# MLFLOW_STOP_WITH_PID (the process whose end stops the server; default: this user's newest gcs_server, the head
# that `ray start --head` has just started).
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
        if runs "$pid" "$2"; then
            kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
            # SIGKILL is delivered asynchronously: return only once it is gone, so a restart finds the port free.
            for _ in $(seq 50); do runs "$pid" "$2" || break; sleep 0.1; done
        fi
    fi
    rm -f "$1"
}

stop() {
    stop_pid_file "$watcher_file" "mlflow_server.sh watch"
    stop_pid_file "$pid_file" "mlflow server"
}

# Whether pid $1 still runs, named $2: gone, a zombie (state Z/X) or a reused pid (another name) is ended.
running() {
    local stat
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
    [ "$(cat "/proc/$1/comm" 2>/dev/null)" = "$2" ] || return 1
    case "${stat##*) }" in Z*|X*) return 1 ;; esac
}

watch() {  # $1: the Ray head's GCS pid, $2: the server's pid; stops that server if it is still the one started
    local name
    name="$(cat "/proc/$1/comm" 2>/dev/null || true)"
    while [ -n "$name" ] && running "$1" "$name"; do sleep 1; done
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
    local gcs="${MLFLOW_STOP_WITH_PID:-}"
    # By process name (no other Ray process), the newest: the head just started, not an older one of this user.
    [ -n "$gcs" ] || gcs="$(pgrep -n -u "$(id -u)" -x gcs_server || true)"
    echo "mlflow-server: serving $1 on http://$host:$port (pid $pid, log $log_file)"
    if [ -n "$gcs" ]; then
        setsid nohup "$(readlink -f "$0")" watch "$gcs" "$pid" > /dev/null 2>&1 < /dev/null &
        echo "$!" > "$watcher_file"
        echo "mlflow-server: stops when process $gcs ($(cat "/proc/$gcs/comm" 2>/dev/null || echo gone)) ends," \
            "as at ray stop / ray down"
    else
        echo "mlflow-server: no Ray head of this user runs here: it stops only with '$0 stop'"
    fi
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
