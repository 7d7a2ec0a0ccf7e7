#!/usr/bin/env bash
# Startup cost of one sandboxed execution, side by side with other ways to start a process in
# a fresh network namespace. Prints the median of each (hyperfine -N, one run).
# Usage: sudo scripts/bench-startup.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-200}
cargo build --release --quiet -p tollgate 2>/dev/null
tollgate=$PWD/target/release/tollgate
policy=$(mktemp --suffix=.yaml)
json=$(mktemp --suffix=.json)
trap 'rm -f "$policy" "$json"' EXIT
printf 'version: 1\nteam: bench\nnetwork:\n  allow: []\n' > "$policy"
# What tollgate's root holds: the system directories read-only, the merged-/usr links as links.
box_binds=
for dir in /usr /bin /sbin /lib /lib32 /lib64 /libx32 /etc; do
  if [ -L "$dir" ]; then box_binds+=" --symlink $(readlink "$dir") $dir"
  elif [ -d "$dir" ]; then box_binds+=" --ro-bind $dir $dir"; fi
done
hyperfine -N --warmup 10 --runs "$runs" --export-json "$json" \
  -n '/bin/true' '/bin/true' \
  -n 'unshare -n /bin/true' 'unshare -n /bin/true' \
  -n 'bwrap --unshare-net' 'bwrap --dev-bind / / --unshare-net /bin/true' \
  -n 'bwrap, private mounts' 'bwrap --dev-bind / / --unshare-net --unshare-ipc --unshare-pid --proc /proc --tmpfs /tmp --tmpfs /var/tmp --tmpfs /run --tmpfs /dev/shm /bin/true' \
  -n 'bwrap, the box' "bwrap --unshare-all $box_binds --proc /proc --dev /dev --tmpfs /tmp --tmpfs /var/tmp --tmpfs /run --tmpfs /dev/shm /bin/true" \
  -n 'tollgate run (network disabled)' "$tollgate run -- /bin/true" \
  -n 'tollgate run (network enabled)' "$tollgate run --policy $policy -- /bin/true" >/dev/null
/usr/bin/python3 - "$json" <<'PY'
import json, sys
results = json.load(open(sys.argv[1]))["results"]
base = {r["command"]: r["median"] for r in results}
bwrap = base["bwrap, the box"]
print(f"| command | median | p95 | vs bwrap, the box |")
print(f"|---|---|---|---|")
for r in results:
    times = sorted(r["times"])
    p95 = times[int(len(times) * 0.95) - 1]
    print(f"| `{r['command']}` | {r['median']*1000:.2f} ms | {p95*1000:.2f} ms | {r['median']/bwrap:.2f}x |")
PY
