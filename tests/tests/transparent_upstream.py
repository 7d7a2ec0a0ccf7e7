# The test host of the transparent-egress suites (transparent_clients.rs, transparent_dns.rs,
# transparent_refusals.rs), trust_store.rs and the refusals bench (refusals_support: the
# proxy_refusals, audit_records and run_violation suites): plain HTTP, HTTPS and DNS on
# whatever ports a test asks for, writing down everything it receives (every TCP connection,
# every request line, every DNS message). Run by
# `tollgate_tests::upstream::UpstreamHost::start_server` inside a network namespace of its
# own; standard library only, started with Debian's /usr/bin/python3.
#
#   transparent_upstream.py ADDRESS CERT KEY LOG_FILE SERVICE...
#
# Each SERVICE is `http:PORT`, `https:PORT` (CERT, signed by the test's own CA) or `dns:PORT`
# (UDP and TCP). It waits until ADDRESS exists, binds them all, prints `ready`, and serves
# until killed. Every event is appended to LOG_FILE as one JSON line before it is answered, so
# a test can assert what never reached this host, not only what a client was told:
#   {"event": "connection", "scheme", "port"}                       a TCP connection accepted
#   {"event": "request", "scheme", "port", "line", "method", "path", "headers"}
#   {"event": "dns", "proto": "udp"|"tcp", "port", "hex"}          a DNS message, as bytes
# (each with its time `t`; header names in lower case). Requests are parsed by hand rather
# than with http.server, which answers `501` to a method it has no `do_<METHOD>` for without
# telling anyone: here every request line is logged verbatim before anything else happens.
#
# HTTP(S) answers: `/bytes/N/...` N bytes of `x` with a Content-Length; anything else 200 with
# the request's entry as JSON (no time, so the bodies of one request have one size; plus
# `body_len`), whose `saw` names what this host saw:
#
#   "saw": "upstream saw GET /w1/node-fetch-http over http port 80"
#
# so a test can tell from a client's output alone that the answer came from here, on which
# listener. `Connection: close` is honoured. DNS answers every query with one A record
# 10.99.99.99 (never seen by the tests unless a query reached this host, which is what they
# assert it cannot).

import json
import socket
import ssl
import struct
import sys
import threading
import time

ADDRESS, CERT, KEY, LOG = sys.argv[1:5]
SERVICES = [(spec.split(":")[0], int(spec.split(":")[1])) for spec in sys.argv[5:]]
CONTEXT = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
CONTEXT.load_cert_chain(CERT, KEY)
CONTEXT.set_alpn_protocols(["http/1.1"])
log_lock = threading.Lock()
LINE_LIMIT = 65536


def log(entry):
    """Appends `entry` with the time."""
    with log_lock:
        with open(LOG, "a") as f:
            f.write(json.dumps(dict(entry, t=time.time())) + "\n")


def read_body(reader, headers):
    names = dict(headers)
    if "chunked" in names.get("transfer-encoding", "").lower():
        total = 0
        while True:
            size = int(reader.readline(LINE_LIMIT).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while reader.readline(LINE_LIMIT) not in (b"\r\n", b"\n", b""):
                    pass
                return total
            total += len(reader.read(size))
            reader.readline(LINE_LIMIT)
    length = names.get("content-length")
    if length and length.isdigit():
        return len(reader.read(int(length)))
    return 0


def answer(entry):
    """(content type, body) for a logged request."""
    segments = entry["path"].split("/")
    if len(segments) > 2 and segments[1] == "bytes" and segments[2].isdigit():
        return b"application/octet-stream", b"x" * int(segments[2])
    entry["saw"] = "upstream saw %s %s over %s port %d" % (
        entry["method"], entry["path"], entry["scheme"], entry["port"])
    return b"application/json", json.dumps(entry).encode()


def serve_http(conn, scheme, port):
    reader = conn.makefile("rb")
    while True:
        line = reader.readline(LINE_LIMIT)
        if not line:
            return
        if line in (b"\r\n", b"\n"):
            continue
        headers = []
        while True:
            raw = reader.readline(LINE_LIMIT)
            if not raw or raw in (b"\r\n", b"\n"):
                break
            name, _, value = raw.decode("latin-1").partition(":")
            headers.append([name.strip().lower(), value.strip()])
        text = line.decode("latin-1").rstrip("\r\n")
        parts = text.split(" ")
        entry = {"event": "request", "scheme": scheme, "port": port, "line": text,
                 "method": parts[0], "path": parts[1] if len(parts) > 1 else "",
                 "headers": headers}
        log(entry)
        entry["body_len"] = read_body(reader, headers)
        kind, data = answer(entry)
        close = "close" in dict(headers).get("connection", "").lower()
        head = (b"HTTP/1.1 200 OK\r\nContent-Type: " + kind +
                b"\r\nContent-Length: %d\r\n" % len(data) +
                (b"Connection: close\r\n" if close else b"") + b"\r\n")
        conn.sendall(head if entry["method"] == "HEAD" else head + data)
        if close:
            return


def handle_tcp(conn, scheme, port):
    try:
        log({"event": "connection", "scheme": scheme, "port": port})
        conn.settimeout(30)
        if scheme == "dns":
            serve_dns_tcp(conn, port)
            return
        if scheme == "https":
            conn = CONTEXT.wrap_socket(conn, server_side=True)
        serve_http(conn, scheme, port)
    except (OSError, ValueError, ssl.SSLError):
        pass
    finally:
        try:
            conn.close()
        except OSError:
            pass


def dns_answer(query):
    """One A record 10.99.99.99 for the question of `query` (its bytes echoed back)."""
    if len(query) < 12:
        return None
    end = 12
    while end < len(query) and query[end] != 0:
        end += query[end] + 1
    question = query[12:end + 5]
    header = query[:2] + b"\x81\x80" + struct.pack(">HHHH", 1, 1, 0, 0)
    record = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + bytes([10, 99, 99, 99])
    return header + question + record


def serve_dns_tcp(conn, port):
    while True:
        head = conn.recv(2)
        if len(head) < 2:
            return
        (length,) = struct.unpack(">H", head)
        query = b""
        while len(query) < length:
            chunk = conn.recv(length - len(query))
            if not chunk:
                return
            query += chunk
        log({"event": "dns", "proto": "tcp", "port": port, "hex": query.hex()})
        reply = dns_answer(query)
        if reply:
            conn.sendall(struct.pack(">H", len(reply)) + reply)


def serve_dns_udp(sock, port):
    while True:
        query, peer = sock.recvfrom(65535)
        log({"event": "dns", "proto": "udp", "port": port, "hex": query.hex()})
        reply = dns_answer(query)
        if reply:
            sock.sendto(reply, peer)


def bind(kind, port):
    """A socket bound to ADDRESS:port, retried while the harness is still configuring the
    namespace's veth."""
    deadline = time.time() + 10
    while True:
        sock = socket.socket(socket.AF_INET, kind)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((ADDRESS, port))
            if kind == socket.SOCK_STREAM:
                sock.listen(128)
            return sock
        except OSError:
            sock.close()
            if time.time() > deadline:
                raise
            time.sleep(0.01)


def accept_loop(sock, scheme, port):
    while True:
        conn, _ = sock.accept()
        threading.Thread(target=handle_tcp, args=(conn, scheme, port), daemon=True).start()


loops = []
for scheme, port in SERVICES:
    loops.append((accept_loop, (bind(socket.SOCK_STREAM, port), scheme, port)))
    if scheme == "dns":
        loops.append((serve_dns_udp, (bind(socket.SOCK_DGRAM, port), port)))
for target, args in loops:
    threading.Thread(target=target, args=args, daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
