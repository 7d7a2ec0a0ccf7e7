#!/usr/bin/env bash
# The node service (`tollgate serve`, issue #12) measured side by side in one run:
#   1. launch latency: a local `tollgate run`, the same through `--connect`, and bwrap;
#   2. where one launch's time goes (a `perf` timeline of scheduler and system-call events);
#   3. the service's memory idle and with 1, 10 and 50 executions running;
#   4. launches per second through the service (and locally) with 1, 8 and 32 launchers;
#   5. 200 executions through the service started at once, twice: their exit statuses, and
#      what is left behind afterwards.
# Prints Markdown tables (docs/benchmarks.md, "Node service").
#
# The service runs as root on a node.yaml of its own (launch socket, team directory with one
# team `bench` whose policy enables the network with an empty allow list, metrics socket and
# launch audit, all in a temporary directory). The callers are a system user the script
# creates and removes, allowed team `bench` only; local runs and bwrap run as root. Every
# process the script starts is stopped, and the user and the directory removed, on every
# exit path.
#
# Usage: sudo scripts/bench-serve.sh [RUNS]
#   RUNS       latency runs per command (default 200), split over ROUNDS (default 3) hyperfine
#              rounds in alternating order
#   TOLLGATE   the binary to measure (default target/dist/tollgate, the shipped build, built
#              with `cargo build --profile dist -p tollgate` when missing); copied into the
#              work directory first, so that a rebuild during the run changes nothing
#   TRACED     launches of each kind in step 2 (default 8); LAUNCHES per throughput cell in
#              step 4 (160); CONCURRENT (200), HOLD (10 s, long enough for all of them to run
#              at once) and WAVES (2) for step 5
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/bench.sh
source scripts/lib/bench.sh

runs=${1:-200}
rounds=${ROUNDS:-3}
launches=${LAUNCHES:-160}
concurrent=${CONCURRENT:-200}
hold=${HOLD:-10}
waves=${WAVES:-2}
traced=${TRACED:-8}
helper="/usr/bin/python3 $PWD/scripts/lib/bench_serve.py"
[ "$(id -u)" = 0 ] || { echo "bench-serve.sh: run it as root (it starts the node service)" >&2; exit 2; }
bench_need hyperfine:hyperfine bwrap:bubblewrap setpriv:util-linux curl:curl

if [ -z "${TOLLGATE:-}" ]; then
  TOLLGATE=$PWD/target/dist/tollgate
  [ -x "$TOLLGATE" ] || cargo build --quiet --profile dist -p tollgate
fi
[ -x "$TOLLGATE" ] || { echo "bench-serve.sh: no binary at $TOLLGATE" >&2; exit 2; }

SERVICE=
USER_NAME=
FAILED=() # what failed, for the end: measurements go on, the exit status says so
bench_work tollgate-bench-serve
cleanup() {
  local pid
  bench_stop_processes
  if [ -n "$SERVICE" ] && kill -0 "$SERVICE" 2>/dev/null; then
    kill -TERM "$SERVICE"
    for _ in $(seq 100); do kill -0 "$SERVICE" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SERVICE" 2>/dev/null || true
    wait "$SERVICE" 2>/dev/null || true
  fi
  if [ -n "$USER_NAME" ]; then
    for pid in $(pgrep -u "$USER_NAME" || true); do kill -KILL "$pid" 2>/dev/null || true; done
    userdel "$USER_NAME" 2>/dev/null || true
    groupdel "$USER_NAME" 2>/dev/null || true
  fi
  # The migration measurement's cgroups, had it been interrupted (its sleep moved out first).
  for dir in "/sys/fs/cgroup/memory/tollgate-bench-serve-$$-"[ab]; do
    [ -d "$dir" ] || continue
    while read -r pid; do
      echo "$pid" >/sys/fs/cgroup/memory/cgroup.procs; kill -KILL "$pid" 2>/dev/null || true
    done <"$dir/cgroup.procs"
    rmdir "$dir" 2>/dev/null || true
  done
  rm -rf "${WORK:?}"
}
bench_on_exit cleanup

