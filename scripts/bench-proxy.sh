#!/usr/bin/env bash
# Proxy benchmark: wrk against nginx on loopback directly, through tollgate's proxy
# (in-process, examples/proxy_bench.rs), through squid and through tinyproxy (plain forward
# proxies), all in one run on this machine. Reports req/s, p50/p99 latency and proxy CPU
# time per request for a 100-byte response at 1 and 32 connections and a 1 MiB response at
# 8 connections. Everything listens on 127.0.0.1 and is stopped at the end.
#
#   bash scripts/bench-proxy.sh            # 10 s per measurement
#   DURATION=5s bash scripts/bench-proxy.sh
#   BASELINE=/path/to/older/proxy_bench bash scripts/bench-proxy.sh   # adds a "tollgate-before"
#                                   # row: an older build of the example, in the same run
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
. scripts/lib/bench.sh
DURATION=${DURATION:-10s}

bench_need wrk:wrk nginx:nginx-light squid:squid tinyproxy:tinyproxy
bench_build -p tollgate --features testing --example proxy_bench
BIN=target/release/examples/proxy_bench

bench_work tollgate-bench
bench_on_exit bench_cleanup

NGINX_PORT=$(free_port); TOLLGATE_PORT=$(free_port); SQUID_PORT=$(free_port); TINY_PORT=$(free_port)
bench_www small big
bench_nginx_conf "127.0.0.1:$NGINX_PORT" "  sendfile on;
  tcp_nopush on;"
bench_start_nginx

bench_start "$BIN" "127.0.0.1:$TOLLGATE_PORT" "127.0.0.1:$NGINX_PORT" "$WORK/audit.jsonl" >"$WORK/tollgate.out"
TOLLGATE_PID=$STARTED
BASELINE_PORT=$(free_port)
if [ -n "${BASELINE:-}" ]; then
  bench_start "$BASELINE" "127.0.0.1:$BASELINE_PORT" "127.0.0.1:$NGINX_PORT" "$WORK/audit-before.jsonl" >"$WORK/baseline.out"
  BASELINE_PID=$STARTED
fi
bench_start_squid "$SQUID_PORT"
bench_start_tinyproxy "$TINY_PORT"

for port in $NGINX_PORT $TOLLGATE_PORT $SQUID_PORT $TINY_PORT ${BASELINE:+$BASELINE_PORT}; do wait_tcp 127.0.0.1 "$port"; done
sleep 0.5

bench_results
# measure LABEL PID CONNECTIONS THREADS FILE
measure() {
  local label=$1 pid=$2 conns=$3 threads=$4 file=$5 target host script=
  case $label in
    direct)    target="http://127.0.0.1:$NGINX_PORT/$file" ;;
    tollgate)  target="http://127.0.0.1:$TOLLGATE_PORT"; host=bench.test ;;
    tollgate-before) target="http://127.0.0.1:$BASELINE_PORT"; host=bench.test ;;
    squid)     target="http://127.0.0.1:$SQUID_PORT"; host="127.0.0.1:$NGINX_PORT" ;;
    tinyproxy) target="http://127.0.0.1:$TINY_PORT"; host="127.0.0.1:$NGINX_PORT" ;;
  esac
  [ "$label" = direct ] || script=$(bench_wrk_lua "$label-$file" "$host" "$file")
  bench_wrk_cell "$label" "$file" "$conns" "$threads" \
    "$([ "$pid" = - ] && echo - || echo "bench_ticks_with_children $pid")" "$target" "$script"
}

for scenario in "small 1 1" "small 32 2" "big 8 2"; do
  read -r file conns threads <<<"$scenario"
  measure direct - "$conns" "$threads" "$file"
  measure tollgate "$TOLLGATE_PID" "$conns" "$threads" "$file"
  [ -z "${BASELINE:-}" ] || measure tollgate-before "$BASELINE_PID" "$conns" "$threads" "$file"
  measure squid "$SQUID_PID" "$conns" "$threads" "$file"
  measure tinyproxy "$TINY_PID" "$conns" "$threads" "$file"
done

echo
echo "wrk $DURATION per cell, nginx on 127.0.0.1 (1 worker), $(nproc) cores; CPU = proxy utime+stime per request"
bench_print_table
