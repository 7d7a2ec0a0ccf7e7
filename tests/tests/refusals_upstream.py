# An upstream host for proxy_refusals.rs and audit_records.rs that writes down every request
# line it receives, verbatim, so a test can assert what never reached it. Run by
# `tollgate_tests::upstream::UpstreamHost::start_server` inside a network namespace of its own;
# standard library only, started with Debian's /usr/bin/python3.
#
#   refusals_upstream.py ADDRESS HTTP_PORT HTTPS_PORT CERT KEY LOG_FILE
#
# Serves HTTP/1.1 on HTTP_PORT and HTTPS/1.1 (CERT, signed by the test's own CA) on HTTPS_PORT,
# prints `ready`, and serves until killed. It parses requests by hand rather than with
# http.server, which answers `501` to a method it has no `do_<METHOD>` for without telling
# anyone (`delete`, `gEt`): here every request line is appended to LOG_FILE as one JSON line
# (scheme, the raw line, method, path as received, headers, body length) before anything else
# happens, and answered `200` with that entry as JSON.

import json
import socket
import ssl
import sys
import threading
import time

ADDRESS, HTTP_PORT, HTTPS_PORT, CERT, KEY, LOG = (
    sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6])
CONTEXT = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
CONTEXT.load_cert_chain(CERT, KEY)
CONTEXT.set_alpn_protocols(["http/1.1"])
log_lock = threading.Lock()
LINE_LIMIT = 65536


def log(entry):
    with log_lock:
        with open(LOG, "a") as f:
            f.write(json.dumps(entry) + "\n")


def read_body(reader, headers):
    names = dict(headers)
    if "chunked" in names.get("transfer-encoding", "").lower():
        size_total = 0
        while True:
            size = int(reader.readline(LINE_LIMIT).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while reader.readline(LINE_LIMIT) not in (b"\r\n", b"\n", b""):
                    pass
                return size_total
            size_total += len(reader.read(size))
            reader.readline(LINE_LIMIT)
    length = names.get("content-length")
    if length and length.isdigit():
        return len(reader.read(int(length)))
    return 0


def serve(conn, scheme):
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
        entry = {
            "t": time.time(),
            "scheme": scheme,
            "line": text,
            "method": parts[0],
            "path": parts[1] if len(parts) > 1 else "",
            "headers": headers,
        }
        log(entry)
        entry["body_len"] = read_body(reader, headers)
        data = json.dumps(entry).encode()
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(data) + data)


def handle(conn, tls):
    try:
        if tls:
            conn = CONTEXT.wrap_socket(conn, server_side=True)
        conn.settimeout(30)
        serve(conn, "https" if tls else "http")
    except (OSError, ValueError, ssl.SSLError):
        pass
    finally:
        try:
            conn.close()
        except OSError:
            pass


def listen(port):
    deadline = time.time() + 10
    while True:
        try:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((ADDRESS, port))
            sock.listen(128)
            return sock
        except OSError:
            sock.close()
            if time.time() > deadline:
                raise
            time.sleep(0.01)


def accept_loop(sock, tls):
    while True:
        conn, _ = sock.accept()
        threading.Thread(target=handle, args=(conn, tls), daemon=True).start()


plain, secure = listen(HTTP_PORT), listen(HTTPS_PORT)
threading.Thread(target=accept_loop, args=(secure, True), daemon=True).start()
print("ready", flush=True)
accept_loop(plain, False)
