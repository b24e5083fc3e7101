#!/usr/bin/env bash
# `make run`: the mock model server on 127.0.0.1:8081 and tollgate on config/tollgate.yaml
# (127.0.0.1:8080, admin 127.0.0.1:9090) until Ctrl-C or SIGTERM.
set -u

BUILD_DIR=${1:-build}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
case $BUILD_DIR in /*) ;; *) BUILD_DIR=$PWD/$BUILD_DIR ;; esac
CONFIG=${TG_CONFIG:-config/tollgate.yaml}
MOCK_ADDR=127.0.0.1:8081
LISTEN_PORT=8080
ADMIN_PORT=9090
START_TIMEOUT=10

cd "$ROOT" || exit 1
mkdir -p var

for prog in mock_model tollgate; do
  if [ ! -x "$BUILD_DIR/$prog" ]; then
    echo "run-demo: $BUILD_DIR/$prog not found (build first: make build)" >&2
    exit 1
  fi
done

mock_pid="" tg_pid=""
stop_all() {
  for pid in $tg_pid $mock_pid; do
    kill -TERM "$pid" 2>/dev/null
  done
  for pid in $tg_pid $mock_pid; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  tg_pid="" mock_pid=""
}
trap 'echo; echo "run-demo: stopping"; stop_all; exit 0' INT TERM
trap 'stop_all' EXIT

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_ready PID PORT NAME: until PORT accepts; fails if PID exits or the bound passes.
wait_ready() {
  local deadline=$((SECONDS + START_TIMEOUT))
  until port_open "$2"; do
    if ! kill -0 "$1" 2>/dev/null; then
      echo "run-demo: $3 exited during start-up" >&2
      return 1
    fi
    if [ $SECONDS -ge $deadline ]; then
      echo "run-demo: $3 did not listen on port $2 within ${START_TIMEOUT}s" >&2
      return 1
    fi
    sleep 0.1
  done
}

if port_open 8081 || port_open $LISTEN_PORT || port_open $ADMIN_PORT; then
  echo "run-demo: one of the ports 8081, $LISTEN_PORT, $ADMIN_PORT is already in use" >&2
  exit 1
fi

"$BUILD_DIR/mock_model" --listen "$MOCK_ADDR" >/dev/null &
mock_pid=$!
wait_ready "$mock_pid" 8081 mock_model || exit 1

"$BUILD_DIR/tollgate" -c "$CONFIG" &
tg_pid=$!
wait_ready "$tg_pid" $LISTEN_PORT tollgate || exit 1

cat <<EOF

tollgate listens on http://127.0.0.1:$LISTEN_PORT (admin: http://127.0.0.1:$ADMIN_PORT/metrics),
in front of the mock model server on http://$MOCK_ADDR. Try:

  curl -s http://127.0.0.1:$LISTEN_PORT/v1/chat/completions -H 'Authorization: Bearer sk-demo' -H 'Content-Type: application/json' -d '{"model":"gpt-4o","messages":[{"role":"user","content":"Hello"}]}'

  curl -sN http://127.0.0.1:$LISTEN_PORT/v1/chat/completions -H 'Authorization: Bearer sk-demo' -H 'Content-Type: application/json' -d '{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"Hello"}]}'

Usage records go to var/usage.jsonl. Ctrl-C stops both.

EOF

# Runs until a signal, or until either process exits on its own (then fail).
wait -n "$mock_pid" "$tg_pid"
status=$?
if kill -0 "$tg_pid" 2>/dev/null; then who=mock_model; else who=tollgate; fi
echo "run-demo: $who exited (status $status)" >&2
stop_all
exit $((status == 0 ? 1 : status))
