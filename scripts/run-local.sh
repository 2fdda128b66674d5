#!/usr/bin/env bash
# `make run`: the service on this machine, without Docker, until Ctrl-C.
#
# 1. Redis: the one at $REDIS_HOST:$REDIS_PORT (default 127.0.0.1:6379) if it answers, else a
#    redis-server of our own on a free port, configured as in docker-compose.yml
#    (service/queue/redis.conf: AOF with appendfsync everysec, noeviction), in a temporary
#    directory that goes away with it. A QVGEN_REDIS_URL set in the environment is used as it is.
# 2. The API and one worker (`serve all`) on the embedded model, on CUDA when torch sees a GPU.
# 3. Once /readyz answers: the URL and a curl example (the same as README's "Serving").
# Ctrl-C (or SIGTERM) stops every process this script started, and only those; a second Ctrl-C
# (or SIGTERM) while they stop kills them at once. A shell that starts this script as a background
# job starts it with SIGINT ignored, which a script cannot undo: stop it with SIGTERM then.
#
# Overrides: MODEL_DIR, MODEL_ID, DEVICE, API_PORT, REDIS_HOST, REDIS_PORT, READY_TIMEOUT_S, and
# any QVGEN_* setting (README, "Deployment").
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
MODEL_DIR=${MODEL_DIR:-models/qvgen-tiny-w4a4}
MODEL_ID=${MODEL_ID:-qvgen-tiny}
API_PORT=${API_PORT:-8000}
REDIS_HOST=${REDIS_HOST:-127.0.0.1}
REDIS_PORT=${REDIS_PORT:-6379}
READY_TIMEOUT_S=${READY_TIMEOUT_S:-300}
# SIGTERM to SIGKILL: the worker hands its job back, `serve all` waits for it.
drain_s=${QVGEN_DRAIN_TIMEOUT_S:-0}
drain_s=${drain_s%.*}
STOP_TIMEOUT_S=$((30 + ${drain_s:-0}))

