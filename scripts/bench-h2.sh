#!/usr/bin/env bash
# HTTP/2 through interception benchmark (issue #14): intercepted HTTP/2 against intercepted
# HTTP/1.1 keep-alive against direct, side by side in one run, with h2load (nghttp2-client).
#
# The upstream is nginx (one worker) in a test network namespace behind a veth, reached by
# name through a `network.hosts` pin and `allowed_ips`, as the other sandboxed benchmarks
# do; it serves a 100-byte file over TLS on two ports: 443 offers `h2` and `http/1.1` by
# ALPN, 8443 only `http/1.1` (so that tollgate's upstream leg can be either protocol). nginx
# rather than hypercorn from the test venv: one nginx worker answers this file far faster
# than tollgate relays it, so it is not what the tollgate rows measure.
#
# h2load has no proxy support, so inside `tollgate run` it reaches the upstream through
# transparent egress: it resolves upstream.test through the stub resolver, gets a synthetic
# address and its connection is redirected to the transparent listener, where TLS is
# intercepted (h2load does not verify certificates, so it needs no CA). `--h1` makes it
# offer only `http/1.1`; without it, it offers `h2` first and the cell is refused (shown as
# failed) unless the handshake chose `h2`. `direct` is h2load in the host namespace straight
# to nginx over the veth, for scale.
#
# Shapes (conns × streams): 1 × 1, 1 × 32 (32 concurrent streams on one connection: HTTP/2
# only) and 8 × 1. For each, the cells are direct (h2, http/1.1) and tollgate with the
# sandbox speaking h2 or http/1.1 and the upstream h2 (port 443) or http/1.1 (port 8443);
# MIXED=0 keeps only h2 → h2 and http/1.1 → http/1.1. Each tollgate cell is its own
# `tollgate run` (as shipped: INFO log, audit on), whose audit is checked: every record
# transparent, `complete`, 200, with the cell's `protocol`; the upstream protocol in the
# table is what the records' `upstream_protocol` says. Measured: requests/s (h2load's), p50
# and p99 (from its per-request log), and proxy CPU per request (the supervisor's
# utime+stime from /proc over the measured h2load run / its requests; the window includes
# the run's 1–8 TLS handshakes, under 0.5 µs a request at these counts).
#
# The machine is noisy, so everything runs in ROUNDS rounds (the cells of a shape in
# reverse order every other round); each ratio is taken within a round and given as the
# median over the rounds with their range.
#
#   bash scripts/bench-h2.sh                        # 3 rounds, 5 s per cell: about 6 minutes
#   ROUNDS=5 DURATION=10s bash scripts/bench-h2.sh
#   MIXED=0 ROUNDS=1 bash scripts/bench-h2.sh       # a quick look
#   SHAPES="1x32" bash scripts/bench-h2.sh          # only that shape (CONNSxSTREAMS)
#   TOLLGATE=/path/to/tollgate bash scripts/bench-h2.sh   # that build (default: the release
#                                                         # build, brought up to date)
#   PERF=1 ROUNDS=1 bash scripts/bench-h2.sh
#       # where the supervisor's time goes: `perf record -g` of it during each tollgate
#       # cell's measured window (which it slows: read that run's table as a profile)
#
# Needs root. Every packet stays on this machine: loopback, the sandbox's own namespace, and
# a veth pair to a namespace this script creates (10.201.x.y/30), all removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
. scripts/lib/bench.sh
DURATION=${DURATION:-5s}
ROUNDS=${ROUNDS:-3}
MIXED=${MIXED:-1}
SHAPES=${SHAPES:-1x1 1x32 8x1}

if [ "$(id -u)" -ne 0 ]; then
  echo "run as root: it builds a network namespace and runs tollgate" >&2
  exit 1
fi

bench_need h2load:nghttp2-client nginx:nginx-light openssl:openssl
[ -z "${PERF:-}" ] || bench_need perf:linux-perf
H2LOAD=$(command -v h2load)

if [ -z "${TOLLGATE:-}" ]; then
  bench_build -p tollgate
  TOLLGATE=${CARGO_TARGET_DIR:-$PWD/target}/release/tollgate
fi
[ -x "$TOLLGATE" ] || { echo "bench-h2.sh: no binary at $TOLLGATE" >&2; exit 2; }

bench_work tollgate-bench-h2
bench_upstream_ca_dirs

# ---- the upstream: nginx on :443 (h2 and http/1.1) and :8443 (http/1.1), a leaf for
# upstream.test from our own CA.
bench_upstream_host tgh
bench_upstream_ca "$CA_DIR" upstream.test
bench_www small
# nginx 1.22 (Debian 12) turns HTTP/2 on per listening socket (`listen … http2`); since
# 1.19.7 keepalive_requests (set high by bench_nginx_conf) also bounds an HTTP/2
# connection's requests, so neither protocol's connection is closed during a cell.
bench_nginx_conf "$UPSTREAM:443 ssl http2" "" "    listen $UPSTREAM:8443 ssl;
    ssl_certificate $CA_DIR/leaf.pem;
    ssl_certificate_key $CA_DIR/leaf.key;"
