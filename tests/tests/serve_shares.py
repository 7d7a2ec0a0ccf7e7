# A caller of the node service that builds its launch frame itself (serve_shares.rs runs
# this as an unprivileged test user), to send directory descriptors the real client never
# would: none at all, or one of another directory than the path names.
#
#   serve_shares.py SOCKET SPEC
#
# SPEC is JSON: {"args": [...], "open": [DIR, ...], "announced": N or null,
# "renames": [[FROM, TO], ...]}. Each DIR is opened O_PATH (as this user) and sent after
# stdin, stdout and stderr; then the renames are made (a directory swapped in under a path
# after it was opened); `announced` is the frame's `shares` (default: as many as sent).
# Prints one JSON line: the service's frames, how the connection ended, and what the
# command wrote to its stdout and stderr. Framing (connect, send_launch, answers) is
# serve_frames.py's, which the test puts before this script.

import json
import os
import sys

SPEC = json.loads(sys.argv[2])
# A guard against a service that never answers, not a measurement.
ANSWER_LIMIT = 60


def main():
    sock = connect(ANSWER_LIMIT)
    out_read, out_write = os.pipe()
    err_read, err_write = os.pipe()
    stdin = os.open("/dev/null", os.O_RDONLY)
    dirs = [os.open(path, os.O_PATH | os.O_DIRECTORY) for path in SPEC["open"]]
    for source, target in SPEC.get("renames", []):
        os.rename(source, target)
    announced = SPEC.get("announced")
    message = {
        "type": "launch",
        "version": 1,
        "args": SPEC["args"],
        "pass_env": {},
        "audit": False,
        "log": False,
        "shares": len(dirs) if announced is None else announced,
    }
    fds = [stdin, out_write, err_write] + dirs
    send_launch(sock, message, fds)
    for fd in fds:
        os.close(fd)
    seen = answers(sock)
    sock.close()
    with os.fdopen(out_read, "r") as out, os.fdopen(err_read, "r") as err:
        seen.update(stdout=out.read(), stderr=err.read())
    print(json.dumps(seen))


main()
