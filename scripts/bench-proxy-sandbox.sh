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
#
# Two tollgate rows: `tollgate` is `tollgate run` as shipped (operator log at INFO on stderr,
# audit log on); `tollgate-quiet` is the same with TOLLGATE_LOG=warn (no per-request log
# line). Needs root. Every packet stays on this machine: loopback, and a veth pair to a
# namespace this script creates (10.201.x.y/30), all removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
DURATION=${DURATION:-10s}

if [ "$(id -u)" -ne 0 ]; then
  echo "run as root: it builds a network namespace and runs tollgate" >&2
  exit 1
fi

need=()
for tool in wrk:wrk nginx:nginx-light squid:squid tinyproxy:tinyproxy; do
  command -v "${tool%%:*}" >/dev/null || need+=("${tool##*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  # policy-rc.d (Debian images) keeps the packaged services from starting on install.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
WRK=$(command -v wrk)

cargo build --release --quiet -p tollgate 2>&1 | grep -v '^warning: tollgate@' || true
TOLLGATE=${CARGO_TARGET_DIR:-$PWD/target}/release/tollgate

WORK=$(mktemp -d /tmp/tollgate-bench-sandbox.XXXXXX)
chmod 755 "$WORK"
PIDS=()
HOLDER=
VETH=
# Processes whose network namespace is the upstream's (nginx and its worker), by namespace.
in_upstream_ns() {
  local ns pid
  ns=$(readlink "/proc/$HOLDER/ns/net" 2>/dev/null) || return 0
  for pid in /proc/[0-9]*; do
    [ "$(readlink "$pid/ns/net" 2>/dev/null)" = "$ns" ] && echo "${pid#/proc/}"
  done
  return 0
}
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -n "$HOLDER" ]; then
    for pid in $(in_upstream_ns); do [ "$pid" = "$HOLDER" ] || kill "$pid" 2>/dev/null || true; done
    kill "$HOLDER" 2>/dev/null || true; wait "$HOLDER" 2>/dev/null || true
  fi
  if [ -n "$VETH" ]; then ip link del "$VETH" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# ---- the upstream host: an unnamed namespace (held by a sleep), a veth pair, nginx inside.
# A /30 of 10.201.0.0/16, locked like the test suite's upstream hosts (tests/src/upstream.rs).
LOCKS=/tmp/tollgate-e2e-upstreams
mkdir -p "$LOCKS"
SLOT=
for slot in $(seq 16383 -1 16000); do
  exec 9>"$LOCKS/$slot.lock"
  if flock -n 9; then
    base=$((slot * 4))
    net="10.201.$((base / 256)).$((base % 256))"
    if ! ip -4 -o addr show | grep -q " 10.201.$((base / 256)).$((base % 256 + 1))/"; then
      SLOT=$slot; break
    fi
    flock -u 9
  fi
done
[ -n "$SLOT" ] || { echo "no free /30 in 10.201.0.0/16" >&2; exit 1; }
GATEWAY="10.201.$((base / 256)).$((base % 256 + 1))"
UPSTREAM="10.201.$((base / 256)).$((base % 256 + 2))"
SUBNET="$net/30"

unshare --net -- sleep infinity &
HOLDER=$!
for _ in $(seq 200); do
  [ "$(readlink /proc/$HOLDER/ns/net)" != "$(readlink /proc/self/ns/net)" ] && break
  sleep 0.01
done
VETH="tgb$SLOT"
ip link add "$VETH" type veth peer name "tgq$SLOT" netns "$HOLDER"
ip link set dev "$VETH" addrgenmode none
ip addr add "$GATEWAY/30" dev "$VETH"
ip link set dev "$VETH" up
in_ns() { nsenter --net="/proc/$HOLDER/ns/net" -- "$@"; }
in_ns ip link set dev lo up
in_ns ip link set dev "tgq$SLOT" addrgenmode none
in_ns ip addr add "$UPSTREAM/30" dev "tgq$SLOT"
in_ns ip link set dev "tgq$SLOT" up

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
    listen $UPSTREAM:80;
    root $WORK/www;
  }
}
CONF
# nsenter execs nginx (no fork for a network namespace): $! is the nginx master.
nsenter --net="/proc/$HOLDER/ns/net" -- nginx -c "$WORK/nginx.conf" -e "$WORK/nginx-error.log" &
PIDS+=($!)

# ---- squid and tinyproxy on the host's loopback, dialing the upstream over the veth.
free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_tcp() {
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listens on $1:$2" >&2; return 1
}
SQUID_PORT=$(free_port); TINY_PORT=$(free_port)
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
wait_tcp "$UPSTREAM" 80
wait_tcp 127.0.0.1 "$SQUID_PORT"
wait_tcp 127.0.0.1 "$TINY_PORT"
sleep 0.5

SCENARIOS=("small 1 1" "small 32 2" "big 8 2")
TICK=$(getconf CLK_TCK)
RESULTS="$WORK/results.tsv"
: >"$RESULTS"

# Absolute-form requests through a proxy: wrk connects to the proxy and sends this request
# line (wrk has no proxy support of its own), as scripts/bench-proxy.sh does.
lua() { # NAME HOST PATH
  cat >"$WORK/$1.lua" <<LUA
wrk.method = "GET"
wrk.path = "http://$2$3"
wrk.headers["Host"] = "$2"
LUA
  chmod 644 "$WORK/$1.lua"
  echo "$WORK/$1.lua"
}
for file in small big; do
  lua "upstream-$file" upstream.test "/$file" >/dev/null
  lua "ip-$file" "$UPSTREAM" "/$file" >/dev/null
done

