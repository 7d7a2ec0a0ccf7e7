# Shared pieces of the benchmark scripts (scripts/bench-proxy.sh, bench-proxy-sandbox.sh,
# bench-tls.sh, bench-transparent.sh): packages, the release build, a work directory and the
# processes started in it (stopped and removed on every exit), loopback ports, the nginx
# upstream (on loopback or in a test namespace behind a veth), squid and tinyproxy as plain
# forward proxies, wrk measurements and the results table.
#
# Sourced, not run, from the repository root by a script that has already done
#   set -euo pipefail; cd "$(dirname "$0")/.."
# Everything it starts listens on 127.0.0.1 (or an address the caller gives, such as a test
# namespace's veth): no packet leaves the machine.
#
# State it shares with the caller (globals):
#   WORK     the work directory (bench_work)
#   PIDS     background processes to stop at exit (bench_start and the bench_start_* helpers)
#   RESULTS  the results file (bench_results), one tab-separated line per measurement
#   DURATION how long each wrk measurement runs (the caller's, e.g. 10s)

PIDS=()

# bench_need CMD:PACKAGE… — installs, with apt, the packages of the commands not on PATH.
bench_need() {
  local need=() tool
  for tool in "$@"; do
    command -v "${tool%%:*}" >/dev/null || need+=("${tool##*:}")
  done
  if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    # policy-rc.d (Debian images) keeps the packaged services from starting on install.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
}

# bench_build CARGO-BUILD-ARGS… — a quiet release build (tollgate's own build-script
# warnings dropped); a failed build does not stop the benchmark.
bench_build() {
  cargo build --release --quiet "$@" 2>&1 | grep -v '^warning: tollgate@' || true
}

# bench_work PREFIX — makes the work directory /tmp/PREFIX.XXXXXX (readable by the
# unprivileged users nginx, squid and the sandbox run as) and sets WORK.
bench_work() {
  WORK=$(mktemp -d "/tmp/$1.XXXXXX")
  chmod 755 "$WORK"
}

# bench_stop_processes — stops every process in PIDS and waits for each.
bench_stop_processes() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}

# bench_cleanup — the plain cleanup: stops PIDS and removes WORK.
bench_cleanup() {
  bench_stop_processes
  rm -rf "${WORK:?}" "${WORK:?}-private"
}

# bench_on_exit FUNCTION — runs FUNCTION when the script exits, however it exits: at the
# end, on an error (set -e), or on SIGHUP, SIGINT or SIGTERM (which exit with 128+N, so that
# the EXIT trap runs).
bench_on_exit() {
  trap "$1" EXIT
  trap 'exit 129' HUP
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

# bench_start COMMAND… — starts COMMAND in the background, adds it to PIDS and sets
# STARTED to its pid.
bench_start() {
  "$@" &
  STARTED=$!
  PIDS+=("$STARTED")
}

# free_port — prints a free TCP port on 127.0.0.1.
free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# wait_tcp HOST PORT [TRIES] — waits until HOST:PORT accepts a connection, trying every
# 50 ms, TRIES times (default 100); fails if it never does.
wait_tcp() {
  local _
  for _ in $(seq "${3:-100}"); do
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listens on $1:$2" >&2; return 1
}

# bench_www FILE… — the upstream's document root $WORK/www with the named files: `small`
# (100 bytes) and `big` (1 MiB).
# bench_upstream_ca_dirs — for benchmarks that run `tollgate run` against a TLS upstream of
# their own: CA_DIR, a root-owned directory no sandbox shares or can write, for the upstream
# CA (tollgate refuses a network.upstream_ca file a sandbox could rewrite), and PRIVATE, for
# the audit and the summary (tollgate refuses to write as root where the sandbox could plant
# a link); both go, with WORK, the processes and the upstream host, when the script exits.
bench_upstream_ca_dirs() {
  CA_DIR="$WORK-ca"; PRIVATE="$WORK-private"
  mkdir -m 755 "$CA_DIR"; mkdir -m 700 "$PRIVATE"
  bench_on_exit bench_upstream_ca_cleanup
}

bench_upstream_ca_cleanup() {
  bench_stop_processes
  bench_upstream_host_remove
  rm -rf "$WORK" "$CA_DIR" "$PRIVATE"
}

# bench_upstream_ca DIR NAME: an upstream CA of our own (DIR/ca.pem, ca.key) and a server
# leaf for NAME from it (DIR/leaf.pem, leaf.key), P-256, valid two days; the CA readable by
# all (tollgate reads it as network.upstream_ca), the keys by root only.
bench_upstream_ca() {
  local dir=$1 name=$2
  (
    cd "$dir"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key \
      -out ca.pem -days 2 -subj "/CN=bench upstream CA" \
      -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout leaf.key \
      -out leaf.csr -subj "/CN=$name" 2>/dev/null
    printf 'subjectAltName=DNS:%s\nextendedKeyUsage=serverAuth\n' "$name" >leaf.ext
    openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out leaf.pem \
      -days 2 -extfile leaf.ext 2>/dev/null
    chmod 644 ca.pem; chmod 600 ca.key leaf.key
  )
}

bench_www() {
  local file
  mkdir -p "$WORK/www"
  for file in "$@"; do
    case $file in
      small) head -c 100 /dev/zero | tr '\0' 'a' >"$WORK/www/small" ;;
      big)   head -c 1048576 /dev/zero | tr '\0' 'b' >"$WORK/www/big" ;;
      *)     echo "bench_www: unknown file $file" >&2; return 1 ;;
    esac
  done
  chmod -R a+rX "$WORK/www"
}

