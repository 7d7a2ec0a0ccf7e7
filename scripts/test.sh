#!/usr/bin/env bash
# Installs every prerequisite, then runs the whole test suite (as root: the sandbox tests
# build namespaces, cgroups and eBPF programs for real). This is exactly what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export PATH="$HOME/.cargo/bin:$PATH"

echo "== format"
cargo fmt --all -- --check
echo "== lint"
cargo clippy --all-targets --quiet -- -D warnings
echo "== tests"
cargo test --quiet --no-fail-fast 2>&1
