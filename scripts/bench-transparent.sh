#!/usr/bin/env bash
# Transparent egress benchmark: the same request from inside `tollgate run`, side by side in
# one run, through the proxy variables (the client talks to the proxy listener) and in
# transparent mode (the client ignores the proxy: it resolves the name through the stub
# resolver, gets a synthetic 127.77.x.y address and its connection is DNATed to the
# transparent listener); plus what transparent mode adds to starting `tollgate run`.
#
# The upstream is nginx in a test network namespace behind a veth (10.201.x.y/30), reached
# by name through a `network.hosts` pin and `allowed_ips`, as bench-proxy-sandbox.sh does.
# Each cell is its own `tollgate run` (as shipped: INFO log, audit on), on four paths:
# `direct` (the client in the host namespace, no proxy, for scale), `proxy variables`,
# `proxy variables, --no-transparent` (the same without the stub resolver and the nat table,
# whose hook turns conntrack on for the whole namespace) and `transparent`. Measured:
#   - HTTP, 100-byte response, wrk: 1 and 32 keep-alive connections, and 1 connection with
#     `Connection: close` (a new connection per request, so the per-connection work shows:
#     the DNAT, SO_ORIGINAL_DST, sniffing the first bytes). wrk has no proxy support, so the
#     proxy rows send absolute-form requests to $HTTP_PROXY (bench_wrk_lua); the transparent
#     row is wrk straight at http://upstream.test/small.
#   - HTTPS (intercepted), 100-byte response, curl: N requests from one curl process on one
#     keep-alive connection, and with `Connection: close` (a TLS handshake per request). wrk
#     cannot CONNECT, so every row uses curl: through $HTTPS_PROXY, or with `--noproxy '*'`.
#     curl is given only the execution CA (see inside.sh for why); one more pair of rows
#     leaves it the system trust store tollgate binds over, with no CA variable.
#   - DNS: N getaddrinfo() lookups (A only, from Python) of the allowed name against the stub
#     resolver, and of localhost (answered from /etc/hosts: the same loop without a query).
#   - startup: `tollgate run --policy P -- /bin/true` transparent (the default) vs
#     `--no-transparent`, and `tollgate run -- /bin/true` without a network (hyperfine).
# Proxy CPU is the supervisor's utime+stime per request (or lookup) during the measurement.
# The machine is noisy, so everything runs in ROUNDS rounds (the paths of a row in reverse
# order every other round; startup in ROUNDS hyperfine runs of RUNS/ROUNDS each), and each
# ratio is taken within a round: the table gives their median and range.
#
#   bash scripts/bench-transparent.sh          # 3 rounds, 5 s per wrk cell: about 7 minutes
#   ROUNDS=5 DURATION=10s N_KEEPALIVE=5000 N_NEW=500 N_DNS=10000 RUNS=500 bash scripts/bench-transparent.sh
#   TOLLGATE=/path/to/tollgate bash scripts/bench-transparent.sh   # that build, no cargo build
#
# Needs root. Every packet stays on this machine: loopback, the sandbox's own namespace, and
# a veth pair to a namespace this script creates, all removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
. scripts/lib/bench.sh
DURATION=${DURATION:-5s}
N_KEEPALIVE=${N_KEEPALIVE:-2000}
N_NEW=${N_NEW:-300}
N_DNS=${N_DNS:-5000}
RUNS=${RUNS:-300}
ROUNDS=${ROUNDS:-3}

if [ "$(id -u)" -ne 0 ]; then
  echo "run as root: it builds a network namespace and runs tollgate" >&2
  exit 1
fi

bench_need wrk:wrk nginx:nginx-light hyperfine:hyperfine curl:curl openssl:openssl
WRK=$(command -v wrk)

if [ -z "${TOLLGATE:-}" ]; then
  bench_build -p tollgate
  TOLLGATE=${CARGO_TARGET_DIR:-$PWD/target}/release/tollgate
fi

bench_work tollgate-bench-transparent
bench_upstream_ca_dirs

