#!/usr/bin/env bash
# Installs every prerequisite, builds tollgate, and shows it deciding requests against the
# shipped example policy (examples/policies/allowlist.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --quiet
tollgate=target/release/tollgate
policy=examples/policies/allowlist.yaml

"$tollgate" policy check examples/policies/*.yaml
show() {
  printf '\n$ tollgate policy eval %s %s %s\n' "$policy" "$*"
  "$tollgate" policy eval "$policy" "$@" && echo "(exit 0: allowed)" || echo "(exit $?: denied)"
}
# --resolve pins names to documentation-free public addresses so the demo needs no DNS.
show GET https://api.github.com/repos/rust-lang/rust --resolve api.github.com=140.82.112.5
show POST https://api.openai.com/v1/chat/completions --resolve api.openai.com=104.18.7.192
show GET https://api.openai.com/v2/models
show GET http://api.github.com/ --resolve api.github.com=140.82.112.5
show GET https://docs.example.com/repos/x --resolve docs.example.com=93.184.216.34
show POST https://docs.example.com/repos/x
show GET https://api.github.com/ --resolve api.github.com=10.0.0.7
show GET 'http://0x7f.1/latest'
show DELETE https://api.github.com/repos/x --resolve api.github.com=140.82.112.5

# Inside the sandbox: the command runs as a user of its own in a box of its own (a root with
# only the host's system directories, its own processes as pid 2 and up, an empty /tmp),
# loopback only and a proxy; direct sockets are refused
# by the walls before any packet is routed (nothing here leaves the machine).
printf '\n$ tollgate run --policy %s -- /usr/bin/python3 probe.py\n' "$policy"
rm -f /tmp/tollgate-demo-audit.jsonl  # the audit log is appended to
"$tollgate" run --policy "$policy" --audit /tmp/tollgate-demo-audit.jsonl --summary /tmp/tollgate-demo-summary.json -- \
  /usr/bin/python3 -c '
import os, socket
print("user", os.getuid(), "pid", os.getpid(), "proxy", os.environ.get("HTTPS_PROXY"))
print("root:", sorted(os.listdir("/")), "| /home exists:", os.path.exists("/home"))
print("processes visible:", sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
      "| /tmp:", os.listdir("/tmp"), "| /run:", os.listdir("/run"))
for host, port in [("10.0.0.1", 80), ("169.254.169.254", 80), ("8.8.8.8", 53)]:
    s = socket.socket(); s.settimeout(2)
    try:
        s.connect((host, port)); print("connected to", host, "(unexpected)")
    except OSError as e:
        print(f"direct connect to {host}:{port} refused: {e.strerror}")
'
echo "exit status $?"
echo "audit log (bypass attempts):"; cat /tmp/tollgate-demo-audit.jsonl
echo "summary:"; cat /tmp/tollgate-demo-summary.json

# Through the proxy: the policy decides before any DNS lookup, and the sandbox sees why.
printf '\n$ tollgate run --policy %s -- /usr/bin/curl -sS https://evil.example.net/\n' "$policy"
"$tollgate" run --policy "$policy" -- /usr/bin/curl -sS https://evil.example.net/ || echo "(curl exit $?: the tunnel was refused)"
printf '\n$ tollgate run --policy %s -- /usr/bin/curl -sS http://evil.example.net/\n' "$policy"
"$tollgate" run --policy "$policy" -- /usr/bin/curl -sS http://evil.example.net/; echo
