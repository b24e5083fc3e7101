#!/usr/bin/env bash
# Benchmark: tollgate against nginx proxy_pass on the same upstream, same run.
# Usage: tests/bench/run.sh [BUILD_DIR]   (env: DURATION=5 ROUNDS=3 CONNS=64 QUICK=1 VERBOSE=1
#        ROWS="redis lease lease2 credits local kafka workers2 idle tenants" BEFORE=OTHER_BUILD_DIR)
# Prints a table of req/s, p99 and the ratio to nginx. Loopback only; bounded in time.
# ROWS picks rows (default: all; QUICK=1: redis lease local idle tenants). BEFORE=dir also runs that
# build's tollgate in every round of the req/s rows (nginx, BEFORE, BUILD_DIR, back to back) and
# prints its row above this build's, then the two builds' ratio (an A/B of two builds in one run).
set -euo pipefail
BUILD=${1:-build}
BUILD=$(cd "$BUILD" && pwd)
BEFORE=${BEFORE:-}
if [ -n "$BEFORE" ]; then BEFORE=$(cd "$BEFORE" && pwd); fi
if [ -n "${ROWS:-}" ]; then ROWS=" ${ROWS//,/ } "
elif [ -n "${QUICK:-}" ]; then ROWS=" redis lease local idle tenants "
else ROWS=" redis lease lease2 credits local kafka workers2 idle tenants "; fi
row() { [[ "$ROWS" == *" $1 "* ]]; }
SRC=$(cd "$(dirname "$0")/../.." && pwd)
DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-64}
WORK=$(mktemp -d /tmp/tollgate-bench.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.3
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; return 1; }

UP=$(free_port); NGX=$(free_port); TG=$(free_port); TGA=$(free_port); RP=$(free_port)
TGB=$(free_port); TGBA=$(free_port) # the BEFORE build's tollgate
BODY='{"id":"chatcmpl-bench","object":"chat.completion","created":1764000000,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"Hello there, nice to meet you."},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":8,"total_tokens":20}}'

# Two nginx processes, one worker each: the upstream (return 200 with a chat
# completion) and the proxy being compared (proxy_pass with keep-alive).
nginx_conf() { # $1 = dir, $2 = server block
  mkdir -p "$1"
  cat > "$1/nginx.conf" <<NGINX
worker_processes 1;
pid $1/nginx.pid;
error_log $1/error.log warn;
daemon off;
events { worker_connections 20000; }
http {
  access_log off;
  client_body_temp_path $1/body;
  proxy_temp_path $1/proxy;
  fastcgi_temp_path $1/fcgi;
  uwsgi_temp_path $1/uwsgi;
  scgi_temp_path $1/scgi;
  upstream model { server 127.0.0.1:$UP; keepalive 128; }
  $2
}
NGINX
}
nginx_conf "$WORK/upstream" "server { listen 127.0.0.1:$UP; keepalive_requests 1000000;
    location / { default_type application/json; return 200 '$BODY'; } }"