# bench_nginx_conf LISTEN [HTTP-LINES [SERVER-LINES]] — writes $WORK/nginx.conf: one worker
# in the foreground, no access log, keep-alive for the whole run, serving $WORK/www on
# LISTEN (nginx's `listen` argument). HTTP-LINES and SERVER-LINES are extra directives for
# the http and server blocks (e.g. sendfile, or the TLS certificate).
bench_nginx_conf() {
  cat >"$WORK/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
events { worker_connections 1024; }
http {
  access_log off;
${2:-}
  keepalive_requests 1000000;
  keepalive_timeout 60s;
  server {
    listen $1;
${3:-}
    root $WORK/www;
  }
}
CONF
}

# bench_start_nginx [PREFIX…] — starts nginx on $WORK/nginx.conf (through PREFIX, e.g.
# `nsenter --net=… --`, which execs it: the pid is nginx's master either way).
bench_start_nginx() {
  bench_start "$@" nginx -c "$WORK/nginx.conf" -e "$WORK/nginx-error.log"
}

# bench_start_squid PORT — squid as a plain forward proxy on 127.0.0.1:PORT (no cache, no
# access log, one worker); sets SQUID_PID.
bench_start_squid() {
  mkdir -p "$WORK/squid"; chown proxy:proxy "$WORK/squid" 2>/dev/null || chmod 777 "$WORK/squid"
  cat >"$WORK/squid.conf" <<CONF
http_port 127.0.0.1:$1
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
  bench_start squid -N -f "$WORK/squid.conf"
  SQUID_PID=$STARTED
}

# bench_start_tinyproxy PORT — tinyproxy as a plain forward proxy on 127.0.0.1:PORT; sets
# TINY_PID.
bench_start_tinyproxy() {
  cat >"$WORK/tinyproxy.conf" <<CONF
User nobody
Group nogroup
Port $1
Listen 127.0.0.1
Timeout 60
MaxClients 200
Allow 127.0.0.1
LogLevel Critical
PidFile "$WORK/tinyproxy.pid"
CONF
  bench_start tinyproxy -d -c "$WORK/tinyproxy.conf"
  TINY_PID=$STARTED
}

# bench_wrk_lua NAME HOST PATH — writes $WORK/NAME.lua, a wrk script that sends the
# absolute-form request `GET http://HOST/PATH` with `Host: HOST` (wrk has no proxy support
# of its own: it connects to the proxy and sends this request line); prints its path.
bench_wrk_lua() {
  cat >"$WORK/$1.lua" <<LUA
wrk.method = "GET"
wrk.path = "http://$2/$3"
wrk.headers["Host"] = "$2"
LUA
  chmod 644 "$WORK/$1.lua"
  echo "$WORK/$1.lua"
}