# ---- the upstream: nginx on :80 and :443 (TLS, a leaf for upstream.test from our own CA).
bench_upstream_host tgt
bench_upstream_ca "$CA_DIR" upstream.test
bench_www small
bench_nginx_conf "$UPSTREAM:80" "" "    listen $UPSTREAM:443 ssl;
    ssl_certificate $CA_DIR/leaf.pem;
    ssl_certificate_key $CA_DIR/leaf.key;
    ssl_session_tickets off;
    ssl_session_cache off;"
# shellcheck disable=SC2086 # UPSTREAM_NS is a command prefix
bench_start_nginx $UPSTREAM_NS
wait_tcp "$UPSTREAM" 80
wait_tcp "$UPSTREAM" 443

cat >"$WORK/policy.yaml" <<YAML
version: 1
team: bench
network:
  hosts:
    upstream.test: $UPSTREAM
  upstream_ca: {file: $CA_DIR/ca.pem}
  allow:
    - host: upstream.test
      ports: [80, 443]
      schemes: [http, https]
      allowed_ips: [$SUBNET]
limits:
  max_requests: 1000000000
  max_connections: 1024
YAML
bench_wrk_lua upstream-small upstream.test small >/dev/null
# curl configurations: N transfers of the small file, one per line of -w output (seconds).
curl_config() { # NAME COUNT [HEADER]
  {
    echo 'silent'; echo 'fail'
    # shellcheck disable=SC2028 # the \n is curl's to expand
    echo 'write-out = "%{time_total}\n"'
    [ -z "${3:-}" ] || echo "header = \"$3\""
    for _ in $(seq "$2"); do echo 'url = "https://upstream.test/small"'; echo 'output = "/dev/null"'; done
  } >"$WORK/$1.curl"
}
curl_config warm 20
curl_config keepalive "$N_KEEPALIVE"
curl_config new "$N_NEW" "Connection: close"

# ---- what runs inside `tollgate run`. The sandbox cannot see the supervisor's /proc entry
# (hidepid), so the script marks the measured window with files in its output directory
# and the supervisor's CPU ticks are read out here around it.
mkdir -p "$WORK/out"; chmod 777 "$WORK/out"
cat >"$WORK/inside.sh" <<'SH'
#!/bin/sh
# Runs inside `tollgate run`. PATH_ is `proxy` (through $HTTP_PROXY / $HTTPS_PROXY) or
# `transparent` (ignoring them); CLIENT is `wrk`, `curl` or `dns`; the cell's settings
# (CONNS, THREADS, CLOSE, CURL, TRUST, NAME) come from --env. Marks the measured window for
# the outside: $OUT/measuring, then $OUT/measured, then waits (at most 10 s) for $OUT/read,
# written once the supervisor's ticks were taken.
set -eu
CONNS=${CONNS:-1} THREADS=${THREADS:-1} CLOSE=${CLOSE:-0} TRUST=${TRUST:-execution-ca}
# curl with OpenSSL 3.0 parses its whole CA file for every new connection (Debian's curl has
# a CA path, which turns its CA cache off): ~50 ms for the 146 certificates of the system
# store on this machine, the same with or without tollgate. TRUST=execution-ca gives it only
# the execution CA (the bundle's first certificate), as the direct row gets only the
# upstream's; TRUST=system leaves it the system store tollgate binds over (no CA variable).
# (The markers anchored: base64 lines can hold "END".)
awk '/^-----BEGIN / {n++} n == 1; n == 1 && /^-----END / {exit}' "$CURL_CA_BUNDLE" >"$OUT/execution-ca.pem"
wrk_run() { # WRK-ARGS… (duration, --latency)
  [ "$CLOSE" = 0 ] || set -- -H "Connection: close" "$@"
  case $PATH_ in
    proxy) "$WRK" -t"$THREADS" -c"$CONNS" "$@" -s "$WORK/upstream-small.lua" "$HTTP_PROXY" ;;
    transparent) "$WRK" -t"$THREADS" -c"$CONNS" "$@" http://upstream.test/small ;;
  esac
}
curl_run() { # CONFIG-NAME
  set -- -K "$WORK/$1.curl"
  [ "$PATH_" = proxy ] || set -- --noproxy '*' "$@"
  case $TRUST in
    execution-ca) /usr/bin/curl --cacert "$OUT/execution-ca.pem" "$@" ;;
    system) env -u CURL_CA_BUNDLE -u SSL_CERT_FILE /usr/bin/curl "$@" ;;
  esac
}
dns_run() { # COUNT — lookups of $NAME, one time in seconds a line
  /usr/bin/python3 -c '
import socket, sys, time
for _ in range(int(sys.argv[1])):
    start = time.perf_counter()
    socket.getaddrinfo(sys.argv[2], 80, socket.AF_INET, socket.SOCK_STREAM)
    print(f"{time.perf_counter() - start:.9f}")
' "$1" "$NAME"
}
case $CLIENT in
  wrk) wrk_run -d1s >/dev/null ;;
  curl) curl_run warm >/dev/null ;;
  dns) dns_run 20 >/dev/null ;;
