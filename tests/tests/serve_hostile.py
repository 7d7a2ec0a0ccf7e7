# Hostile callers of the node service's launch socket (serve_hostile.rs runs this as an
# unprivileged test user): each mode talks to the socket directly, not through
# `tollgate run --connect`, and prints what it saw as one JSON line.
#
#   serve_hostile.py SOCKET MODE [ARG]
#
# Framing (connect, frame, send_launch, answers) is serve_frames.py's, which the test puts
# before this script. Modes that stall print "ready" and hold their connections until stdin
# closes.

import json
import os
import select
import struct
import sys

MODE = sys.argv[2]
ARG = sys.argv[3] if len(sys.argv) > 3 else None
# A guard against a service that never answers, not a measurement.
ANSWER_LIMIT = 30


def launch(args, audit=False, log=False, version=1):
    return {
        "type": "launch",
        "version": version,
        "args": args,
        "pass_env": {},
        "audit": audit,
        "log": log,
    }


def null_fds(n):
    return [os.open("/dev/null", os.O_RDWR) for _ in range(n)]


def close_all(fds):
    for fd in fds:
        os.close(fd)


ECHO = ["--team", "a", "--", "/bin/echo", "hi"]
# Kept alive for the whole run: a descriptor of it is sent as a command's stdout.
EPOLL = select.epoll()


def garbage():
    seen = {}
    sock = connect(ANSWER_LIMIT)
    sock.sendall(os.urandom(64))
    seen["random"] = answers(sock)
    sock.close()
    sock = connect(ANSWER_LIMIT)
    sock.sendall(struct.pack(">I", 5) + b"hello")
    seen["not_json"] = answers(sock)
    sock.close()
    sock = connect(ANSWER_LIMIT)
    sock.sendall(frame({"type": "launch", "args": 3}))
    seen["wrong_shape"] = answers(sock)
    sock.close()
    sock = connect(ANSWER_LIMIT)
    sock.sendall(frame({"type": "signal", "signal": 15}))
    seen["signal_first"] = answers(sock)
    sock.close()
    sock = connect(ANSWER_LIMIT)
    sock.sendall(struct.pack(">I", 2 * 1024 * 1024 * 1024) + b"{")
    seen["huge"] = answers(sock)
    sock.close()
    sock = connect(ANSWER_LIMIT)
    sock.sendall(struct.pack(">I", 0xFFFFFFFF))
    seen["largest"] = answers(sock)
    sock.close()
    return seen


def descriptors(count):
    sock = connect(ANSWER_LIMIT)
    fds = null_fds(count)
    if count:
        send_launch(sock, launch(ECHO), fds)
    else:
        sock.sendall(frame(launch(ECHO)))
    close_all(fds)
    seen = answers(sock)
    sock.close()
    return seen


def odd_descriptors():
    """Descriptors that are not what a terminal or a pipe is, each as stdin or stdout."""
    seen = {}
    cases = {
        "directory_stdin": (lambda: os.open("/", os.O_RDONLY | os.O_DIRECTORY), 0, "/bin/cat"),
        "eventfd_stdout": (lambda: os.eventfd(0), 1, "/bin/echo"),
        "o_path_stdin": (lambda: os.open("/etc/hostname", os.O_PATH), 0, "/bin/cat"),
        "epoll_stdout": (lambda: os.dup(EPOLL.fileno()), 1, "/bin/echo"),
    }
    for name, (make, slot, program) in cases.items():
        sock = connect(ANSWER_LIMIT)
        fds = null_fds(3)
        os.close(fds[slot])
        fds[slot] = make()
        send_launch(sock, launch(["--team", "a", "--", program, "x"]), fds)
        close_all(fds)
        seen[name] = answers(sock)
        sock.close()
    # The connection's own socket as the command's stdout: what the command writes arrives
    # at the service as if the caller had sent it.
    sock = connect(ANSWER_LIMIT)
    fds = null_fds(3)
    os.close(fds[1])
    fds[1] = os.dup(sock.fileno())
    send_launch(sock, launch(["--team", "a", "--", "/bin/echo", "hello there"]), fds)
    close_all(fds)
    seen["own_socket_stdout"] = answers(sock)
    sock.close()
    return seen


def lies():
    """Launches whose frame says one thing and whose descriptors another, or that name
    paths the service (root) must never open for the caller."""
    seen = {}
    cases = {
        # Says it sends an audit descriptor, sends none.
        "audit_without_fd": (launch(["--team", "a", "--audit", "/tmp/x", "--", "/bin/true"], audit=True), 3),
        # Asks for files with no descriptor: root must not open these paths.
        "audit_path_only": (launch(["--team", "a", "--audit", ARG + "/audit", "--", "/bin/true"]), 3),
        "log_path_only": (launch(["--team", "a", "--log", ARG + "/log", "--", "/bin/true"]), 3),
        "summary_path": (launch(["--team", "a", "--summary", ARG + "/summary", "--", "/bin/true"]), 3),
        # Another protocol version.
        "version": (launch(ECHO, version=999), 3),
        # A nested --connect.
        "connect_again": (launch(["--connect", SOCKET] + ECHO), 3),
        # Arguments clap refuses.
        "bad_args": (launch(["--no-such-flag", "--", "/bin/true"]), 3),
        "no_command": (launch(["--team", "a"]), 3),
    }
    for name, (message, count) in cases.items():
        sock = connect(ANSWER_LIMIT)
        fds = null_fds(count)
        send_launch(sock, message, fds)
        close_all(fds)
        seen[name] = answers(sock)
        sock.close()
    return seen