# bench_inside_script — writes $WORK/inside.sh, the measured run inside `tollgate run`: wrk
# through $HTTP_PROXY with $WORK/upstream-$FILE.lua. The sandbox cannot see the supervisor's
# /proc entry (hidepid), so the script marks the measured window with files in $OUT
# (measuring, then measured) and the supervisor's CPU ticks are read out here around it; it
# then waits (at most 10 s) for $OUT/read, written once they were taken.
bench_inside_script() {
  mkdir -p "$WORK/out"; chmod 777 "$WORK/out"
  cat >"$WORK/inside.sh" <<'SH'
#!/bin/sh
set -eu
"$WRK" -t"$THREADS" -c"$CONNS" -d1s -s "$WORK/upstream-$FILE.lua" "$HTTP_PROXY" >/dev/null
: >"$OUT/measuring"
"$WRK" -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -s "$WORK/upstream-$FILE.lua" "$HTTP_PROXY" \
  >"$OUT/wrk.out"
: >"$OUT/measured"
i=0; while [ ! -e "$OUT/read" ] && [ $i -lt 1000 ]; do sleep 0.01; i=$((i + 1)); done
SH
  chmod 755 "$WORK/inside.sh"
}

# bench_wait_for FILE PID — until FILE exists or PID has exited.
bench_wait_for() { while [ ! -e "$1" ] && kill -0 "$2" 2>/dev/null; do sleep 0.01; done; }

# bench_results — sets RESULTS to an empty $WORK/results.tsv and TICK to the clock ticks
# per second that /proc/<pid>/stat counts CPU time in.
bench_results() {
  RESULTS="$WORK/results.tsv"
  : >"$RESULTS"
  TICK=$(getconf CLK_TCK)
}

