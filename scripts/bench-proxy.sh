#!/usr/bin/env bash
# Proxy benchmark: wrk against nginx on loopback directly, through tollgate's proxy
# (in-process, examples/proxy_bench.rs), through squid and through tinyproxy (plain forward
# proxies), all in one run on this machine. Reports req/s, p50/p99 latency and proxy CPU
# time per request for a 100-byte response at 1 and 32 connections and a 1 MiB response at
# 8 connections. Everything listens on 127.0.0.1 and is stopped at the end.
#
#   bash scripts/bench-proxy.sh            # 10 s per measurement
#   DURATION=5s bash scripts/bench-proxy.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
DURATION=${DURATION:-10s}

need=()
for tool in wrk:wrk nginx:nginx-light squid:squid tinyproxy:tinyproxy; do
  command -v "${tool%%:*}" >/dev/null || need+=("${tool##*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  # policy-rc.d (Debian images) keeps the packaged services from starting on install.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

cargo build --release --quiet -p tollgate --example proxy_bench 2>&1 | grep -v '^warning: tollgate@' || true
BIN=target/release/examples/proxy_bench

WORK=$(mktemp -d /tmp/tollgate-bench.XXXXXX)
chmod 755 "$WORK"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listens on 127.0.0.1:$1" >&2; return 1
}

NGINX_PORT=$(free_port); TOLLGATE_PORT=$(free_port); SQUID_PORT=$(free_port); TINY_PORT=$(free_port)
mkdir -p "$WORK/www"
head -c 100 /dev/zero | tr '\0' 'a' >"$WORK/www/small"
head -c 1048576 /dev/zero | tr '\0' 'b' >"$WORK/www/big"
chmod -R a+rX "$WORK/www"

cat >"$WORK/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  keepalive_timeout 60s;
  server {
    listen 127.0.0.1:$NGINX_PORT;
    root $WORK/www;
  }
}
CONF
nginx -c "$WORK/nginx.conf" -e "$WORK/nginx-error.log" &
PIDS+=($!)

"$BIN" "127.0.0.1:$TOLLGATE_PORT" "127.0.0.1:$NGINX_PORT" "$WORK/audit.jsonl" >"$WORK/tollgate.out" &
TOLLGATE_PID=$!
PIDS+=($TOLLGATE_PID)

mkdir -p "$WORK/squid"; chown proxy:proxy "$WORK/squid" 2>/dev/null || chmod 777 "$WORK/squid"
cat >"$WORK/squid.conf" <<CONF
http_port 127.0.0.1:$SQUID_PORT
http_access allow all
cache deny all
cache_mem 8 MB
access_log none
cache_store_log none
cache_log $WORK/squid/cache.log
pid_filename $WORK/squid/squid.pid
coredump_dir $WORK/squid
shutdown_lifetime 0 seconds
workers 1
CONF
squid -N -f "$WORK/squid.conf" &
SQUID_PID=$!
PIDS+=($SQUID_PID)

cat >"$WORK/tinyproxy.conf" <<CONF
User nobody
Group nogroup
Port $TINY_PORT
Listen 127.0.0.1
Timeout 60
MaxClients 200
Allow 127.0.0.1
LogLevel Critical
PidFile "$WORK/tinyproxy.pid"
CONF
tinyproxy -d -c "$WORK/tinyproxy.conf" &
TINY_PID=$!
PIDS+=($TINY_PID)

for port in $NGINX_PORT $TOLLGATE_PORT $SQUID_PORT $TINY_PORT; do wait_port "$port"; done
sleep 0.5

TICK=$(getconf CLK_TCK)
cpu_ticks() { # utime + stime of a process and its threads (and its children's, if any)
  local total=0 pid
  for pid in "$1" $(pgrep -P "$1" || true); do
    [ -r "/proc/$pid/stat" ] || continue
    total=$(( total + $(awk '{print $14 + $15}' "/proc/$pid/stat") ))
  done
  echo "$total"
}

# proxy_request NAME URL-PATH HOST -> a wrk Lua script that sends an absolute-form request
proxy_script() {
  cat >"$WORK/$1.lua" <<LUA
wrk.method = "GET"
wrk.path = "$2"
wrk.headers["Host"] = "$3"
LUA
  echo "$WORK/$1.lua"
}

RESULTS="$WORK/results.tsv"
: >"$RESULTS"
# measure LABEL PID CONNECTIONS THREADS FILE
measure() {
  local label=$1 pid=$2 conns=$3 threads=$4 file=$5 target script host path
  case $label in
    direct)    target="http://127.0.0.1:$NGINX_PORT/$file"; script="" ;;
    tollgate)  target="http://127.0.0.1:$TOLLGATE_PORT"; host=bench.test; path="http://bench.test/$file" ;;
    squid)     target="http://127.0.0.1:$SQUID_PORT"; host="127.0.0.1:$NGINX_PORT"; path="http://$host/$file" ;;
    tinyproxy) target="http://127.0.0.1:$TINY_PORT"; host="127.0.0.1:$NGINX_PORT"; path="http://$host/$file" ;;
  esac
  local args=(-t"$threads" -c"$conns" -d"$DURATION" --latency)
  if [ "$label" != direct ]; then
    script=$(proxy_script "$label-$file" "$path" "$host")
    args+=(-s "$script")
  fi
  # Warm up (connections, caches), then measure.
  wrk -t"$threads" -c"$conns" -d1s ${script:+-s "$script"} "$target" >/dev/null
  local before after out
  before=$( [ "$pid" = - ] && echo 0 || cpu_ticks "$pid")
  out=$(wrk "${args[@]}" "$target")
  after=$( [ "$pid" = - ] && echo 0 || cpu_ticks "$pid")
  local rps p50 p99 requests errors cpu_us
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
  p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
  requests=$(awk '/requests in/ {print $1}' <<<"$out")
  errors=$(grep -E 'Non-2xx|Socket errors' <<<"$out" | tr -s ' ' | paste -sd ';' - || true)
  if [ "$pid" = - ] || [ "${requests:-0}" -eq 0 ]; then
    cpu_us="-"
  else
    cpu_us=$(awk -v d=$((after - before)) -v t="$TICK" -v n="$requests" 'BEGIN {printf "%.1f", d * 1e6 / t / n}')
  fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$file" "$conns" "$label" "$rps" "$p50" "$p99" "$cpu_us" "${errors:-}" >>"$RESULTS"
}

for scenario in "small 1 1" "small 32 2" "big 8 2"; do
  read -r file conns threads <<<"$scenario"
  measure direct - "$conns" "$threads" "$file"
  measure tollgate "$TOLLGATE_PID" "$conns" "$threads" "$file"
  measure squid "$SQUID_PID" "$conns" "$threads" "$file"
  measure tinyproxy "$TINY_PID" "$conns" "$threads" "$file"
done

echo
echo "wrk $DURATION per cell, nginx on 127.0.0.1 (1 worker), $(nproc) cores; CPU = proxy utime+stime per request"
printf '| response | conns | path | req/s | p50 | p99 | proxy CPU/req (µs) | errors |\n'
printf '|---|---|---|---|---|---|---|---|\n'
while IFS=$'\t' read -r file conns label rps p50 p99 cpu errors; do
  size=$([ "$file" = small ] && echo "100 B" || echo "1 MiB")
  printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$size" "$conns" "$label" "$rps" "$p50" "$p99" "$cpu" "$errors"
done <"$RESULTS"
