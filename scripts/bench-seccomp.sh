#!/usr/bin/env bash
# Measures what the sandbox's seccomp filter costs a system call (run as root): the same
# Python loops on the host (no filter) and inside `tollgate run` (the filter), side by side.
#   getppid         allowed whatever its arguments: the kernel's action cache answers it
#   ioctl(FIONREAD) a call whose arguments the filter reads (TIOCSTI, TIOCLINUX are refused)
#   socket+close    another one (the address family), plus the socket's own work
# Prints CPU nanoseconds per loop iteration (best of ROUNDS runs of N calls; loop overhead
# included) and the sandbox/host ratio. TOLLGATE defaults to the debug build: the filter's
# cost does not depend on how tollgate itself was compiled.
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-1000000}"
ROUNDS="${ROUNDS:-7}"
TOLLGATE="${TOLLGATE:-target/debug/tollgate}"
PY=/usr/bin/python3 # root's python3 may be a shim the sandbox user cannot run

LOOPS='
import fcntl, os, socket, sys, termios, time
n, rounds = int(sys.argv[1]), int(sys.argv[2])
r, w = os.pipe()
buf = bytearray(4)
def getppid():
    g = os.getppid
    for _ in range(n): g()
def ioctl():
    i, code = fcntl.ioctl, termios.FIONREAD
    for _ in range(n): i(r, code, buf)
def socket_close():
    s = socket.socket
    for _ in range(n // 10): s(socket.AF_UNIX, socket.SOCK_STREAM).close()
for name, loop, calls in (("getppid", getppid, n), ("ioctl(FIONREAD)", ioctl, n),
                          ("socket+close", socket_close, n // 10)):
    best = None
    for _ in range(rounds):
        start = time.process_time_ns()
        loop()
        took = (time.process_time_ns() - start) / calls
        best = took if best is None or took < best else best
    print("%s\t%.1f" % (name, best))
'

host=$("$PY" -c "$LOOPS" "$N" "$ROUNDS")
sandbox=$("$TOLLGATE" run --timeout 600s -- "$PY" -c "$LOOPS" "$N" "$ROUNDS")
printf '%-18s %10s %12s %8s\n' call host_ns sandbox_ns ratio
join -t $'\t' <(echo "$host" | sort) <(echo "$sandbox" | sort) |
  awk -F'\t' '{ printf "%-18s %10.1f %12.1f %7.2fx\n", $1, $2, $3, $3 / $2 }'