# parse LABEL FILE CONNS TICKS WRK-OUTPUT-FILE -> one results line
parse() {
  local label=$1 file=$2 conns=$3 ticks=$4 out
  out=$(cat "$5")
  local rps p50 p99 requests errors cpu_us
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
  p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
  requests=$(awk '/requests in/ {print $1}' <<<"$out")
  errors=$(grep -E 'Non-2xx|Socket errors' <<<"$out" | tr -s ' ' | paste -sd ';' - || true)
  if [ "$ticks" = - ] || [ "${requests:-0}" -eq 0 ]; then
    cpu_us="-"
  else
    cpu_us=$(awk -v d="$ticks" -v t="$TICK" -v n="$requests" 'BEGIN {printf "%.1f", d * 1e6 / t / n}')
  fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$file" "$conns" "$label" "$rps" "$p50" "$p99" "$cpu_us" "${errors:-}" >>"$RESULTS"
}

ticks_of() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# Host-namespace rows: direct, squid, tinyproxy.
measure_host() { # LABEL PID CONNS THREADS FILE
  local label=$1 pid=$2 conns=$3 threads=$4 file=$5 target script=()
  case $label in
    direct)    target="http://$UPSTREAM/$file" ;;
    squid)     target="http://127.0.0.1:$SQUID_PORT"; script=(-s "$WORK/ip-$file.lua") ;;
    tinyproxy) target="http://127.0.0.1:$TINY_PORT"; script=(-s "$WORK/ip-$file.lua") ;;
  esac
  "$WRK" -t"$threads" -c"$conns" -d1s "${script[@]}" "$target" >/dev/null
  local before=0 after=0
  [ "$pid" = - ] || before=$(ticks_of "$pid")
  "$WRK" -t"$threads" -c"$conns" -d"$DURATION" --latency "${script[@]}" "$target" >"$WORK/wrk.out"
  [ "$pid" = - ] || after=$(ticks_of "$pid")
  parse "$label" "$file" "$conns" "$([ "$pid" = - ] && echo - || echo $((after - before)))" "$WORK/wrk.out"
}

# The sandboxed rows: one `tollgate run` per cell; the script inside reads the supervisor's
# (its parent's) CPU ticks around the measurement.
mkdir -p "$WORK/out"; chmod 777 "$WORK/out"
cat >"$WORK/inside.sh" <<'SH'
#!/bin/sh
# Runs inside `tollgate run`: $HTTP_PROXY is the proxy listener in this namespace, and the
# parent process is the tollgate supervisor, whose proxy threads do the work.
set -eu
SUPERVISOR=$PPID
[ "$(cat /proc/$SUPERVISOR/comm)" = tollgate ] || { echo "parent is not tollgate" >&2; exit 1; }
ticks() { awk '{print $14 + $15}' "/proc/$SUPERVISOR/stat"; }
"$WRK" -t"$THREADS" -c"$CONNS" -d1s -s "$WORK/upstream-$FILE.lua" "$HTTP_PROXY" >/dev/null
before=$(ticks)
"$WRK" -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -s "$WORK/upstream-$FILE.lua" "$HTTP_PROXY" \
  >"$OUT/wrk.out"
after=$(ticks)
echo $((after - before)) >"$OUT/ticks"
SH
chmod 755 "$WORK/inside.sh"
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
measure_sandbox() { # LABEL LOG-LEVEL CONNS THREADS FILE
  local label=$1 level=$2 conns=$3 threads=$4 file=$5 dir="$WORK/out/$1-$5-$3"
  mkdir -p "$dir"; chmod 777 "$dir"
  TOLLGATE_LOG=$level "$TOLLGATE" run --policy "$WORK/policy.yaml" --audit "$WORK/audit.jsonl" \
    --summary "$dir/summary.json" \
    --env "WRK=$WRK" --env "WORK=$WORK" --env "OUT=$dir" --env "DURATION=$DURATION" \
    --env "FILE=$file" --env "CONNS=$conns" --env "THREADS=$threads" \
    -- /bin/sh "$WORK/inside.sh" 2>"$dir/stderr" \
    || { echo "tollgate run failed:" >&2; tail -5 "$dir/stderr" >&2; exit 1; }
  rm -f "$WORK/audit.jsonl" "$dir/stderr"
  parse "$label" "$file" "$conns" "$(cat "$dir/ticks")" "$dir/wrk.out"
}

# Side by side: every path for one scenario before the next scenario.
for scenario in "${SCENARIOS[@]}"; do
  read -r file conns threads <<<"$scenario"
  measure_host direct - "$conns" "$threads" "$file"
  measure_sandbox tollgate info "$conns" "$threads" "$file"
  measure_sandbox tollgate-quiet warn "$conns" "$threads" "$file"
  measure_host squid "$SQUID_PID" "$conns" "$threads" "$file"
  measure_host tinyproxy "$TINY_PID" "$conns" "$threads" "$file"
done

echo
echo "wrk $DURATION per cell; nginx (1 worker) in a test namespace at $UPSTREAM behind a veth;"
echo "tollgate rows: wrk inside \`tollgate run\` (sandbox user), proxy listener in the sandbox,"
echo "upstream reached through a hosts pin + allowed_ips; other rows: wrk in the host namespace."
echo "$(nproc) cores. CPU = proxy process utime+stime per request."
printf '| response | conns | path | req/s | p50 | p99 | proxy CPU/req (µs) | errors |\n'
printf '|---|---|---|---|---|---|---|---|\n'
while IFS=$'\t' read -r file conns label rps p50 p99 cpu errors; do
  size=$([ "$file" = small ] && echo "100 B" || echo "1 MiB")
  printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$size" "$conns" "$label" "$rps" "$p50" "$p99" "$cpu" "$errors"
done <"$RESULTS"
