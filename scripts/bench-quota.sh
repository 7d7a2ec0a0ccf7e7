#!/usr/bin/env bash
# Team quota benchmark (issue #13): what checking a team quota costs each request, side by
# side in one run: no quota, the same quotas kept by the node alone (no Redis configured:
# the node store), and kept in Redis (a redis-server on loopback that this script starts
# and stops), at 1 and 32 connections.
#
# The harness is bench-proxy-sandbox.sh's: wrk runs inside `tollgate run` (as the sandbox
# user, absolute-form requests to the proxy listener) against nginx in a test network
# namespace behind a veth, reached through a `hosts` pin and `allowed_ips`; one `tollgate
# run` per cell, as shipped (INFO log, audit on). Proxy CPU is the supervisor's utime+stime
# per request during the measured window; Redis's own CPU is given apart (on a fleet it runs
# elsewhere). The quotas are set far above what the run can use, so nothing is refused: each
# cell's summary is checked for that (no refusal, no store error; the Redis cells answered by
# Redis, the node cells by the node) and the run stops if not.
#
# Paths (PATHS, in this order, reversed every other round so that none always comes first):
#   none       the policy without a `quotas` section
#   node       the quotas below, no Redis configured (the node store)
#   redis      the same quotas, --redis-url redis://127.0.0.1:PORT
#   redis-rpm  only a team requests_per_minute, in Redis (one bucket, no byte charges)
# The quotas of `node` and `redis` are the issue's example: team requests_per_minute with a
# burst, requests_per_day and bytes_per_day, and the same three for the destination.
#
# The machine is noisy, so everything runs in ROUNDS rounds; each difference and ratio
# against `none` is taken within a round and given as the median of the rounds, with their
# range. Each round also measures one Redis round trip on loopback (redis-benchmark, PING,
# one connection): the reference for the goal (a Redis quota adds at most one loopback round
# trip, well under 0.3 ms at p50, and at most 20 µs of proxy CPU per request).
#
#   bash scripts/bench-quota.sh                          # 3 rounds, 10 s per cell: ~6 minutes
#   DURATION=3s ROUNDS=1 bash scripts/bench-quota.sh     # a quick look
#   PATHS="none redis" CONNS="1" bash scripts/bench-quota.sh
#   TOLLGATE=/path/to/tollgate bash scripts/bench-quota.sh   # that build (default: the
#                                                            # dist profile's, built first)
#   PERF=1 PATHS="node redis" CONNS=1 ROUNDS=1 bash scripts/bench-quota.sh
#       # where the time goes: `perf record -g` of the supervisor and Redis during each
#       # measured window (which it slows: read that run's table as a profile, not a result)
#
# At the end: the Redis commands the whole run sent (INFO commandstats), per request.
#
# Needs root. Every packet stays on this machine: loopback, the sandbox's own namespace, and
# a veth pair to a namespace this script creates (10.201.x.y/30), all removed at the end,
# with Redis, its directory and the node store's file for the benchmark's team.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
. scripts/lib/bench.sh
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
PATHS=${PATHS:-none node redis redis-rpm}
CONNS=${CONNS:-1 32}
# The node store's directory (QuotaStoreConfig's default): the benchmark's team file there is
# removed at the end.
NODE_DIR=/run/tollgate/quotas
TEAM=bench-quota

if [ "$(id -u)" -ne 0 ]; then
  echo "run as root: it builds a network namespace and runs tollgate" >&2
  exit 1
fi

bench_need wrk:wrk nginx:nginx-light redis-server:redis-server redis-benchmark:redis-tools
[ -z "${PERF:-}" ] || bench_need perf:linux-perf
WRK=$(command -v wrk)

# The shipped build (`--profile dist`, as bench-serve.sh measures), brought up to date.
if [ -z "${TOLLGATE:-}" ]; then
  cargo build --quiet --profile dist -p tollgate
  TOLLGATE=${CARGO_TARGET_DIR:-$PWD/target}/dist/tollgate
fi
[ -x "$TOLLGATE" ] || { echo "bench-quota.sh: no binary at $TOLLGATE" >&2; exit 2; }
# A Redis URL in the environment would turn the node cells into Redis ones.
unset TOLLGATE_REDIS_URL

bench_work tollgate-bench-quota
# The audit and the summary go to a private directory (tollgate refuses to write as root
# where the sandbox could plant a link).
PRIVATE="$WORK-private"
mkdir -m 700 "$PRIVATE"
NODE_FILES_BEFORE=$(ls -A "$NODE_DIR" 2>/dev/null || true)
cleanup() {
  bench_stop_processes
  bench_upstream_host_remove
  rm -rf "$WORK" "$PRIVATE"
  # The node store's state for the benchmark's team, if this run made it.
  if [ -d "$NODE_DIR" ]; then
    local file
    for file in "$NODE_DIR"/*"$TEAM"*; do
      [ -e "$file" ] || continue
      grep -qxF "${file##*/}" <<<"$NODE_FILES_BEFORE" || rm -f "$file"
    done
  fi
}
bench_on_exit cleanup

