# Framing helpers for the test scripts that talk to the node service's launch socket
# themselves (serve_hostile.py, serve_shares.py). The tests run such a script as
# `python3 -c` with this file put before it (`concat!`), so both share one copy.
#
# A frame is a 4-byte big-endian length and that many bytes of JSON; the first frame of a
# launch carries the caller's descriptors (SCM_RIGHTS). The socket is the script's first
# argument.

import json
import socket
import struct
import sys

SOCKET = sys.argv[1]


def connect(answer_limit):
    """A connection to SOCKET whose reads give up after answer_limit seconds (a guard
    against a service that never answers, not a measurement)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(SOCKET)
    sock.settimeout(answer_limit)
    return sock


def frame(message):
    body = json.dumps(message).encode()
    return struct.pack(">I", len(body)) + body


def send_launch(sock, message, fds):
    socket.send_fds(sock, [frame(message)], fds)


def read_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def answers(sock):
    """Every frame the service sends until it closes: {"frames": [...], "end": how}."""
    frames = []
    try:
        while True:
            header = read_exact(sock, 4)
            if header is None:
                return {"frames": frames, "end": "closed"}
            (length,) = struct.unpack(">I", header)
            body = read_exact(sock, length)
            if body is None:
                return {"frames": frames, "end": "closed mid-frame"}
            try:
                frames.append(json.loads(body))
            except ValueError:
                frames.append({"not_json": body[:200].decode("latin-1")})
    except socket.timeout:
        return {"frames": frames, "end": "timeout"}
    except ConnectionResetError:
        return {"frames": frames, "end": "closed"}