esac
: >"$OUT/measuring"
date +%s%N >"$OUT/start"
case $CLIENT in
  wrk) wrk_run -d"$DURATION" --latency >"$OUT/client.out" ;;
  curl) curl_run "$CURL" >"$OUT/client.out" ;;
  dns) dns_run "$N_DNS" >"$OUT/client.out" ;;
esac
date +%s%N >"$OUT/end"
: >"$OUT/measured"
i=0; while [ ! -e "$OUT/read" ] && [ $i -lt 1000 ]; do sleep 0.01; i=$((i + 1)); done
SH
chmod 755 "$WORK/inside.sh"

TICK=$(getconf CLK_TCK)

# record_timings LABEL FILE CONNS TICKS DIR — one RESULTS line from a file of per-operation
# times in seconds (curl's -w, the lookup loop) and the window's wall clock.
record_timings() {
  /usr/bin/python3 - "$@" "$TICK" >>"$RESULTS" <<'PY'
import sys
label, file, conns, ticks, out, tick = sys.argv[1:]
times = sorted(float(line) for line in open(f"{out}/client.out") if line.strip())
wall = (int(open(f"{out}/end").read()) - int(open(f"{out}/start").read())) / 1e9
n = len(times)
us = lambda q: f"{times[min(n - 1, int(n * q))] * 1e6:.0f}us"
cpu = "-" if ticks == "-" else f"{int(ticks) * 1e6 / int(tick) / n:.1f}"
print("\t".join([file, conns, label, f"{n / wall:.0f}", us(0.5), us(0.99), cpu, ""]))
PY
}

# check_path DIR PATH_ CLIENT RESOLVER — the audit says the traffic took the path the row is
# named after (every record of the transparent listener has "transparent": true), and the
# summary has the resolver's counters exactly when it should have run (RESOLVER: on or off).
check_path() {
  local dir=$1 path=$2 client=$3 resolver=$4 transparent
  transparent=$(grep -c '"transparent":true' "$PRIVATE/audit.jsonl" || true)
  if [ "$client" = dns ]; then :
  elif [ "$path" = transparent ] && [ "$transparent" -eq 0 ]; then
    echo "transparent row without transparent audit records (see $dir)" >&2; exit 1
  elif [ "$path" = proxy ] && [ "$transparent" -ne 0 ]; then
    echo "proxy row with transparent audit records (see $dir)" >&2; exit 1
  fi
  if grep -q '"dns"' "$PRIVATE/summary.json"; then
    [ "$resolver" = on ] || { echo "dns counters in the summary of a --no-transparent run (see $dir)" >&2; exit 1; }
  else
    [ "$resolver" = off ] || { echo "no dns counters in the summary: is transparent egress on? (see $dir)" >&2; exit 1; }
  fi
}