# The binary, the caller and the node.
install -m 755 "$TOLLGATE" "$WORK/tollgate"
tollgate=$WORK/tollgate
USER_NAME=tg-bench-$$
useradd --system --user-group --no-create-home --shell /usr/sbin/nologin "$USER_NAME"
caller_uid=$(id -u "$USER_NAME")
as_caller=(setpriv "--reuid=$USER_NAME" "--regid=$USER_NAME" --init-groups --)
mkdir -m 755 "$WORK/teams" "$WORK/secrets"
printf 'version: 1\nteam: bench\nnetwork:\n  allow: []\n' >"$WORK/teams/bench.yaml"
chmod 644 "$WORK/teams/bench.yaml"
socket=$WORK/tollgate.sock
cat >"$WORK/node.yaml" <<YAML
socket: {path: $socket, owner: root, group: $USER_NAME, mode: "0660"}
teams_dir: $WORK/teams
secrets_dir: $WORK/secrets
metrics: unix:$WORK/metrics.sock
audit: $WORK/launches.jsonl
reload_interval: 1s
gc_interval: 10m
shutdown_grace: 10s
max_executions: 256
callers:
  - uid: $caller_uid
    teams: [bench]
YAML
chmod 644 "$WORK/node.yaml"

env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  "$tollgate" serve --config "$WORK/node.yaml" >"$WORK/service.log" 2>&1 &
SERVICE=$!
for _ in $(seq 600); do [ -S "$socket" ] && break; kill -0 "$SERVICE" 2>/dev/null || break; sleep 0.05; done
if [ ! -S "$socket" ]; then
  echo "tollgate serve did not listen on $socket:" >&2; cat "$WORK/service.log" >&2; exit 1