# ---- the upstream: nginx (one worker) in a test namespace, the 100-byte file.
bench_upstream_host tgk
bench_www small
bench_nginx_conf "$UPSTREAM:80"
# shellcheck disable=SC2086 # UPSTREAM_NS is a command prefix
bench_start_nginx $UPSTREAM_NS
wait_tcp "$UPSTREAM" 80

# ---- Redis on loopback: no persistence, no other client.
REDIS_PORT=$(free_port)
mkdir -p "$WORK/redis"
bench_start redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no \
  --dir "$WORK/redis" --logfile "$WORK/redis/redis.log" --daemonize no
REDIS_PID=$STARTED
wait_tcp 127.0.0.1 "$REDIS_PORT"
REDIS_URL="redis://127.0.0.1:$REDIS_PORT"

# ---- the policies: the same allow list, with and without quotas.
policy() { # NAME QUOTAS-YAML
  cat >"$WORK/$1.yaml" <<YAML
version: 1
team: $TEAM
network:
  hosts:
    upstream.test: $UPSTREAM
  allow:
    - host: upstream.test
      ports: [80]
      schemes: [http]
      allowed_ips: [$SUBNET]
limits:
  max_requests: 1000000000
  max_connections: 1024
$2
YAML
}
# Limits no run of this benchmark reaches (a cell sends well under a million requests).
policy none ""
policy all "quotas:
  requests_per_minute: 100000000
  burst: 10000000
  requests_per_day: 100000000000
  bytes_per_day: 1000GiB
  destinations:
    - host: upstream.test
      requests_per_minute: 100000000
      burst: 10000000
      requests_per_day: 100000000000
      bytes_per_day: 1000GiB"
policy rpm "quotas:
  requests_per_minute: 100000000
  burst: 10000000"
# path_policy PATH — the policy a path runs on.
path_policy() {
  case $1 in
    none) echo none ;;
    node | redis) echo all ;;
    redis-rpm) echo rpm ;;
    *) echo "bench-quota.sh: unknown path $1 (PATHS: none node redis redis-rpm)" >&2; return 2 ;;
  esac
}
read -ra paths <<<"$PATHS"
for path in "${paths[@]}"; do
  name=$(path_policy "$path")
  "$TOLLGATE" policy check "$WORK/$name.yaml" >"$WORK/check.out" 2>&1 || {
    echo "bench-quota.sh: $TOLLGATE refuses the $name policy (a build without quotas?):" >&2
    cat "$WORK/check.out" >&2; exit 2
  }
done
bench_wrk_lua upstream-small upstream.test small >/dev/null

bench_inside_script


CELL=0
# measure PATH CONNS THREADS — one cell: one `tollgate run` of inside.sh on PATH's
# policy and store; one line in RESULTS (bench_record's) and one in EXTRAS (Redis's CPU
# ticks, the summary's store counters).
measure() {
  local path=$1 conns=$2 threads=$3 dir supervisor policy store=()
  local before after redis_before redis_after switches_before switches_after
  policy=$(path_policy "$path")
  case $path in redis*) store=(--redis-url "$REDIS_URL") ;; esac
  CELL=$((CELL + 1)); dir="$WORK/out/$CELL"
  mkdir -p "$dir"; chmod 777 "$dir"
  "$TOLLGATE" run --policy "$WORK/$policy.yaml" "${store[@]}" --audit "$PRIVATE/audit.jsonl" \
    --summary "$PRIVATE/summary.json" --share "$WORK" \
    --env "WRK=$WRK" --env "WORK=$WORK" --env "OUT=$dir" --env "DURATION=$DURATION" \
    --env "FILE=small" --env "CONNS=$conns" --env "THREADS=$threads" \
    -- /bin/sh "$WORK/inside.sh" >"$dir/stdout" 2>"$dir/stderr" &
  supervisor=$!
  bench_wait_for "$dir/measuring" "$supervisor"
  before=$(bench_ticks "$supervisor" 2>/dev/null || echo 0); redis_before=$(bench_ticks "$REDIS_PID")
  switches_before=$(context_switches "$supervisor")
  [ -z "${PERF:-}" ] || profile_start "$supervisor"
  bench_wait_for "$dir/measured" "$supervisor"
  after=$(bench_ticks "$supervisor" 2>/dev/null || echo 0); redis_after=$(bench_ticks "$REDIS_PID")
  switches_after=$(context_switches "$supervisor")
  [ -z "${PERF:-}" ] || profile_stop "$path" "$conns"
  : >"$dir/read"
  if ! wait "$supervisor"; then
    # Kept for a look: the cell's output and its audit log (the work directories go).
    mkdir -p "$WORK-failed"; cp -r "$dir" "$PRIVATE/audit.jsonl" "$WORK-failed/" 2>/dev/null || true
    echo "tollgate run failed ($path, $conns connections), kept in $WORK-failed:" >&2
    tail -n 5 "$dir/stdout" "$dir/stderr" >&2; exit 1
  fi
  bench_record "$path" small "$conns" "$((after - before))" "$dir/wrk.out"
  /usr/bin/python3 scripts/lib/bench_quota.py cell "$path" "$conns" "$((redis_after - redis_before))" \
    "$((switches_after - switches_before))" "$dir/wrk.out" "$PRIVATE/summary.json" "$REDIS_URL" >>"$EXTRAS" || {
    mkdir -p "$WORK-failed"; cp -r "$dir" "$PRIVATE/summary.json" "$WORK-failed/" 2>/dev/null || true
    echo "($path, $conns connections: kept in $WORK-failed)" >&2; exit 1
  }
  rm -f "$PRIVATE/audit.jsonl" "$PRIVATE/summary.json" "$dir/stdout" "$dir/stderr"
}