CELL=0
# measure_sandbox LABEL PATH_ CLIENT SCHEME ROW [VAR=VALUE | --OPTION]… — one cell: one
# `tollgate run` of inside.sh, the VARs (CONNS, THREADS, CLOSE, CURL, TRUST, NAME) passed
# to it, the OPTIONs (--no-transparent) to `tollgate run`; recorded as row ROW, path LABEL.
measure_sandbox() {
  local label=$1 path=$2 client=$3 scheme=$4 row=$5 dir supervisor before after setting
  local settings=() resolver=on
  shift 5
  for setting in "$@"; do
    case $setting in
      --no-transparent) settings+=("$setting"); resolver=off ;;
      --*) echo "measure_sandbox: unknown option $setting" >&2; exit 1 ;;
      *) settings+=(--env "$setting") ;;
    esac
  done
  CELL=$((CELL + 1)); dir="$WORK/out/$CELL"
  mkdir -p "$dir"; chmod 777 "$dir"
  "$TOLLGATE" run --policy "$WORK/policy.yaml" --audit "$PRIVATE/audit.jsonl" \
    --summary "$PRIVATE/summary.json" --share "$WORK" \
    --env "WRK=$WRK" --env "WORK=$WORK" --env "OUT=$dir" --env "DURATION=$DURATION" \
    --env "N_DNS=$N_DNS" --env "PATH_=$path" --env "CLIENT=$client" "${settings[@]}" \
    -- /bin/sh "$WORK/inside.sh" >"$dir/stdout" 2>"$dir/stderr" &
  supervisor=$!
  bench_wait_for "$dir/measuring" "$supervisor"; before=$(bench_ticks "$supervisor" 2>/dev/null || echo 0)
  bench_wait_for "$dir/measured" "$supervisor"; after=$(bench_ticks "$supervisor" 2>/dev/null || echo 0)
  : >"$dir/read"
  wait "$supervisor" || {
    # Kept for a look: the cell's output and its audit log (the work directories go).
    mkdir -p "$WORK-failed"; cp -r "$dir" "$PRIVATE/audit.jsonl" "$WORK-failed/" 2>/dev/null || true
    echo "tollgate run failed ($label, $client, $row), kept in $WORK-failed:" >&2
    tail -n 5 "$dir/stdout" "$dir/stderr" >&2; exit 1
  }
  check_path "$dir" "$path" "$client" "$resolver"
  if [ "$client" = wrk ]; then
    bench_record "$label" "$scheme" "$row" "$((after - before))" "$dir/client.out"
  else
    record_timings "$label" "$scheme" "$row" "$((after - before))" "$dir"
  fi
  [ "$label" != "stub resolver" ] || DNS_SUMMARY=$(cat "$PRIVATE/summary.json")
  rm -f "$PRIVATE/audit.jsonl" "$PRIVATE/summary.json" "$dir/stdout" "$dir/stderr"
}

# The host-namespace reference rows, over the veth, no proxy.
measure_direct_wrk() { # ROW CONNS=… THREADS=… CLOSE=…
  local row=$1 conns threads close header=()
  conns=${2#CONNS=}; threads=${3#THREADS=}; close=${4#CLOSE=}
  [ "$close" = 0 ] || header=(-H "Connection: close")
  wrk -t"$threads" -c"$conns" -d1s "${header[@]}" "http://$UPSTREAM/small" >/dev/null
  wrk -t"$threads" -c"$conns" -d"$DURATION" --latency "${header[@]}" "http://$UPSTREAM/small" >"$WORK/wrk.out"
  bench_record direct http "$row" - "$WORK/wrk.out"
}
measure_direct_curl() { # ROW CURL=…
  local dir="$WORK/out/direct-curl" config=${2#CURL=}
  local direct=(--noproxy "*" --cacert "$CA_DIR/ca.pem" --resolve "upstream.test:443:$UPSTREAM")
  mkdir -p "$dir"
  curl "${direct[@]}" -K "$WORK/warm.curl" >/dev/null
  date +%s%N >"$dir/start"
  curl "${direct[@]}" -K "$WORK/$config.curl" >"$dir/client.out"
  date +%s%N >"$dir/end"
  record_timings direct https "$1" - "$dir"
}

# measure_paths ROUND CLIENT SCHEME ROW PATHS SETTINGS… — the row's cells for each of PATHS
# (direct, proxy, no-transparent, transparent), side by side, in reverse order every other
# round so that no path always comes first.
measure_paths() {
  local round=$1 client=$2 scheme=$3 row=$4 paths path
  read -ra paths <<<"$5"
  shift 5
  [ $((round % 2)) = 1 ] || mapfile -t paths < <(printf '%s\n' "${paths[@]}" | tac)
  for path in "${paths[@]}"; do
    case $path in
      direct) "measure_direct_$client" "$row" "$@" ;;
      proxy) measure_sandbox "proxy variables" proxy "$client" "$scheme" "$row" "$@" ;;
      no-transparent) measure_sandbox "proxy variables, --no-transparent" proxy "$client" "$scheme" "$row" "$@" --no-transparent ;;
      transparent) measure_sandbox transparent transparent "$client" "$scheme" "$row" "$@" ;;
    esac
  done
}

