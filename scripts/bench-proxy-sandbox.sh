#!/usr/bin/env bash
# Proxy benchmark through the real sandbox: wrk runs *inside* `tollgate run` (as the sandbox
# user, against the proxy listener in the sandbox's namespace) and reaches nginx in a test
# network namespace through a `hosts` pin and `allowed_ips`, exactly as a team reaches an
# internal service. In the same run, for comparison, wrk in the host namespace reaches the
# same nginx directly and through squid and tinyproxy configured as plain forward proxies on
# 127.0.0.1.
#
# Reports req/s, p50/p99 latency and proxy CPU time per request (utime+stime of the proxy
# process from /proc/<pid>/stat, before and after each measurement) for a 100-byte response
# at 1 and 32 connections and a 1 MiB response at 8 connections.
#
#   bash scripts/bench-proxy-sandbox.sh             # 10 s per measurement
#   DURATION=5s bash scripts/bench-proxy-sandbox.sh
#   BASELINE=/path/to/older/tollgate bash scripts/bench-proxy-sandbox.sh  # adds "tollgate-before"
#   COMPARE="one-thread=/tmp/wrapper other=/path" bash …  # more builds, each a "tollgate-LABEL" row
#   PERF_DIR=/tmp/profiles bash scripts/bench-proxy-sandbox.sh  # perf record -g of each tollgate cell
#   STAT_DIR=/tmp/counters bash scripts/bench-proxy-sandbox.sh  # perf stat (switches, instructions) per cell
#   STRACE_DIR=/tmp/syscalls bash scripts/bench-proxy-sandbox.sh  # strace -c of each tollgate cell (slow!)
#   QUIET=0 bash scripts/bench-proxy-sandbox.sh      # without the tollgate-quiet rows
#
# Two tollgate rows: `tollgate` is `tollgate run` as shipped (operator log at INFO on stderr,
# audit log on); `tollgate-quiet` is the same with TOLLGATE_LOG=warn (no per-request log
# line). Needs root. Every packet stays on this machine: loopback, and a veth pair to a
# namespace this script creates (10.201.x.y/30), all removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
. scripts/lib/bench.sh
DURATION=${DURATION:-10s}

if [ "$(id -u)" -ne 0 ]; then
  echo "run as root: it builds a network namespace and runs tollgate" >&2
  exit 1
fi

bench_need wrk:wrk nginx:nginx-light squid:squid tinyproxy:tinyproxy
WRK=$(command -v wrk)

[ -n "${TOLLGATE:-}" ] || bench_build -p tollgate
TOLLGATE=${TOLLGATE:-${CARGO_TARGET_DIR:-$PWD/target}/release/tollgate}
COMPARE="${BASELINE:+before=$BASELINE} ${COMPARE:-}"
QUIET=${QUIET:-1}
PERF_DIR=${PERF_DIR:-}
[ -z "$PERF_DIR" ] || mkdir -p "$PERF_DIR"
STRACE_DIR=${STRACE_DIR:-}
STAT_DIR=${STAT_DIR:-}
[ -z "$STAT_DIR" ] || mkdir -p "$STAT_DIR"
[ -z "$STRACE_DIR" ] || mkdir -p "$STRACE_DIR"

bench_work tollgate-bench-sandbox
cleanup() {
  bench_stop_processes
  bench_upstream_host_remove
  rm -rf "$WORK"
}
bench_on_exit cleanup

# ---- the upstream host: an unnamed namespace (held by a sleep), a veth pair, nginx inside
# (bench_upstream_host: UPSTREAM, GATEWAY, SUBNET, UPSTREAM_NS).
bench_upstream_host tgb

bench_www small big
bench_nginx_conf "$UPSTREAM:80" "  sendfile on;
  tcp_nopush on;"
# nsenter execs nginx (no fork for a network namespace): its pid is the nginx master.
# shellcheck disable=SC2086 # UPSTREAM_NS is a command prefix
bench_start_nginx $UPSTREAM_NS

# ---- squid and tinyproxy on the host's loopback, dialing the upstream over the veth.
SQUID_PORT=$(free_port); TINY_PORT=$(free_port)
bench_start_squid "$SQUID_PORT"
bench_start_tinyproxy "$TINY_PORT"
wait_tcp "$UPSTREAM" 80
wait_tcp 127.0.0.1 "$SQUID_PORT"
wait_tcp 127.0.0.1 "$TINY_PORT"
sleep 0.5

# SCENARIOS="small 32 2" (file, connections, wrk threads; `;` between several) picks cells.
if [ -n "${SCENARIOS:-}" ]; then IFS=';' read -ra SCENARIOS <<<"$SCENARIOS"
else SCENARIOS=("small 1 1" "small 32 2" "big 8 2"); fi
bench_results