# shellcheck disable=SC2086 # UPSTREAM_NS is a command prefix
bench_start_nginx $UPSTREAM_NS
wait_tcp "$UPSTREAM" 443
wait_tcp "$UPSTREAM" 8443

cat >"$WORK/policy.yaml" <<YAML
version: 1
team: bench
network:
  hosts:
    upstream.test: $UPSTREAM
  upstream_ca: {file: $CA_DIR/ca.pem}
  allow:
    - host: upstream.test
      ports: [443, 8443]
      schemes: [https]
      allowed_ips: [$SUBNET]
limits:
  max_requests: 1000000000
  max_connections: 1024
YAML

# ---- one h2load cell, in the sandbox or on the host. The sandbox cannot see the
# supervisor's /proc entry (hidepid), so the script marks the measured window with files in
# $OUT (measuring, then measured) and the supervisor's CPU ticks are read out here around
# it; it then waits (at most 10 s) for $OUT/read, written once they were taken.
mkdir -p "$WORK/out"; chmod 777 "$WORK/out"
cat >"$WORK/h2load.sh" <<'SH'
#!/bin/sh
# h2load against $URL: PROTO (h2 or http/1.1), CONNS, STREAMS, THREADS, DURATION, OUT from
# the environment. A 1 s warm-up run (connections, the leaf certificate, the upstream pool),
# then the measured one with a per-request log. h2load's own failures are left to the
# caller's check (its output says what happened).
set -eu
run() {
  [ "$PROTO" = h2 ] || set -- --h1 "$@"
  "$H2LOAD" -t"$THREADS" -c"$CONNS" -m"$STREAMS" "$@" "$URL"
}
run -D 1 >"$OUT/warm-up.out" 2>&1 || true
: >"$OUT/measuring"
run -D "$DURATION" --log-file "$OUT/requests.log" >"$OUT/h2load.out" 2>&1 || true
: >"$OUT/measured"
i=0; while [ ! -e "$OUT/read" ] && [ $i -lt 1000 ]; do sleep 0.01; i=$((i + 1)); done
SH
chmod 755 "$WORK/h2load.sh"

# profile_start SUPERVISOR / profile_stop LABEL — with PERF=1, perf samples the supervisor's
# threads with call graphs during the measured window; the heaviest symbols (self time) and
# the system calls with what they call go to $WORK/profiles.txt.
profile_start() {
  perf record -q -F 999 -g -p "$1" -o "$WORK/perf.data" 2>/dev/null &
  PERF_PID=$!
}
profile_stop() {
  kill -INT "$PERF_PID"; wait "$PERF_PID" || true
  {
    echo; echo "== $1: self time by crate (or kind of kernel and libc work)"
    perf report -i "$WORK/perf.data" --stdio --no-children --sort dso,symbol \
      --percent-limit 0 -g none 2>/dev/null | /usr/bin/python3 scripts/lib/bench_h2.py profile
    echo "-- self time by object and symbol (≥ 1 %)"
    perf report -i "$WORK/perf.data" --stdio --no-children --sort dso,symbol \
      --percent-limit 1 -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -25
    echo "-- system calls, with what they call (≥ 1 %)"
    perf report -i "$WORK/perf.data" --stdio --children --sort symbol --percent-limit 1 \
      -g none 2>/dev/null | grep -E '(__x64_sys|__do_sys)' | head -12
  } >>"$WORK/profiles.txt"
  rm -f "$WORK/perf.data"
}

