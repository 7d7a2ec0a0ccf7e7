#!/usr/bin/env bash
# TLS interception benchmark: HTTPS GETs of a 100-byte file from nginx (TLS, 127.0.0.1)
# straight to nginx and through tollgate's intercepting proxy (in-process,
# examples/tls_bench.rs: CONNECT, TLS terminated with the execution CA, each request decided
# and counted, upstream TLS verified against the test CA), on one keep-alive connection and
# with a new connection (full handshakes, no resumption) per request; plus the cost of
# generating the execution CA and minting a leaf certificate. With MITM=1, mitmproxy
# (from PyPI, in a throwaway venv) is measured the same way for comparison.
#
#   bash scripts/bench-tls.sh                 # 3000 keep-alive / 500 new-connection requests
#   N_KEEPALIVE=1000 N_NEW=200 bash scripts/bench-tls.sh
#   MITM=1 bash scripts/bench-tls.sh
#   PERF_DIR=/tmp/profiles bash scripts/bench-tls.sh  # perf record -g of tollgate's keep-alive run
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
. scripts/lib/bench.sh
N_KEEPALIVE=${N_KEEPALIVE:-3000}
N_NEW=${N_NEW:-500}

bench_need nginx:nginx-light
bench_build -p tollgate --features testing --example tls_bench
BIN=target/release/examples/tls_bench

bench_work tollgate-bench-tls
bench_on_exit bench_cleanup

# The upstream's own CA and a leaf for bench.test.
bench_upstream_ca "$WORK" bench.test

NGINX_PORT=$(free_port); TOLLGATE_PORT=$(free_port); MITM_PORT=$(free_port)
bench_www small
bench_nginx_conf "127.0.0.1:$NGINX_PORT ssl" "" "    ssl_certificate $WORK/leaf.pem;
    ssl_certificate_key $WORK/leaf.key;
    ssl_session_tickets off;
    ssl_session_cache off;"
bench_start_nginx
bench_start "$BIN" proxy "127.0.0.1:$TOLLGATE_PORT" "127.0.0.1:$NGINX_PORT" "$WORK/ca.pem" "$WORK/execution-ca.pem" >"$WORK/proxy.out"
PROXY_PID=$STARTED
# BASELINE=/path/to/older/tls_bench: an older build's proxy measured in the same run.
BASELINE_PORT=$(free_port)
if [ -n "${BASELINE:-}" ]; then
  mkdir -p "$WORK/before"
  bench_start "$BASELINE" proxy "127.0.0.1:$BASELINE_PORT" "127.0.0.1:$NGINX_PORT" "$WORK/ca.pem" "$WORK/before/execution-ca.pem" >"$WORK/baseline.out"
  wait_tcp 127.0.0.1 "$BASELINE_PORT" 200
  for _ in $(seq 100); do [ -s "$WORK/before/execution-ca.pem" ] && break; sleep 0.05; done
fi
wait_tcp 127.0.0.1 "$NGINX_PORT" 200; wait_tcp 127.0.0.1 "$TOLLGATE_PORT" 200
for _ in $(seq 100); do [ -s "$WORK/execution-ca.pem" ] && break; sleep 0.05; done