# context_switches PID — the context switches (voluntary and not) of PID's threads so far
# (a thread that has exited no longer counts: the blocking pool's idle threads leave after
# 10 s, so this can undercount).
context_switches() {
  cat /proc/"$1"/task/*/status 2>/dev/null |
    awk '/^(non)?voluntary_ctxt_switches/ {n += $2} END {print n + 0}'
}

# profile_start SUPERVISOR — perf samples the supervisor's threads and Redis, with call
# graphs, until profile_stop.
profile_start() {
  perf record -q -F 999 -g -p "$1,$REDIS_PID" -o "$WORK/perf.data" 2>/dev/null &
  PERF_PID=$!
}
# profile_stop PATH CONNS — ends the recording; appends the cell's heaviest symbols (self
# time, by process) to $WORK/profiles.txt.
profile_stop() {
  kill -INT "$PERF_PID"; wait "$PERF_PID" || true
  {
    echo; echo "== $1, $2 connections: samples by process and object (≥ 1 %)"
    perf report -i "$WORK/perf.data" --stdio --no-children --sort comm,dso --percent-limit 1 \
      -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -12
    echo "-- self time by process and symbol (≥ 1 %)"
    perf report -i "$WORK/perf.data" --stdio --no-children --sort comm,dso,symbol \
      --percent-limit 1 -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -40
    # On a VM without a PMU perf samples by timer, and a sample taken with interrupts off
    # lands where they are turned back on (the spin-unlock symbols): the system calls that
    # contain the samples (with callees) say more.
    echo "-- system calls, with what they call (≥ 1 %)"
    perf report -i "$WORK/perf.data" --stdio --children --sort comm,symbol --percent-limit 1 \
      -g none 2>/dev/null | grep -E '(__x64_sys|__do_sys|do_syscall_64|ret_from_fork|worker_thread)' | head -25
  } >>"$WORK/profiles.txt"
  rm -f "$WORK/perf.data"
}

# rtt ROUND — one loopback round trip to this Redis: redis-benchmark, PING, one connection.
rtt() {
  redis-benchmark -h 127.0.0.1 -p "$REDIS_PORT" -c 1 -n 20000 -t ping_mbulk --precision 3 --csv \
    >"$WORK/rtt-$1.csv"
}

bench_results
for round in $(seq "$ROUNDS"); do
  RESULTS="$WORK/results-$round.tsv"; EXTRAS="$WORK/extras-$round.tsv"
  : >"$RESULTS"; : >"$EXTRAS"
  order=("${paths[@]}")
  [ $((round % 2)) = 1 ] || mapfile -t order < <(printf '%s\n' "${paths[@]}" | tac)
  rtt "$round"
  for conns in $CONNS; do
    threads=$([ "$conns" -ge 2 ] && echo 2 || echo 1)
    for path in "${order[@]}"; do measure "$path" "$conns" "$threads"; done
  done
done

echo
echo "nginx (1 worker) in a test namespace at $UPSTREAM behind a veth, reached as upstream.test"
echo "(hosts pin + allowed_ips); wrk inside \`tollgate run\` as the sandbox user, 100-byte"
echo "response. Redis $(redis-server --version | grep -o 'v=[^ ]*') on 127.0.0.1. $ROUNDS rounds,"
echo "wrk $DURATION per cell, $(nproc) cores; binary $TOLLGATE; HEAD $(git rev-parse --short HEAD 2>/dev/null || echo '?')."
/usr/bin/python3 scripts/lib/bench_quota.py table "$WORK" "$ROUNDS"
# What Redis was asked, over the whole run (warm-ups included) and per measured request of
# the Redis cells.
redis-cli -p "$REDIS_PORT" INFO commandstats | tr -d '\r' >"$WORK/commandstats.txt"
/usr/bin/python3 scripts/lib/bench_quota.py commands "$WORK" "$ROUNDS" "$WORK/commandstats.txt"
[ -z "${PERF:-}" ] || cat "$WORK/profiles.txt"