log() { printf 'run-local: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
free_port() {
  "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
redis_answers() { [ "$(redis-cli -h "$1" -p "$2" ping 2>/dev/null)" = PONG ]; }
sigint_ignored() {  # bit 2 of the ignored-signals mask (Linux /proc); elsewhere assume not
  local mask
  mask=$(awk '/^SigIgn:/ {print $2}' "/proc/$$/status" 2>/dev/null) || return 1
  [ -n "$mask" ] && (((16#$mask >> 1) & 1))
}

curl_example() {  # the README's example, against base URL $1 and model $2
  cat <<EOF
id=\$(curl -s $1/v1/videos -H 'Content-Type: application/json' \\
  -d '{"model": "$2", "prompt": "a red circle moving left on a black background"}' \\
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')
until curl -s $1/v1/videos/\$id | grep -Eq '"status":"(completed|failed)"'; do sleep 1; done
curl -sf -o video.mp4 $1/v1/videos/\$id/content && echo "wrote video.mp4"
EOF
}

# ---- checks first, so that a refusal leaves nothing running -----------------------------------
[ -f "$MODEL_DIR/model_index.json" ] || die "no diffusers pipeline at '$MODEL_DIR' \
(model_index.json is missing). The embedded model models/qvgen-tiny-w4a4 comes with the \
repository; set MODEL_DIR=path/to/pipeline to serve another. Nothing was started."
[ -x "$PY" ] || die "no Python at $PY: run 'make env' (or 'make run', which does) first"
command -v curl >/dev/null || die "curl is missing (run 'make system-deps')"
port_in_use "$API_PORT" && die "port $API_PORT is taken: set API_PORT to a free port"
DEVICE=${DEVICE:-$("$PY" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')}

# ---- process groups: each started command leads its own, stop_all ends them --------------------
state_dir=$(mktemp -d "${TMPDIR:-/tmp}/qvgen-run.XXXXXX")
leaders=()
timers=()

start_group() {  # runs "$@" in the background as the leader of a new process group
  set -m
  "$@" &
  leaders+=("$!")
  set +m
}

stop_group() {  # SIGTERM to the whole group; SIGKILL to what is left after STOP_TIMEOUT_S
  local leader=$1 timer
  kill -TERM -- "-$leader" 2>/dev/null || return 0
  set -m
  (sleep "$STOP_TIMEOUT_S"; kill -KILL -- "-$leader") 2>/dev/null &
  timer=$!
  timers+=("$timer")
  set +m
  wait "$leader" 2>/dev/null || true
  kill -KILL -- "-$leader" 2>/dev/null || true
  kill -- "-$timer" 2>/dev/null || true
}

kill_all() {  # the second signal: SIGKILL to every group this script started, stop timers included
  local status=$1 leader
  trap - INT TERM EXIT
  for leader in "${leaders[@]}" "${timers[@]}"; do kill -KILL -- "-$leader" 2>/dev/null || true; done
  rm -rf "$state_dir"
  log "killed"
  exit "$status"
}

stop_all() {
  trap 'kill_all 130' INT
  trap 'kill_all 143' TERM
  trap - EXIT
  local i
  ((${#leaders[@]} == 0)) || log "stopping (Ctrl-C again to kill at once)"
  # The service first (its worker hands jobs back to Redis), Redis last.
  for ((i = ${#leaders[@]} - 1; i >= 0; i--)); do stop_group "${leaders[i]}"; done
  rm -rf "$state_dir"
  log "stopped"
}
trap 'stop_all; exit 130' INT
trap 'stop_all; exit 143' TERM
trap stop_all EXIT

# ---- Redis --------------------------------------------------------------------------------------
if [ -n "${QVGEN_REDIS_URL:-}" ]; then
  log "using Redis at $QVGEN_REDIS_URL (QVGEN_REDIS_URL)"
elif redis_answers "$REDIS_HOST" "$REDIS_PORT"; then
  export QVGEN_REDIS_URL="redis://$REDIS_HOST:$REDIS_PORT/0"
  log "using the Redis that answers on $REDIS_HOST:$REDIS_PORT"
else
  redis_port=$(free_port)
  start_group redis-server service/queue/redis.conf --port "$redis_port" --bind 127.0.0.1 \
    --dir "$state_dir" --logfile "$state_dir/redis.log"
  for _ in $(seq 100); do redis_answers 127.0.0.1 "$redis_port" && break; sleep 0.1; done
  redis_answers 127.0.0.1 "$redis_port" || die "redis-server did not start: $state_dir/redis.log"
  export QVGEN_REDIS_URL="redis://127.0.0.1:$redis_port/0"
  log "no Redis on $REDIS_HOST:$REDIS_PORT; started one on port $redis_port (AOF, noeviction)"
fi

# ---- the API and one worker ---------------------------------------------------------------------
export QVGEN_MODELS=$MODEL_ID
export QVGEN_WORKER_METRICS_PORT=${QVGEN_WORKER_METRICS_PORT:-$(free_port)}
base="http://127.0.0.1:$API_PORT"
log "loading $MODEL_DIR as '$MODEL_ID' on $DEVICE"
start_group "$PY" -m service.cli serve all --model "$MODEL_DIR" --model-id "$MODEL_ID" \
  --device "$DEVICE" --workers 1 --host 127.0.0.1 --port "$API_PORT"
service=${leaders[-1]}

deadline=$((SECONDS + READY_TIMEOUT_S))
until curl -sf -o /dev/null "$base/readyz"; do
  kill -0 "$service" 2>/dev/null || die "the service exited before it was ready (see above)"
  ((SECONDS < deadline)) || die "not ready after $READY_TIMEOUT_S s: $(curl -s "$base/readyz")"
  sleep 0.2
done

if sigint_ignored; then
  log "SIGINT is ignored here (started as a background job?): stop it with 'kill $$' (SIGTERM)"
fi
cat <<EOF

qvgen serves '$MODEL_ID' on $DEVICE at $base
  OpenAPI docs: $base/docs
  metrics:      $base/metrics (API), http://127.0.0.1:$QVGEN_WORKER_METRICS_PORT/metrics (worker)

Try it:
$(curl_example "$base" "$MODEL_ID" | sed 's/^/    /')

Ctrl-C stops the service$([ ${#leaders[@]} -gt 1 ] && echo " and the Redis it started").
EOF

wait "$service"