fi
say_failure() { # COMMAND-DESCRIPTION OUTPUT-FILE
  echo "FAILED: $1" >&2; cat "$2" >&2
  echo "--- service log (last 20 lines) ---" >&2; tail -20 "$WORK/service.log" >&2
}
metrics() { curl -s --unix-socket "$WORK/metrics.sock" http://localhost/metrics; }
mem_line() { $helper row "$1" "$2"; } # LABEL TREE-JSON: one row of the memory table
step() { echo "bench-serve.sh: ${SECONDS}s: $1" >&2; } # progress, on stderr
idle_start=$($helper tree "$SERVICE" "$caller_uid")

echo "# Node service benchmark"
echo
echo "binary: $TOLLGATE ($(stat -c %s "$tollgate") bytes, $(sha256sum "$tollgate" | cut -c1-12)); HEAD $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
echo "machine: $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg) at the start; kernel $(uname -r)"

# ---------------------------------------------------------------------------------------
# 1. Launch latency.
step "latency"
names=$WORK/names.tsv
latency=(
  "bwrap|bwrap --unshare-all --die-with-parent --ro-bind / / /bin/true|0|bwrap --unshare-all --die-with-parent --ro-bind / / /bin/true"
  "setpriv|${as_caller[*]} /bin/true|0|setpriv … /bin/true (the caller's switch to the test user, alone)"
  "local-off|$tollgate run -- /bin/true|0|\`tollgate run -- /bin/true\` (root, local, network off)"
  "local-team|$tollgate run --policy $WORK/teams/bench.yaml -- /bin/true|0|\`tollgate run --policy bench.yaml -- /bin/true\` (root, local, the team's policy)"
  "connect|${as_caller[*]} $tollgate run --connect $socket --team bench -- /bin/true|0|\`tollgate run --connect SOCK --team bench -- /bin/true\` (test user)"
  "refused|${as_caller[*]} $tollgate run --connect $socket --team other -- /bin/true|125|the same for a team it may not use: refused, 125 (client + service round trip, no worker)"
  "no-service|${as_caller[*]} $tollgate run --connect $WORK/absent.sock --team bench -- /bin/true|125|the same with no service at SOCK: 125 (client start alone)"
)
: >"$names"
hyperfine_args=()
for entry in "${latency[@]}"; do
  IFS='|' read -r name cmd status shown <<<"$entry"
  printf '%s\t%s\t%s\n' "$name" "$shown" "$status" >>"$names"
  # One launch first, so that a failing command is reported as it failed.
  set +e; $cmd >"$WORK/check.out" 2>&1; got=$?; set -e
  if [ "$got" != "$status" ]; then say_failure "$cmd exited $got, not $status" "$WORK/check.out"; exit 1; fi
  hyperfine_args+=("$name" "$cmd")
done
per_round=$(( (runs + rounds - 1) / rounds ))
exports=()
for round in $(seq "$rounds"); do
  order=()
  for ((i = 0; i < ${#hyperfine_args[@]}; i += 2)); do
    pair=(-n "${hyperfine_args[i]}" "${hyperfine_args[i + 1]}")
    if [ $((round % 2)) = 1 ]; then order+=("${pair[@]}"); else order=("${pair[@]}" "${order[@]}"); fi
  done
  hyperfine -N -i --style none --warmup 5 --runs "$per_round" --export-json "$WORK/latency-$round.json" "${order[@]}" >/dev/null 2>"$WORK/hyperfine.err"
  exports+=("$WORK/latency-$round.json")
done
echo
echo "## 1. Launch latency (hyperfine -N, $rounds rounds of $per_round runs, alternating order)"
echo
if ! $helper exit-codes "$names" "${exports[@]}" >"$WORK/codes.txt"; then
  # hyperfine keeps no output of a run: what exited how is all there is to report.
  FAILED+=("latency runs: $(paste -sd ';' "$WORK/codes.txt")")
  sed 's/^/FAILED: /' "$WORK/codes.txt"
  echo
fi
$helper stats "$names" bwrap "${exports[@]}"

# ---------------------------------------------------------------------------------------
# 2. Where the time goes.
step "where the time goes"
echo
echo "## 2. Where a launch's time goes ($traced launches of each kind, alternating, 200 ms apart, perf record -a)"
if ! command -v perf >/dev/null; then
  echo "perf is not installed: skipped"
else
  events=(-e sched:sched_process_fork -e sched:sched_process_exec -e sched:sched_process_exit
    -e syscalls:sys_enter_connect -e syscalls:sys_enter_sendmsg -e syscalls:sys_exit_recvmsg
    -e syscalls:sys_enter_sendto -e syscalls:sys_enter_fcntl --filter 'fd == 3'
    -e syscalls:sys_enter_flock -e syscalls:sys_enter_write --filter 'count == 1'
    -e syscalls:sys_enter_prctl --filter 'option == 4')
  # Started disabled; enabled through its control FIFO, whose "ack" says the events are on.
  mkfifo "$WORK/perf.ctl" "$WORK/perf.ack"
  perf record -q -a -D -1 --control "fifo:$WORK/perf.ctl,$WORK/perf.ack" "${events[@]}" \
    -o "$WORK/perf.data" 2>"$WORK/perf.err" &
  perf_pid=$!
  PIDS+=("$perf_pid")
  exec 7<>"$WORK/perf.ack"
  echo enable >"$WORK/perf.ctl"
  if ! read -r -t 30 ack <&7 || [ "$ack" != ack ]; then
    echo "perf record did not start: $(cat "$WORK/perf.err")"; exit 1
  fi
  : >"$WORK/traced.tsv"
  # 200 ms apart: a cgroup v1 migration is cheap just after another one (see below), so
  # launches in a row would hand that saving to whichever comes second.
  for _ in $(seq "$traced"); do
    "${as_caller[@]}" "$tollgate" run --connect "$socket" --team bench -- /bin/true &
    echo "served $!" >>"$WORK/traced.tsv"; wait $!
    sleep 0.2
    "$tollgate" run --policy "$WORK/teams/bench.yaml" -- /bin/true &
    echo "local $!" >>"$WORK/traced.tsv"; wait $!
    sleep 0.2
  done
  kill -INT "$perf_pid"; wait "$perf_pid" 2>/dev/null || true; PIDS=()
  exec 7>&-
  perf script -i "$WORK/perf.data" -F comm,pid,tid,cpu,time,event,trace >"$WORK/perf.txt" 2>/dev/null
  $helper breakdown "$WORK/perf.txt" "$WORK/traced.tsv" "$SERVICE"
fi
echo
echo "What the init's join costs: one cgroup v1 migration (a sleeping process moved between two memory cgroups)"
echo
$helper migration "tollgate-bench-serve-$$" 20
# ---------------------------------------------------------------------------------------
# 3. Memory, idle and per running execution.
step "memory"
echo
echo "## 3. Memory: RSS / PSS in MiB (PSS shares each page among the processes that map it)"
echo
echo "| executions running | service | workers (one per execution) | sandbox processes (init + command) | clients (the callers' \`tollgate run --connect\`) |"
echo "|---|---|---|---|---|"
mem_line "0 (idle, just started)" "$idle_start"
mem_line "0 (idle, after steps 1 and 2)" "$($helper tree "$SERVICE" "$caller_uid")"
for n in 1 10 50; do
  started=()
  for _ in $(seq "$n"); do
    bench_start "${as_caller[@]}" "$tollgate" run --connect "$socket" --team bench -- /bin/sleep 600 </dev/null >/dev/null 2>>"$WORK/hold.err"
    started+=("$STARTED")
  done
  $helper wait-commands "$SERVICE" "$n" 60 || { say_failure "$n held executions did not all start" "$WORK/hold.err"; exit 1; }
  mem_line "$n" "$($helper tree "$SERVICE" "$caller_uid")"
  for pid in "${started[@]}"; do kill -TERM "$pid"; done
  statuses=()
  for pid in "${started[@]}"; do set +e; wait "$pid"; statuses+=($?); set -e; done
  PIDS=()
  wrong=$(printf '%s\n' "${statuses[@]}" | grep -vcx 143 || true)
  [ "$wrong" = 0 ] || { say_failure "$wrong of $n held executions did not end 143 on SIGTERM" "$WORK/hold.err"; exit 1; }
done
# A local run for comparison: its supervisor is what a worker is.
bench_start "$tollgate" run --policy "$WORK/teams/bench.yaml" -- /bin/sleep 600 </dev/null >/dev/null 2>&1
local_run=$STARTED
$helper wait-commands "$local_run" 1 60
local_tree=$($helper supervisor "$local_run")
kill -TERM "$local_run"; wait "$local_run" 2>/dev/null || true; PIDS=()
echo
echo "A local \`tollgate run --policy bench.yaml -- sleep 600\` (root), RSS / PSS in MiB: $local_tree"

# ---------------------------------------------------------------------------------------
# 4. Launches per second.
step "launches per second"
# The CPU ticks of process $1 itself, and of its children it has reaped (and theirs).
cpu_of() { awk '{print $14 + $15, $16 + $17}' "/proc/$1/stat"; }
tick=$(getconf CLK_TCK)
echo
echo "## 4. Launches per second ($launches launches of \`/bin/true\` per cell, split among the launchers)"
echo
echo "| launchers | path | launches | exit 0 | wall | launches/s | launchers' CPU / launch | service CPU / launch | workers' CPU / launch |"
echo "|---|---|---|---|---|---|---|---|---|"
for path in connect local; do
  for c in 1 8 32; do
    each=$(( (launches + c - 1) / c ))
    read -r own0 kids0 < <(cpu_of "$SERVICE")
    read -r _ mine0 < <(cpu_of $$)
    t0=$(date +%s.%N)
    started=()
    for j in $(seq "$c"); do
      if [ "$path" = connect ]; then
        bench_start "${as_caller[@]}" /bin/bash -c 'for ((i = 0; i < $3; i++)); do "$0" run --connect "$1" --team "$2" -- /bin/true; echo $?; done' \
          "$tollgate" "$socket" bench "$each" </dev/null >"$WORK/rate-$j.out" 2>"$WORK/rate-$j.err"
      else
        bench_start /bin/bash -c 'for ((i = 0; i < $3; i++)); do "$0" run --policy "$1" -- /bin/true; echo $?; done' \
          "$tollgate" "$WORK/teams/bench.yaml" - "$each" </dev/null >"$WORK/rate-$j.out" 2>"$WORK/rate-$j.err"
      fi
      started+=("$STARTED")
    done
    for pid in "${started[@]}"; do wait "$pid" || true; done
    PIDS=()
    t1=$(date +%s.%N)
    read -r own1 kids1 < <(cpu_of "$SERVICE")
    read -r _ mine1 < <(cpu_of $$)
    total=$(cat "$WORK"/rate-*.out | wc -l)
    ok=$(cat "$WORK"/rate-*.out | grep -cx 0 || true)
    if [ "$ok" != "$total" ]; then
      say_failure "$((total - ok)) of $total launches ($path, $c launchers) did not exit 0" <(cat "$WORK"/rate-*.err | sort | uniq -c | head -5)
      FAILED+=("launches per second, $path, $c launchers: $((total - ok)) of $total did not exit 0")
    fi
    awk -v c="$c" -v p="$path" -v n="$total" -v ok="$ok" -v t0="$t0" -v t1="$t1" -v o="$((own1 - own0))" -v k="$((kids1 - kids0))" -v m="$((mine1 - mine0))" -v hz="$tick" 'BEGIN {
      w = t1 - t0
      cpu = (p == "connect") ? sprintf("%.2f ms | %.2f ms", o * 1000 / hz / n, k * 1000 / hz / n) : "– | –"
      printf "| %d | %s | %d | %d | %.2f s | %.1f | %.2f ms | %s |\n", c, p, n, ok, w, n / w, m * 1000 / hz / n, cpu }'
    rm -f "$WORK"/rate-*.out "$WORK"/rate-*.err
  done
done

# ---------------------------------------------------------------------------------------
# 5. Many executions at once, and what they leave.
step "many at once"
echo
echo "## 5. $concurrent executions through the service released at once (\`sleep $hold\` each), $waves waves"
echo
netns_before=$(ip netns list | wc -l)
pinned_links() { find /sys/fs/bpf/tollgate -name '*link*' 2>/dev/null | wc -l; } # links are never pinned
links_before=$(pinned_links)
fd_count() { local fds=("/proc/$1/fd/"*); echo "${#fds[@]}"; }
fds_before=$(fd_count "$SERVICE")
barrier=$WORK/barrier
mkfifo -m 644 "$barrier"
# wave N: one row of the table; what failed goes below it.
wave() {
  local j pid started=() statuses=() t0 t1 t2 left
  exec 8<>"$barrier"
  for j in $(seq "$concurrent"); do
    # Each launcher blocks reading the barrier; closing its last writer releases them all.
    bench_start "${as_caller[@]}" /bin/sh -c 'read go <"$1"; exec "$0" run --connect "$2" --team bench -- /bin/sleep "$3"' \
      "$tollgate" "$barrier" "$socket" "$hold" </dev/null >/dev/null 2>"$WORK/many-$j.err" 8>&-
    started+=("$STARTED")
  done
  $helper waiting "$caller_uid" "$concurrent" 60 8>&-
  $helper peak "$SERVICE" $((hold + 120)) >"$WORK/peak.json" 8>&- &
  local sampler=$!
  t0=$(date +%s.%N)
  exec 8>&-
  for pid in "${started[@]}"; do set +e; wait "$pid"; statuses+=($?); set -e; done
  t1=$(date +%s.%N)
  PIDS=()
  wait "$sampler"
  for _ in $(seq 300); do
    left=$($helper leftovers "$WORK/launches.jsonl" "$SERVICE" "$caller_uid")
    [ "$(/usr/bin/python3 -c 'import json,sys; print(len(json.loads(sys.argv[1])["problems"]))' "$left")" = 0 ] && break
    sleep 0.1
  done
  t2=$(date +%s.%N)
  /usr/bin/python3 - "$1" "$t0" "$t1" "$t2" "$(cat "$WORK/peak.json")" "$left" "$($helper tree "$SERVICE")" \
    "$(fd_count "$SERVICE")" "${statuses[@]}" <<'PY'
import collections, json, sys
n, t0, t1, t2, peak, left, tree, fds, *statuses = sys.argv[1:]
peak, left, tree = json.loads(peak), json.loads(left), json.loads(tree)
counts = ", ".join(f"{c} × {s}" for s, c in sorted(collections.Counter(statuses).items()))
svc = tree["service"]
print(f"| {n} | {counts} | {float(t1) - float(t0):.2f} s | {peak['workers']} / {peak['commands']} "
      f"| {float(t2) - float(t1):.2f} s | {len(left['problems'])} | {svc['rss'] / 1024:.1f} / {svc['pss'] / 1024:.1f} MiB | {fds} |")
PY
  if printf '%s\n' "${statuses[@]}" | grep -vqx 0; then
    FAILED+=("wave $1: $(printf '%s\n' "${statuses[@]}" | grep -vcx 0) of $concurrent did not exit 0")
    for j in $(seq "$concurrent"); do [ -s "$WORK/many-$j.err" ] && { echo "    many-$j: $(head -c 300 "$WORK/many-$j.err")"; }; done | head -10
  fi
  LEFT=$left
}
echo "| wave | exit statuses | release → last caller's exit | peak workers / commands running (20 ms sampler) | clean after | things left | service RSS / PSS after | service descriptors after |"
echo "|---|---|---|---|---|---|---|---|"
for w in $(seq "$waves"); do wave "$w"; done
echo
echo "leftovers, every execution of this run (from the launch audit): $LEFT"
if [ "$(/usr/bin/python3 -c 'import json,sys; print(len(json.loads(sys.argv[1])["problems"]))' "$LEFT")" != 0 ]; then
  FAILED+=("left behind after the waves: $LEFT")
fi
echo "named network namespaces: $netns_before before the waves, $(ip netns list | wc -l) after; pinned eBPF links: $links_before before, $(pinned_links) after; the service's descriptors: $fds_before before"
echo "/metrics, team bench: $(metrics | grep -E '^tollgate_executions_(finished_total|active)' | tr '\n' ' ')"

step "done"
echo
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
if [ ${#FAILED[@]} -gt 0 ]; then
  echo
  echo "## Failures"
  printf -- '- %s\n' "${FAILED[@]}"
  exit 1
fi