RESULTS="$WORK/results.jsonl"
: >"$RESULTS"
# ROUNDS=N repeats the measurements N times, every path of a mode one after another within a
# round (this machine's speed drifts over minutes); ratios are to the same round's direct.
ROUNDS=${ROUNDS:-1}
for round in $(seq "$ROUNDS"); do
  for mode in keepalive new; do
    n=$([ "$mode" = keepalive ] && echo "$N_KEEPALIVE" || echo "$N_NEW")
    if [ "$round" = 1 ] && [ "$mode" = keepalive ] && [ -n "${PERF_DIR:-}" ]; then
      mkdir -p "$PERF_DIR"
      perf record -q -F 1999 -g -p "$PROXY_PID" -o "$PERF_DIR/tls-keepalive.data" 2>/dev/null &
      PERF_PID=$!
    fi
    tag="s/}\$/, \"round\": $round}/"
    "$BIN" client direct "127.0.0.1:$NGINX_PORT" "$WORK/ca.pem" "$n" "$mode" | sed "$tag" >>"$RESULTS"
    "$BIN" client proxy "127.0.0.1:$TOLLGATE_PORT" "$WORK/execution-ca.pem" "$n" "$mode" | sed "$tag" >>"$RESULTS"
    if [ -n "${PERF_PID:-}" ]; then kill -INT "$PERF_PID"; wait "$PERF_PID" || true; PERF_PID=; fi
    if [ -n "${BASELINE:-}" ]; then
      "$BIN" client proxy "127.0.0.1:$BASELINE_PORT" "$WORK/before/execution-ca.pem" "$n" "$mode" \
        | sed 's/"tollgate"/"tollgate-before"/' | sed "$tag" >>"$RESULTS"
    fi
  done
done

if [ "${MITM:-0}" = 1 ]; then
  /usr/bin/python3 -m venv "$WORK/venv" >/dev/null
  "$WORK/venv/bin/pip" install -q mitmproxy >/dev/null
  # mitmdump makes its CA under --set confdir. bench.test does not resolve, so map-remote
  # sends it to nginx by address, whose certificate then does not match: mitmproxy's
  # upstream verification is off (ssl_insecure), which only flatters mitmproxy.
  bench_start "$WORK/venv/bin/mitmdump" -q --listen-host 127.0.0.1 --listen-port "$MITM_PORT" \
    --set confdir="$WORK/mitm" --set ssl_insecure=true \
    --map-remote "|//bench.test|//127.0.0.1:$NGINX_PORT" \
    --set connection_strategy=lazy
  wait_tcp 127.0.0.1 "$MITM_PORT" 200
  for _ in $(seq 100); do [ -s "$WORK/mitm/mitmproxy-ca-cert.pem" ] && break; sleep 0.1; done
  "$BIN" client proxy "127.0.0.1:$MITM_PORT" "$WORK/mitm/mitmproxy-ca-cert.pem" "$N_KEEPALIVE" keepalive \
    | sed 's/"tollgate"/"mitmproxy"/' >>"$RESULTS" || echo '{"path":"mitmproxy","mode":"keepalive","error":"failed"}' >>"$RESULTS"
  "$BIN" client proxy "127.0.0.1:$MITM_PORT" "$WORK/mitm/mitmproxy-ca-cert.pem" "$N_NEW" new \
    | sed 's/"tollgate"/"mitmproxy"/' >>"$RESULTS" || echo '{"path":"mitmproxy","mode":"new","error":"failed"}' >>"$RESULTS"
fi

MINT=$("$BIN" mint 2000)

echo
echo "HTTPS GET of 100 bytes, sequential, one client; nginx 1 worker; $(nproc) cores"
/usr/bin/python3 - "$RESULTS" "$MINT" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
direct = {(r["mode"], r.get("round")): r for r in rows if r.get("path") == "direct"}
print("| round | connection | path | mean | p50 | p99 | req/s | p50 vs direct |")
print("|---|---|---|---|---|---|---|---|")
for r in rows:
    if "error" in r:
        print(f"| | {r['mode']} | {r['path']} | failed | | | | |")
        continue
    base = direct.get((r["mode"], r.get("round"))) or direct.get((r["mode"], 1))
    ratio = f"{r['p50_us'] / base['p50_us']:.2f}x" if base else ""
    print(f"| {r.get('round', '')} | {r['mode']} | {r['path']} | {r['mean_us']:.0f} µs | "
          f"{r['p50_us']:.0f} µs | {r['p99_us']:.0f} µs | {r['req_per_s']:.0f} | {ratio} |")
mint = json.loads(sys.argv[2])
print()
print(f"execution CA generation: {mint['ca_generate_us']} µs; leaf certificate minted "
      f"(key pair shared, ServerConfig built): {mint['leaf_mint_us']} µs; cached leaf lookup: "
      f"{mint['leaf_cached_us']:.2f} µs")
PY