ALL="direct proxy no-transparent transparent"
for round in $(seq "$ROUNDS"); do
  RESULTS="$WORK/results-$round.tsv"
  # HTTP, wrk: 1 and 32 keep-alive connections, then a new connection per request.
  for scenario in "1 1 0" "32 2 0" "1 1 1"; do
    read -r conns threads close <<<"$scenario"
    row=$conns; [ "$close" = 0 ] || row="$conns, Connection: close"
    measure_paths "$round" wrk http "$row" "$ALL" "CONNS=$conns" "THREADS=$threads" "CLOSE=$close"
  done
  # HTTPS (intercepted), curl: one keep-alive connection, then a new one per request.
  measure_paths "$round" curl https "1, curl keep-alive ($N_KEEPALIVE)" "$ALL" CURL=keepalive
  measure_paths "$round" curl https "1, curl Connection: close ($N_NEW)" "$ALL" CURL=new
  # The same new connections with curl trusting the system store (what a client that ignores
  # the CA variables does): the CA file's parsing per connection, in both paths alike.
  measure_paths "$round" curl https "1, curl Connection: close ($N_NEW), system store" \
    "proxy transparent" CURL=new TRUST=system
  # DNS: lookups against the stub resolver, and of localhost (from /etc/hosts, no query:
  # what Python and glibc cost without the resolver).
  measure_sandbox "stub resolver" transparent dns dns "getaddrinfo A ($N_DNS)" NAME=upstream.test
  measure_sandbox "/etc/hosts" transparent dns dns "getaddrinfo A ($N_DNS)" NAME=localhost
done

# ---- startup, in ROUNDS rounds of RUNS/ROUNDS runs of each command, so that the machine's
# load drifting during the measurement weighs on the three alike.
cat >"$WORK/startup.yaml" <<YAML
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
YAML
PER_ROUND=$(( RUNS / ROUNDS > 2 ? RUNS / ROUNDS : 2 ))
for round in $(seq "$ROUNDS"); do
  hyperfine -N --warmup 3 --runs "$PER_ROUND" --export-json "$WORK/startup-$round.json" \
    -n 'network off' "$TOLLGATE run -- /bin/true" \
    -n 'network on, --no-transparent' "$TOLLGATE run --no-transparent --policy $WORK/startup.yaml -- /bin/true" \
    -n 'network on, transparent' "$TOLLGATE run --policy $WORK/startup.yaml -- /bin/true" \
    >/dev/null 2>"$WORK/hyperfine.err" || { cat "$WORK/hyperfine.err" >&2; exit 1; }
done

echo
echo "nginx (1 worker) in a test namespace at $UPSTREAM behind a veth, reached as upstream.test"
echo "(hosts pin + allowed_ips); sandboxed rows run inside \`tollgate run\` as the sandbox user;"
echo "direct rows run in the host namespace. $ROUNDS rounds, wrk $DURATION per cell, $(nproc) cores."
echo "Medians over the rounds; a ratio is the median of the rounds' ratios (each taken within"
echo "one round), with their range. CPU = supervisor utime+stime per request (per lookup)."
/usr/bin/python3 - "$WORK" "$ROUNDS" "${DNS_SUMMARY:-}" <<'PY'
import json, statistics, sys