# Absolute-form requests through a proxy (see bench_wrk_lua), as scripts/bench-proxy.sh does.
for file in small big; do
  bench_wrk_lua "upstream-$file" upstream.test "$file" >/dev/null
  bench_wrk_lua "ip-$file" "$UPSTREAM" "$file" >/dev/null
done

# Host-namespace rows: direct, squid, tinyproxy.
measure_host() { # LABEL PID CONNS THREADS FILE
  local label=$1 pid=$2 conns=$3 threads=$4 file=$5 target script=
  case $label in
    direct)    target="http://$UPSTREAM/$file" ;;
    squid)     target="http://127.0.0.1:$SQUID_PORT"; script="$WORK/ip-$file.lua" ;;
    tinyproxy) target="http://127.0.0.1:$TINY_PORT"; script="$WORK/ip-$file.lua" ;;
  esac
  bench_wrk_cell "$label" "$file" "$conns" "$threads" \
    "$([ "$pid" = - ] && echo - || echo "bench_ticks $pid")" "$target" "$script"
}

bench_inside_script
cat >"$WORK/policy.yaml" <<YAML
version: 1
team: bench
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
  max_response_bytes: 16MiB
  max_connections: 1024
YAML

measure_sandbox() { # LABEL BINARY LOG-LEVEL CONNS THREADS FILE
  local label=$1 binary=$2 level=$3 conns=$4 threads=$5 file=$6 dir="$WORK/out/$1-$6-$4"
  local supervisor before after perf=
  mkdir -p "$dir"; chmod 777 "$dir"
  # The audit log and summary go outside the shared $WORK: tollgate refuses to write as root
  # where the sandbox could plant a link.
  mkdir -p "$WORK-private"; chmod 700 "$WORK-private"
  TOLLGATE_LOG=$level "$binary" run --policy "$WORK/policy.yaml" --audit "$WORK-private/audit.jsonl" \
    --summary "$WORK-private/summary.json" --share "$WORK" \
    --env "WRK=$WRK" --env "WORK=$WORK" --env "OUT=$dir" --env "DURATION=$DURATION" \
    --env "FILE=$file" --env "CONNS=$conns" --env "THREADS=$threads" \
    -- /bin/sh "$WORK/inside.sh" 2>"$dir/stderr" &
  supervisor=$!
  bench_wait_for "$dir/measuring" "$supervisor"; before=$(bench_ticks "$supervisor" || echo 0)
  if [ -n "$PERF_DIR" ]; then
    perf record -q -F ${PERF_FREQ:-1999} ${PERF_CALLGRAPH:--g} -p "$supervisor" -o "$PERF_DIR/$label-$file-$conns.data" 2>/dev/null &
    perf=$!
  elif [ -n "$STAT_DIR" ]; then
    perf stat -e task-clock,context-switches,cpu-migrations,instructions,cycles -p "$supervisor" \
      -o "$STAT_DIR/$label-$file-$conns.txt" &
    perf=$!
  elif [ -n "$STRACE_DIR" ]; then
    strace ${STRACE_ARGS:--c} -f -q -p "$supervisor" -o "$STRACE_DIR/$label-$file-$conns.txt" &
    perf=$!
  fi
  bench_wait_for "$dir/measured" "$supervisor"; after=$(bench_ticks "$supervisor" || echo 0)
  [ -z "$perf" ] || { kill -INT "$perf"; wait "$perf" || true; }
  : >"$dir/read"
  wait "$supervisor" || { echo "tollgate run failed:" >&2; tail -5 "$dir/stderr" >&2; exit 1; }
  rm -f "$WORK-private/audit.jsonl" "$dir/stderr"
  bench_record "$label" "$file" "$conns" "$((after - before))" "$dir/wrk.out"
}

# Side by side: every path for one scenario before the next scenario.
for scenario in "${SCENARIOS[@]}"; do
  read -r file conns threads <<<"$scenario"
  measure_host direct - "$conns" "$threads" "$file"
  measure_sandbox tollgate "$TOLLGATE" info "$conns" "$threads" "$file"
  for build in $COMPARE; do
    measure_sandbox "tollgate-${build%%=*}" "${build#*=}" info "$conns" "$threads" "$file"
  done
  [ "$QUIET" = 0 ] || measure_sandbox tollgate-quiet "$TOLLGATE" warn "$conns" "$threads" "$file"
  measure_host squid "$SQUID_PID" "$conns" "$threads" "$file"
  measure_host tinyproxy "$TINY_PID" "$conns" "$threads" "$file"
done

echo
echo "wrk $DURATION per cell; nginx (1 worker) in a test namespace at $UPSTREAM behind a veth;"
echo "tollgate rows: wrk inside \`tollgate run\` (sandbox user), proxy listener in the sandbox,"
echo "upstream reached through a hosts pin + allowed_ips; other rows: wrk in the host namespace."
echo "$(nproc) cores. CPU = proxy process utime+stime per request."
bench_print_table