def launch_reading_stdout(args, shares=(), announced=None):
    """Launches with a pipe as the command's stdout and an O_PATH descriptor of each
    directory in `shares` (links followed, as a careless client would open them), announcing
    `announced` of them (default: as many as are sent); the answers and what it printed."""
    sock = connect(ANSWER_LIMIT)
    read_end, write_end = os.pipe()
    fds = null_fds(3)
    os.close(fds[1])
    fds[1] = write_end
    fds += [os.open(path, os.O_PATH | os.O_DIRECTORY) for path in shares]
    message = launch(args)
    message["shares"] = len(shares) if announced is None else announced
    send_launch(sock, message, fds)
    close_all(fds)
    seen = answers(sock)
    sock.close()
    with os.fdopen(read_end, "r") as out:
        seen["stdout"] = out.read()
    return seen


def shares():
    """Shares the client's own checks would refuse, sent as they are: only the service's and
    the worker's checks stand between them and a bind mount made by root. ARG holds work/
    (the caller's allowed root), workshop/ beside it, and work/escape, a link to workshop."""
    root = ARG
    work, workshop = root + "/work", root + "/workshop"
    listing = ["/bin/ls", "-a"]
    cases = {
        # name: (the path named, the directory whose descriptor is sent)
        "climbing": (work + "/../workshop", workshop),
        "dot": (work + "/./../workshop", workshop),
        "link": (work + "/escape", workshop),
        "prefix": (workshop, workshop),
        "relative": ("work", work),
        # The allowed root named, another directory's descriptor sent.
        "swapped": (work, workshop),
    }
    seen = {}
    for name, (path, opened) in cases.items():
        for flag in ["--share", "--share-ro"]:
            args = ["--team", "a", flag, path, "--"] + listing + [path]
            seen[name + flag] = launch_reading_stdout(args, [opened])
    allowed = ["--team", "a", "--share-ro", work, "--"] + listing + [work]
    # A share without its descriptor, and one with a descriptor too many.
    seen["no_descriptor"] = launch_reading_stdout(allowed, [], announced=0)
    seen["extra_descriptor"] = launch_reading_stdout(allowed, [work, workshop])
    seen["allowed"] = launch_reading_stdout(allowed, [work])
    return seen


def signals():
    """Signal frames the contract does not list, sent to a running execution, then SIGTERM:
    none of the first may reach the worker (SIGKILL would skip its teardown, SIGSTOP would
    hang it)."""
    sock = connect(ANSWER_LIMIT)
    read_end, write_end = os.pipe()
    fds = null_fds(3)
    os.close(fds[1])
    fds[1] = write_end
    script = "echo ready; exec /bin/sleep 60"
    send_launch(sock, launch(["--team", "a", "--", "/bin/sh", "-c", script]), fds)
    close_all(fds)
    with os.fdopen(read_end, "r") as out:
        ready = out.readline().strip()
        for number in [9, 19, 17, 0, -1, 1000, 2**31 - 1]:
            sock.sendall(frame({"type": "signal", "signal": number}))
        # Frames are handled in order: by the time this one is, every bogus one was. If
        # SIGSTOP had reached the worker, this one would never be answered; if SIGKILL had,
        # the worker died without its teardown.
        sock.sendall(frame({"type": "signal", "signal": 15}))
        seen = answers(sock)
        seen["sandbox"] = ready
    sock.close()
    return seen


def stall():
    """Connections that never finish a frame, and connections that send nothing."""
    held = []
    sock = connect(ANSWER_LIMIT)
    sock.sendall(b"\x00\x00")
    held.append(sock)
    sock = connect(ANSWER_LIMIT)
    body = json.dumps(launch(ECHO)).encode()
    sock.sendall(struct.pack(">I", len(body)) + body[: len(body) // 2])
    held.append(sock)
    for _ in range(int(ARG)):
        held.append(connect(ANSWER_LIMIT))
    print(json.dumps({"held": len(held)}), flush=True)
    sys.stdin.readline()
    for sock in held:
        sock.close()
    return {"closed": len(held)}


MODES = {
    "garbage": garbage,
    "descriptors": lambda: descriptors(int(ARG)),
    "odd_descriptors": odd_descriptors,
    "lies": lies,
    "signals": signals,
    "shares": shares,
    "stall": stall,
}

print(json.dumps(MODES[MODE]()), flush=True)