work, rounds, dns_summary = sys.argv[1], int(sys.argv[2]), sys.argv[3]

def micros(text):
    for unit, scale in (("us", 1), ("ms", 1e3), ("s", 1e6)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * scale
    return float("nan")

def shown(us):
    return f"{us:.0f} µs" if us < 1000 else f"{us / 1000:.2f} ms"

# cells[(scheme, row, label)] = one dict per round
cells, order = {}, []
for r in range(1, rounds + 1):
    for line in open(f"{work}/results-{r}.tsv"):
        scheme, row, label, rps, p50, p99, cpu, errors = line.rstrip("\n").split("\t")
        key = (scheme, row, label)
        if key not in cells:
            cells[key] = {}
            order.append(key)
        cells[key][r] = {"rps": float(rps), "p50": micros(p50), "p99": micros(p99),
                         "cpu": None if cpu == "-" else float(cpu), "errors": errors}

def ratio(key, base, field):
    values = [cells[key][r][field] / cells[base][r][field]
              for r in cells[key] if r in cells[base] and cells[key][r][field] and cells[base][r][field]]
    if not values:
        return ""
    text = f"{statistics.median(values):.2f}x"
    return text + (f" ({min(values):.2f}–{max(values):.2f})" if len(values) > 1 else "")

print()
print("| scheme | conns | path | req/s | p50 | p99 | proxy CPU/req (µs) "
      "| req/s vs proxy | p50 vs proxy | CPU vs proxy | errors |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for key in order:
    scheme, row, label = key
    runs = list(cells[key].values())
    med = lambda field: statistics.median(run[field] for run in runs)
    cpu = "-" if runs[0]["cpu"] is None else f"{med('cpu'):.0f}"
    base = (scheme, row, "proxy variables")
    ratios = ["", "", ""]
    if label not in ("direct", "proxy variables") and base in cells:
        ratios = [ratio(key, base, "rps"), ratio(key, base, "p50"),
                  ratio(key, base, "cpu") if runs[0]["cpu"] is not None else ""]
    errors = "; ".join(sorted({run["errors"] for run in runs if run["errors"]}))
    print(f"| {scheme} | {row} | {label} | {med('rps'):.0f} | {shown(med('p50'))} | "
          f"{shown(med('p99'))} | {cpu} | " + " | ".join(ratios) + f" | {errors} |")
if dns_summary:
    print()
    print(f"resolver counters of the last lookup run (summary): {json.dumps(json.loads(dns_summary)['dns'])}")

times, cpu, deltas = {}, {}, []
for r in range(1, rounds + 1):
    results = {x["command"]: x for x in json.load(open(f"{work}/startup-{r}.json"))["results"]}
    for command, x in results.items():
        times.setdefault(command, []).extend(x["times"])
        cpu.setdefault(command, []).append(x["user"] + x["system"])
    deltas.append(results["network on, transparent"]["median"]
                  - results["network on, --no-transparent"]["median"])
median = {command: statistics.median(t) for command, t in times.items()}
off, plain = median["network off"], median["network on, --no-transparent"]
print()
print(f"| `tollgate run … -- /bin/true` | min | median | p95 | CPU (user+sys) | vs network off "
      f"| vs --no-transparent |")
print("|---|---|---|---|---|---|---|")
for command, t in times.items():
    t = sorted(t)
    p95 = t[max(0, int(len(t) * 0.95) - 1)]
    print(f"| {command} | {t[0] * 1000:.2f} ms | {median[command] * 1000:.2f} ms | {p95 * 1000:.2f} ms | "
          f"{statistics.mean(cpu[command]) * 1000:.2f} ms | "
          f"{median[command] / off:.2f}x | {median[command] / plain:.2f}x |")
added = median["network on, transparent"] - plain
fastest = min(times["network on, transparent"]) - min(times["network on, --no-transparent"])
print()
print(f"transparent egress adds {added * 1000:+.2f} ms to the median start (network on), "
      f"{fastest * 1000:+.2f} ms to the fastest; per round (medians): "
      f"{', '.join(f'{d * 1000:+.2f}' for d in deltas)} ms.")
PY