nginx_conf "$WORK/proxy" "server { listen 127.0.0.1:$NGX; keepalive_requests 1000000;
    location / { proxy_pass http://model; proxy_http_version 1.1;
                 proxy_set_header Connection \"\"; } }"
nginx -c "$WORK/upstream/nginx.conf" -p "$WORK/upstream" 2>"$WORK/upstream/stderr" &
PIDS+=($!)
nginx -c "$WORK/proxy/nginx.conf" -p "$WORK/proxy" 2>"$WORK/proxy/stderr" &
PIDS+=($!)
NGXMASTER=$!
redis-server --port "$RP" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
  >"$WORK/redis.log" 2>&1 &
PIDS+=($!)
wait_port "$UP"; wait_port "$NGX"; wait_port "$RP"

# Starts this build's tollgate on $TG, and with BEFORE also that build's on $TGB (each with its
# own usage file and spool: @DIR@ in $4 is the process's own directory).
start_tollgate() { # $1 = backend, $2 = sink, $3 = workers, $4 = extra usage yaml, $5 = lease mode
  start_one "$BUILD/tollgate" "$TG" "$TGA" "$WORK/tg" "$@"
  TGPID=$ONEPID
  if [ -n "$BEFORE" ]; then start_one "$BEFORE/tollgate" "$TGB" "$TGBA" "$WORK/tgb" "$@"; TGBPID=$ONEPID; fi
}
start_one() { # $1 = binary, $2 = port, $3 = admin port, $4 = dir, then start_tollgate's arguments
  # (and a 6th: "credits" makes the tenant pay every request from a prepaid balance)
  local bin=$1 port=$2 aport=$3 dir=$4; shift 4
  local credits="" tcredits="" token=""
  if [ "${6:-}" = credits ]; then
    token=", token: bench-admin"
    credits="credits: { enabled: true, prices: [ { unit: tokens, price: 0.000002 }, { unit: requests, price: 0.0001 } ] }"
    tcredits="    credits: { mode: prepaid }"
  fi
  mkdir -p "$dir"
  rm -f "$dir/usage.jsonl" # each row counts its own records
  # limiter.lease (default off here: the strict rows stay strict), for builds that have it
  local lease=""
  printf 'limiter: { lease: { mode: off } }\n' > "$dir/probe.yaml"
  if "$bin" --check -c "$dir/probe.yaml" >/dev/null 2>&1; then
    lease="  lease: { mode: ${5:-off}, sync_interval_ms: 50 }"
  elif [ -n "${5:-}" ] && [ "${5:-}" != off ]; then
    echo "error: $bin has no lease mode" >&2; exit 1
  fi
  cat > "$dir/tg.yaml" <<YAML
server: { listen: "127.0.0.1:$port", workers: $3 }
admin: { listen: "127.0.0.1:$aport"$token }
$credits
log: { level: warn, access_path: "/dev/null" }
limiter:
  backend: $1
  redis: { host: 127.0.0.1, port: $RP, timeout_ms: 200 }
  on_redis_error: deny
$lease
usage:
  sink: $2
  file: { path: "$dir/usage.jsonl" }
${4//@DIR@/$dir}
upstreams:
  - { name: model, url: "http://127.0.0.1:$UP" }
routes:
  - { path: /v1/chat/completions, upstream: model, cost: tokens }
tenants:
  - name: bench
    keys: ["sk-bench"]
$tcredits
    limits:
      - { name: rpm, unit: requests, rate: 1000000000, per: minute }
      - { name: tpm, unit: tokens, rate: 100000000000, per: minute }
YAML
  "$bin" -c "$dir/tg.yaml" 2>"$dir/tollgate.log" &
  ONEPID=$!
  PIDS+=($ONEPID)
  wait_port "$port"
}
stop_tollgate() {
  kill "$TGPID"; wait "$TGPID" 2>/dev/null || true
  if [ -n "$BEFORE" ]; then kill "$TGBPID"; wait "$TGBPID" 2>/dev/null || true; fi
}

# CPU time (user + system, clock ticks) of a process and all its threads.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# The proxy being measured on port $1: nginx's worker process, or tollgate.
proxy_pid() {
  if [ "$1" = "$NGX" ]; then pgrep -P "$NGXMASTER" | head -1
  elif [ "$1" = "$TGB" ]; then echo "$TGBPID"
  else echo "$TGPID"; fi
}

# wrk prints "Requests/sec: N" and with --latency the 99% line. The proxy's own
# CPU per request (µs, all its threads) is steadier than req/s on a shared machine.
bench() { # $1 = port -> "rps p99ms cpu_us_per_request"
  local out pid t0 t1
  pid=$(proxy_pid "$1")
  t0=$(cpu_ticks "$pid")
  out=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -s "$SRC/tests/bench/post.lua" \
        "http://127.0.0.1:$1/v1/chat/completions")
  t1=$(cpu_ticks "$pid")
  local rps p99 cpu
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  cpu=$(echo "($t1 - $t0) * 1000000 / $(getconf CLK_TCK) / ($rps * $DURATION)" | bc -l)
  p99=$(awk '$1=="99%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v=v/1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v=v*1000}; print v}' <<<"$out")
  # A fast error is no throughput: any non-2xx reply or socket error fails the run.
  local errs; errs=$(awk '/Non-2xx/ {print $4}' <<<"$out")
  if [ -n "$errs" ] || grep -q "Socket errors" <<<"$out"; then
    echo "error: port $1 answered with errors: $(grep -E 'Non-2xx|Socket errors' <<<"$out")" >&2
    exit 1
  fi
  echo "$rps $p99 $cpu"
}

# Two gateways at once, half the connections each: "rps(sum) p99ms(max) cpu_us_per_request".
bench2() { # $1, $2 = ports
  local t0a t0b t1a t1b oa ob
  t0a=$(cpu_ticks "$TGPID"); t0b=$(cpu_ticks "$TG2PID")
  wrk -t1 -c$((CONNS / 2)) -d"${DURATION}s" --latency -s "$SRC/tests/bench/post.lua" \
      "http://127.0.0.1:$1/v1/chat/completions" > "$WORK/wrk2a" &
  local wa=$!
  wrk -t1 -c$((CONNS / 2)) -d"${DURATION}s" --latency -s "$SRC/tests/bench/post.lua" \
      "http://127.0.0.1:$2/v1/chat/completions" > "$WORK/wrk2b"
  wait "$wa"
  t1a=$(cpu_ticks "$TGPID"); t1b=$(cpu_ticks "$TG2PID")
  if grep -qE 'Non-2xx|Socket errors' "$WORK/wrk2a" "$WORK/wrk2b"; then
    echo "error: the gateways answered with errors" >&2; exit 1
  fi
  local ra rb pa pb
  ra=$(awk '/Requests\/sec/ {print $2}' "$WORK/wrk2a"); rb=$(awk '/Requests\/sec/ {print $2}' "$WORK/wrk2b")
  p99() { awk '$1=="99%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v=v/1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v=v*1000}; print v}' "$1"; }
  pa=$(p99 "$WORK/wrk2a"); pb=$(p99 "$WORK/wrk2b")
  local rps; rps=$(echo "$ra + $rb" | bc -l)
  echo "$rps $(echo "if ($pa > $pb) $pa else $pb" | bc -l) $(echo "($t1a - $t0a + $t1b - $t0b) * 1000000 / $(getconf CLK_TCK) / ($rps * $DURATION)" | bc -l)"
}

redis_calls() { redis-cli -p "$RP" info commandstats | awk -F'[=,:]' '/cmdstat_evalsha/ {print $3}'; }

median() { printf "%s\n" "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# Each round runs nginx, then tollgate, back to back, and takes their ratio:
# the median over ROUNDS rounds is what the table reports, so that drift on a
# shared machine moves both sides of a ratio alike.
# With BEFORE, each round runs nginx, the BEFORE build, then this build; each build's ratio is
# to the nginx run of its round, and "this/BEFORE" is the median of the per-round req/s ratios.
measure() { # $1 = label
  local nr=() np=() tr=() tp=() ratio=() pratio=() nc=() tc=() a b c d e f
  local br=() bp=() bc=() bratio=() bpratio=() ab=() g i j
  for _ in $(seq "$ROUNDS"); do
    read -r a b e < <(bench "$NGX")
    if [ -n "$BEFORE" ]; then
      read -r g i j < <(bench "$TGB")
      br+=("$g"); bp+=("$i"); bc+=("$j")
      bratio+=("$(echo "$g/$a" | bc -l)"); bpratio+=("$(echo "$i/$b" | bc -l)")
    fi
    read -r c d f < <(bench "$TG")
    nr+=("$a"); np+=("$b"); tr+=("$c"); tp+=("$d"); nc+=("$e"); tc+=("$f")
    ratio+=("$(echo "$c/$a" | bc -l)"); pratio+=("$(echo "$d/$b" | bc -l)")
    if [ -n "$BEFORE" ]; then ab+=("$(echo "$c/$g" | bc -l)"); fi
    if [ -n "${VERBOSE:-}" ]; then
      echo "  round: nginx $a/s ${b}ms ${e}us,${BEFORE:+ before $g/s ${i}ms ${j}us,} tollgate $c/s ${d}ms ${f}us" >&2
    fi
  done
  if [ -n "$BEFORE" ]; then
    printf "%-50s %9.0f %7.2f %9.0f %7.2f %6.2f %6.2f %6.1f %6.1f\n" "$1 [BEFORE]" "$(median "${nr[@]}")" \
      "$(median "${np[@]}")" "$(median "${br[@]}")" "$(median "${bp[@]}")" \
      "$(median "${bratio[@]}")" "$(median "${bpratio[@]}")" "$(median "${nc[@]}")" \
      "$(median "${bc[@]}")"
  fi
  printf "%-50s %9.0f %7.2f %9.0f %7.2f %6.2f %6.2f %6.1f %6.1f\n" "$1" "$(median "${nr[@]}")" \
    "$(median "${np[@]}")" "$(median "${tr[@]}")" "$(median "${tp[@]}")" \
    "$(median "${ratio[@]}")" "$(median "${pratio[@]}")" "$(median "${nc[@]}")" \
    "$(median "${tc[@]}")"
  if [ -n "$BEFORE" ]; then
    printf "  this build / BEFORE: req/s %.3f (median of the rounds; each: %s)\n" "$(median "${ab[@]}")" \
      "$(printf "%.3f " "${ab[@]}")"
  fi
}

echo "wrk -t1 -c$CONNS, ${DURATION}s per run, median of $ROUNDS rounds (nginx, then tollgate, each round)"
printf "%-50s %9s %7s %9s %7s %6s %6s %6s %6s\n" "tollgate configuration" "nginx/s" "p99 ms" \
  "tg req/s" "p99 ms" "ratio" "p99 x" "ngx us" "tg us"
echo "(us: the proxy's CPU time per request, all its threads; nginx: its worker process)"
if [ -n "$BEFORE" ]; then echo "(rows marked [BEFORE]: $BEFORE/tollgate, in the same rounds)"; fi

if row redis; then
  start_tollgate redis file 1 ""
  redis-cli -p "$RP" config resetstat >/dev/null
  measure "redis limiter (strict), file sink, 1 worker"
  CALLS=$(redis_calls); CALLS=${CALLS:-0}
  stop_tollgate
  REQS=$(cat "$WORK"/tg*/usage.jsonl | wc -l)
  echo "  Redis EVALSHA calls per admitted request (checks and settles): $(echo "$CALLS/$REQS" | bc -l | cut -c1-5) ($CALLS calls, $REQS records)"
fi

if row lease; then
  start_tollgate redis file 1 "" always
  redis-cli -p "$RP" config resetstat >/dev/null
  measure "redis limiter, leases (always), file sink, 1 worker"
  CALLS=$(redis_calls); CALLS=${CALLS:-0}
  stop_tollgate
  REQS=$(cat "$WORK"/tg*/usage.jsonl | wc -l)
  echo "  Redis EVALSHA calls per admitted request (lease calls): $(echo "$CALLS/$REQS" | bc -l | cut -c1-6) ($CALLS calls, $REQS records)"
fi

if row lease2 && [ -z "$BEFORE" ]; then
  # Two gateways on one Redis and one tenant, leasing from the same buckets; wrk gives each
  # half of the connections, nginx gets them all. (Everything shares the machine's 2 cores.)
  start_one "$BUILD/tollgate" "$TG" "$TGA" "$WORK/tg" redis file 1 "" always; TGPID=$ONEPID
  start_one "$BUILD/tollgate" "$TGB" "$TGBA" "$WORK/tg2" redis file 1 "" always; TG2PID=$ONEPID
  redis-cli -p "$RP" config resetstat >/dev/null
  nr=(); np=(); tr=(); tp=(); ratio=(); pratio=(); nc=(); tc=()
  for _ in $(seq "$ROUNDS"); do
    read -r a b e < <(bench "$NGX")
    read -r c d f < <(bench2 "$TG" "$TGB")
    nr+=("$a"); np+=("$b"); tr+=("$c"); tp+=("$d"); nc+=("$e"); tc+=("$f")
    ratio+=("$(echo "$c/$a" | bc -l)"); pratio+=("$(echo "$d/$b" | bc -l)")
  done
  printf "%-50s %9.0f %7.2f %9.0f %7.2f %6.2f %6.2f %6.1f %6.1f\n" "redis limiter, leases, 2 gateways (one worker each)" \
    "$(median "${nr[@]}")" "$(median "${np[@]}")" "$(median "${tr[@]}")" "$(median "${tp[@]}")" \
    "$(median "${ratio[@]}")" "$(median "${pratio[@]}")" "$(median "${nc[@]}")" "$(median "${tc[@]}")"
  CALLS=$(redis_calls); CALLS=${CALLS:-0}
  kill "$TGPID" "$TG2PID"; wait "$TGPID" "$TG2PID" 2>/dev/null || true
  REQS=$(cat "$WORK"/tg/usage.jsonl "$WORK"/tg2/usage.jsonl | wc -l)
  echo "  Redis EVALSHA calls per admitted request (lease calls): $(echo "$CALLS/$REQS" | bc -l | cut -c1-6) ($CALLS calls, $REQS records)"
fi

if row credits && [ -z "$BEFORE" ]; then
  # Strict Redis limiting with the tenant paying every request from its balance (a hold and a
  # commit per request, each with its ledger event), against strict limiting without credits,
  # the two gateways side by side in the same rounds.
  start_one "$BUILD/tollgate" "$TG" "$TGA" "$WORK/tg" redis file 1 "" off credits; TGPID=$ONEPID
  start_one "$BUILD/tollgate" "$TGB" "$TGBA" "$WORK/tgb" redis file 1 "" off; TGBPID=$ONEPID
  curl -sf -X POST -H "Authorization: Bearer bench-admin" -H "Idempotency-Key: bench-$RANDOM" \
    -d '{"amount":"1000000000"}' "http://127.0.0.1:$TGA/admin/tenants/bench/credits" >/dev/null
  redis-cli -p "$RP" config resetstat >/dev/null
  nr=(); np=(); sr=(); sp=(); cr=(); cp=(); rs=(); rc=(); cs=(); sc=(); ccpu=()
  for _ in $(seq "$ROUNDS"); do
    read -r a b e < <(bench "$NGX")
    read -r c d f < <(bench "$TGB")
    read -r g i j < <(bench "$TG")
    nr+=("$a"); np+=("$b"); sr+=("$c"); sp+=("$d"); cr+=("$g"); cp+=("$i"); sc+=("$f"); ccpu+=("$j")
    rs+=("$(echo "$c/$a" | bc -l)"); rc+=("$(echo "$g/$a" | bc -l)"); cs+=("$(echo "$g/$c" | bc -l)")
    if [ -n "${VERBOSE:-}" ]; then
      echo "  round: nginx $a/s, strict $c/s ${f}us, credits $g/s ${j}us" >&2
    fi
  done
  printf "%-50s %9.0f %7.2f %9.0f %7.2f %6.2f %6.2f %6.1f %6.1f\n" "redis limiter (strict), no credits, 1 worker" \
    "$(median "${nr[@]}")" "$(median "${np[@]}")" "$(median "${sr[@]}")" "$(median "${sp[@]}")" \
    "$(median "${rs[@]}")" "$(echo "$(median "${sp[@]}")/$(median "${np[@]}")" | bc -l)" "0" "$(median "${sc[@]}")"
  printf "%-50s %9.0f %7.2f %9.0f %7.2f %6.2f %6.2f %6.1f %6.1f\n" "redis limiter (strict), prepaid credits, 1 worker" \
    "$(median "${nr[@]}")" "$(median "${np[@]}")" "$(median "${cr[@]}")" "$(median "${cp[@]}")" \
    "$(median "${rc[@]}")" "$(echo "$(median "${cp[@]}")/$(median "${np[@]}")" | bc -l)" "0" "$(median "${ccpu[@]}")"
  printf "  credits / no credits: req/s %.3f (median of the rounds; each: %s)\n" "$(median "${cs[@]}")" \
    "$(printf "%.3f " "${cs[@]}")"
  CALLS=$(redis_calls); CALLS=${CALLS:-0}
  kill "$TGPID" "$TGBPID"; wait "$TGPID" "$TGBPID" 2>/dev/null || true
  REQS=$(cat "$WORK"/tg/usage.jsonl "$WORK"/tgb/usage.jsonl | wc -l)
  echo "  Redis EVALSHA calls per request, both gateways: $(echo "$CALLS/$REQS" | bc -l | cut -c1-5) ($CALLS calls, $REQS records)"
  if [ -n "${VERBOSE:-}" ]; then redis-cli -p "$RP" info commandstats | grep -E "evalsha|xadd|hset|zadd" >&2; fi
fi

if row local; then
  start_tollgate local file 1 ""
  measure "local limiter, file sink, 1 worker"
  stop_tollgate
fi

if row kafka && [ -x "$BUILD/kafka_broker" ]; then
  "$BUILD/kafka_broker" --topic tollgate.usage > "$WORK/broker.out" 2>"$WORK/broker.log" &
  PIDS+=($!)
  for _ in $(seq 100); do grep -q BOOTSTRAP "$WORK/broker.out" && break; sleep 0.05; done
  BOOT=$(awk '/BOOTSTRAP/ {print $2}' "$WORK/broker.out")
  start_tollgate redis kafka 1 "  kafka: { brokers: \"$BOOT\", topic: tollgate.usage, spool_dir: \"@DIR@/spool\" }"
  measure "redis limiter, kafka sink (test broker), 1 worker"
  stop_tollgate
fi

if row workers2; then
  start_tollgate redis file 2 ""
  measure "redis limiter, file sink, 2 workers (wrk shares cores)"
  stop_tollgate
fi

if ! row idle && ! row tenants; then exit 0; fi
BEFORE="" # the memory and config rows are of this build only

# Memory: 10,000 idle keep-alive client connections (one worker).
if row idle; then
start_tollgate redis file 1 ""
IDLE_RSS=$(python3 - "$TG" "$TGPID" <<'PY'
import resource, socket, sys, time
port, pid = int(sys.argv[1]), int(sys.argv[2])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
def rss():
    with open("/proc/%d/status" % pid) as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
before = rss()
socks = []
for i in range(10000):
    s = socket.create_connection(("127.0.0.1", port))
    socks.append(s)
time.sleep(1.0)
after = rss()
print("%d %d" % (before, after))
PY
)
stop_tollgate
read -r RSS0 RSS1 <<<"$IDLE_RSS"
printf "10,000 idle keep-alive connections: RSS %.1f MiB (%.1f MiB before them)\n" \
  "$(echo "$RSS1/1024" | bc -l)" "$(echo "$RSS0/1024" | bc -l)"
fi
if ! row tenants; then exit 0; fi

# Configuration size: 100,000 tenants (one key and two limits each).
python3 - "$WORK/big.yaml" "$UP" <<'PY'
import sys
path, up = sys.argv[1], sys.argv[2]
with open(path, "w") as f:
    f.write('upstreams:\n  - { name: model, url: "http://127.0.0.1:%s" }\n' % up)
    f.write("routes:\n  - { path: /v1/chat/completions, upstream: model, cost: tokens }\ntenants:\n")
    for i in range(100000):
        f.write("  - name: t%d\n    keys: [\"sk-tenant-%d\"]\n    limits:\n"
                "      - { name: rpm, unit: requests, rate: 600, per: minute }\n"
                "      - { name: tpm, unit: tokens, rate: 200000, per: minute }\n" % (i, i))
PY
T0=$(date +%s.%N)
"$BUILD/tollgate" --check -c "$WORK/big.yaml" > /dev/null
T1=$(date +%s.%N)
printf "100,000 tenants: tollgate --check loads and prints the config in %.2f s\n" "$(echo "$T1-$T0" | bc -l)"