# context_switches PID — the context switches (voluntary and not) of PID's threads so far
# (a thread that has exited no longer counts: the blocking pool's idle threads leave after
# 10 s, so this can undercount).
context_switches() {
  cat /proc/"$1"/task/*/status 2>/dev/null |
    awk '/^(non)?voluntary_ctxt_switches/ {n += $2} END {print n + 0}'
}

RESULTS="$WORK/results.jsonl"
: >"$RESULTS"
CELL=0
# measure ROUND PATH CONNS STREAMS PROTO PORT — one cell: h2load with PROTO to upstream.test
# at PORT through `tollgate run` (PATH tollgate), or to nginx's address (PATH direct).
measure() {
  local round=$1 path=$2 conns=$3 streams=$4 proto=$5 port=$6 dir supervisor before after switches
  local threads=$(( conns > 1 ? 2 : 1 ))
  local settings=(PROTO="$proto" CONNS="$conns" STREAMS="$streams" THREADS="$threads"
    DURATION="$DURATION" H2LOAD="$H2LOAD")
  CELL=$((CELL + 1)); dir="$WORK/out/$CELL"
  mkdir -p "$dir"; chmod 777 "$dir"
  if [ "$path" = direct ]; then
    : >"$dir/read"
    env "${settings[@]}" URL="https://$UPSTREAM:$port/small" OUT="$dir" /bin/sh "$WORK/h2load.sh"
    /usr/bin/python3 scripts/lib/bench_h2.py cell "$round" "$conns" "$streams" "$proto" direct \
      "$port" - "$dir" >>"$RESULTS"
    return
  fi
  local envs=() setting
  for setting in "${settings[@]}" URL="https://upstream.test:$port/small" OUT="$dir"; do
    envs+=(--env "$setting")
  done
  "$TOLLGATE" run --policy "$WORK/policy.yaml" --audit "$PRIVATE/audit.jsonl" \
    --summary "$PRIVATE/summary.json" --share "$WORK" "${envs[@]}" \
    -- /bin/sh "$WORK/h2load.sh" >"$dir/stdout" 2>"$dir/stderr" &
  supervisor=$!
  bench_wait_for "$dir/measuring" "$supervisor"
  before=$(bench_ticks "$supervisor" 2>/dev/null || echo 0); switches=$(context_switches "$supervisor")
  [ -z "${PERF:-}" ] || profile_start "$supervisor"
  bench_wait_for "$dir/measured" "$supervisor"
  after=$(bench_ticks "$supervisor" 2>/dev/null || echo 0)
  switches=$(( $(context_switches "$supervisor") - switches ))
  [ -z "${PERF:-}" ] || profile_stop "$conns × $streams, $proto to tollgate, port $port"
  : >"$dir/read"
  if ! wait "$supervisor"; then
    # Kept for a look: the cell's output and its audit log (the work directories go).
    mkdir -p "$WORK-failed"; cp -r "$dir" "$PRIVATE/audit.jsonl" "$WORK-failed/" 2>/dev/null || true
    echo "tollgate run failed ($conns × $streams, $proto, port $port), kept in $WORK-failed:" >&2
    tail -n 5 "$dir/stdout" "$dir/stderr" >&2; exit 1
  fi
  /usr/bin/python3 scripts/lib/bench_h2.py cell "$round" "$conns" "$streams" "$proto" tollgate \
    "$port" "$((after - before))" "$dir" "$PRIVATE/audit.jsonl" "$switches" >>"$RESULTS"
  # A failed cell keeps its h2load output and audit log for a look.
  if tail -n 1 "$RESULTS" | grep -q '"error"'; then
    mkdir -p "$WORK-failed"; cp -r "$dir" "$WORK-failed/" 2>/dev/null || true
    cp "$PRIVATE/audit.jsonl" "$WORK-failed/$CELL/" 2>/dev/null || true
  fi
  rm -f "$PRIVATE/audit.jsonl" "$PRIVATE/summary.json"
  rm -rf "$dir"
}

# The cells of a shape: "PATH PROTO PORT" (443: nginx offers h2; 8443: http/1.1 only).
cells_of() { # STREAMS
  echo "direct h2 443"
  [ "$1" -gt 1 ] || echo "direct http/1.1 443"
  echo "tollgate h2 443"
  [ "$MIXED" = 0 ] || echo "tollgate h2 8443"
  if [ "$1" -eq 1 ]; then
    [ "$MIXED" = 0 ] || echo "tollgate http/1.1 443"
    echo "tollgate http/1.1 8443"
  fi
}

for round in $(seq "$ROUNDS"); do
  for shape in $SHAPES; do
    conns=${shape%x*} streams=${shape#*x}
    mapfile -t cells < <(cells_of "$streams")
    [ $((round % 2)) = 1 ] || mapfile -t cells < <(printf '%s\n' "${cells[@]}" | tac)
    for c in "${cells[@]}"; do
      read -r path proto port <<<"$c"
      measure "$round" "$path" "$conns" "$streams" "$proto" "$port"
    done
  done
done

echo
echo "nginx $(nginx -v 2>&1 | sed 's/.*nginx\///') (1 worker) in a test namespace at $UPSTREAM behind a veth,"
echo "reached as upstream.test (hosts pin + allowed_ips); tollgate rows: $(h2load --version | head -1)"
echo "inside \`tollgate run\` through transparent egress (TLS intercepted); direct rows: h2load in"
echo "the host namespace. 100-byte response, $ROUNDS rounds, h2load $DURATION per cell, $(nproc) cores;"
echo "binary $TOLLGATE; HEAD $(git rev-parse --short HEAD 2>/dev/null || echo '?'). Medians over the"
echo "rounds; a ratio is the median of the rounds' ratios (each within one round), with their range."
/usr/bin/python3 scripts/lib/bench_h2.py table "$RESULTS" "$ROUNDS"
[ -z "${PERF:-}" ] || cat "$WORK/profiles.txt"
if [ -d "$WORK-failed" ]; then echo; echo "failed cells' output kept in $WORK-failed"; fi
