#!/usr/bin/env bash
# Measures the eBPF wall's costs side by side (run as root): a cold load + verify + pin, a
# reuse from the pins, attach + detach to one execution's cgroup, and cgroup create + remove.
# Prints medians over ROUNDS rounds (default 50) from a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${1:-50}"
TOLLGATE_BPF_BENCH_ROUNDS="$ROUNDS" cargo test --release -p tollgate --test bpf_wall \
  a_second_load_reuses_the_pins_and_reports_costs -- --exact --nocapture 2>&1 | grep '^bpf-bench'