# bench_record LABEL FILE CONNS TICKS WRK-OUTPUT-FILE — reads wrk's --latency output and
# appends one line to RESULTS: file, connections, label, req/s, p50, p99, proxy CPU per
# request in µs (from TICKS, the proxy's CPU ticks during the measurement; `-` for none) and
# wrk's error lines.
bench_record() {
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

# bench_ticks PID — the CPU time (utime + stime, in clock ticks) of process PID, all its
# threads included.
bench_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# bench_ticks_with_children PID — the same for PID plus its direct children, if any.
bench_ticks_with_children() {
  local total=0 pid
  for pid in "$1" $(pgrep -P "$1" || true); do
    [ -r "/proc/$pid/stat" ] || continue
    total=$(( total + $(bench_ticks "$pid") ))
  done
  echo "$total"
}

# bench_wrk_cell LABEL FILE CONNS THREADS TICKS TARGET [LUA-SCRIPT] — one cell of the table:
# a 1 s wrk warm-up (connections, caches), then wrk for DURATION with THREADS threads and
# CONNS connections against TARGET (through LUA-SCRIPT, see bench_wrk_lua), recorded with
# bench_record. TICKS is `-` (no proxy in the path) or a command printing the proxy's CPU
# ticks (e.g. "bench_ticks 1234"), run just before and just after the measurement.
bench_wrk_cell() {
  local label=$1 file=$2 conns=$3 threads=$4 ticks=$5 target=$6 script=()
  [ -z "${7:-}" ] || script=(-s "$7")
  wrk -t"$threads" -c"$conns" -d1s "${script[@]}" "$target" >/dev/null
  local before=0 after=0
  [ "$ticks" = - ] || before=$($ticks)
  wrk -t"$threads" -c"$conns" -d"$DURATION" --latency "${script[@]}" "$target" >"$WORK/wrk.out"
  [ "$ticks" = - ] || after=$($ticks)
  bench_record "$label" "$file" "$conns" "$([ "$ticks" = - ] && echo - || echo $((after - before)))" "$WORK/wrk.out"
}

# bench_print_table — prints RESULTS as the Markdown table of docs/benchmarks.md.
bench_print_table() {
  local file conns label rps p50 p99 cpu errors size
  printf '| response | conns | path | req/s | p50 | p99 | proxy CPU/req (µs) | errors |\n'
  printf '|---|---|---|---|---|---|---|---|\n'
  while IFS=$'\t' read -r file conns label rps p50 p99 cpu errors; do
    size=$([ "$file" = small ] && echo "100 B" || echo "1 MiB")
    printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$size" "$conns" "$label" "$rps" "$p50" "$p99" "$cpu" "$errors"
  done <"$RESULTS"
}

# bench_upstream_host PREFIX — an upstream host for the sandboxed benchmarks: an unnamed
# network namespace (held by a sleep, UPSTREAM_HOLDER) joined to this one by a veth pair
# (PREFIX<slot> here, tgq<slot> there) on a /30 of 10.201.0.0/16, locked like the test
# suite's upstream hosts (tests/src/upstream.rs) so that neither picks a subnet in use. Sets
# UPSTREAM (the namespace's address), GATEWAY (this side's), SUBNET and UPSTREAM_NS (a
# prefix that runs a command in the namespace: nsenter execs it, so a started process's pid
# is the command's). Remove it with bench_upstream_host_remove.
UPSTREAM_HOLDER=
UPSTREAM_VETH=
bench_upstream_host() {
  local locks=/tmp/tollgate-e2e-upstreams slot='' candidate base _
  mkdir -p "$locks"
  for candidate in $(seq 16383 -1 16000); do
    exec 9>"$locks/$candidate.lock"
    if flock -n 9; then
      base=$((candidate * 4))
      if ! ip -4 -o addr show | grep -q " 10.201.$((base / 256)).$((base % 256 + 1))/"; then
        slot=$candidate; break
      fi
      flock -u 9
    fi
  done
  [ -n "$slot" ] || { echo "no free /30 in 10.201.0.0/16" >&2; return 1; }
  SUBNET="10.201.$((base / 256)).$((base % 256))/30"
  GATEWAY="10.201.$((base / 256)).$((base % 256 + 1))"
  UPSTREAM="10.201.$((base / 256)).$((base % 256 + 2))"

  unshare --net -- sleep infinity &
  UPSTREAM_HOLDER=$!
  for _ in $(seq 200); do
    [ "$(readlink /proc/$UPSTREAM_HOLDER/ns/net)" != "$(readlink /proc/self/ns/net)" ] && break
    sleep 0.01
  done
  UPSTREAM_NS="nsenter --net=/proc/$UPSTREAM_HOLDER/ns/net --"
  UPSTREAM_VETH="$1$slot"
  ip link add "$UPSTREAM_VETH" type veth peer name "tgq$slot" netns "$UPSTREAM_HOLDER"
  ip link set dev "$UPSTREAM_VETH" addrgenmode none
  ip addr add "$GATEWAY/30" dev "$UPSTREAM_VETH"
  ip link set dev "$UPSTREAM_VETH" up
  $UPSTREAM_NS ip link set dev lo up
  $UPSTREAM_NS ip link set dev "tgq$slot" addrgenmode none
  $UPSTREAM_NS ip addr add "$UPSTREAM/30" dev "tgq$slot"
  $UPSTREAM_NS ip link set dev "tgq$slot" up
}

# bench_upstream_host_remove — stops every process in the upstream host's namespace (the
# holder last) and removes the veth pair; does nothing if bench_upstream_host did not run.
bench_upstream_host_remove() {
  local ns pid
  if [ -n "$UPSTREAM_HOLDER" ]; then
    if ns=$(readlink "/proc/$UPSTREAM_HOLDER/ns/net" 2>/dev/null); then
      for pid in /proc/[0-9]*; do
        pid=${pid#/proc/}
        [ "$pid" != "$UPSTREAM_HOLDER" ] && [ "$(readlink "/proc/$pid/ns/net" 2>/dev/null)" = "$ns" ] &&
          { kill "$pid" 2>/dev/null || true; }
      done
    fi
    kill "$UPSTREAM_HOLDER" 2>/dev/null || true
    wait "$UPSTREAM_HOLDER" 2>/dev/null || true
    UPSTREAM_HOLDER=
  fi
  if [ -n "$UPSTREAM_VETH" ]; then ip link del "$UPSTREAM_VETH" 2>/dev/null || true; UPSTREAM_VETH=; fi
  return 0
}
