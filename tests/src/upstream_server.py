# An upstream host for the end-to-end proxy tests, run by `tests/src/upstream.rs` inside a
# network namespace of its own. Standard library only; started with Debian's /usr/bin/python3.
#
#   upstream_server.py ADDRESS HTTP_PORT ECHO_PORT LOG_FILE
#
# It waits until ADDRESS exists (the harness configures the namespace's veth after starting
# it), binds an HTTP/1.1 server on HTTP_PORT and a raw TCP echo server on ECHO_PORT, prints
# `ready`, and serves until killed. Every HTTP request is appended to LOG_FILE as one JSON
# line: time, connection number, method, path (with its query), headers as received, framing
# and body.
#
# Behaviours, chosen by the first path segment (the rest of the path is free, so each test
# uses paths of its own; `?ra=` adds a Retry-After header: seconds, or `date:N` for an
# HTTP-date N seconds ahead):
#   /echo/...                      200, the request as JSON
#   /status/CODE/...               CODE, the request as JSON
#   /flaky/CODE/FAILS/...          CODE for the first FAILS requests to this path, then 200
#   /reset/FAILS/...               closes the connection without a response FAILS times, then 200
#   /sleep/MS/...                  waits MS ms before answering 200
#   /drip-head/MS/...              sends the response head one byte every MS ms
#   /drip-body/BYTES/MS/...        Content-Length BYTES, then one byte every MS ms
#   /bytes/N/...                   N bytes with Content-Length
#   /chunked/N/...                 N bytes, chunked, in chunks of at most 1000
#   /redirect/CODE/...             CODE with Location: /echo/redirected (never followed)
#   /hop/...                       200 with hop-by-hop response headers, the request as JSON
#   /cookie/...                    200 with Set-Cookie: <the X-Set-Cookie request header>

import email.utils
import json
import socket
import socketserver
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ADDRESS, HTTP_PORT, ECHO_PORT, LOG_FILE = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]

log_lock = threading.Lock()
counters = {}
counter_lock = threading.Lock()
connections = [0]


def hit(key):
    with counter_lock:
        counters[key] = counters.get(key, 0) + 1
        return counters[key]


def retry_after(query):
    for part in query.split("&"):
        if part.startswith("ra="):
            value = part[3:]
            if value.startswith("date:"):
                return email.utils.formatdate(time.time() + float(value[5:]), usegmt=True)
            return value
    return None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "upstream"
    sys_version = ""

    def setup(self):
        super().setup()
        with counter_lock:
            connections[0] += 1
            self.connection_number = connections[0]

    def log_message(self, *args):
        pass

    def read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            body = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return body, "chunked"
                body += self.rfile.read(size)
                self.rfile.readline()
        length = self.headers.get("Content-Length")
        if length is not None:
            return self.rfile.read(int(length)), "length"
        return b"", "none"

    def record(self):
        body, framing = self.read_body()
        entry = {
            "t": time.time(),
            "conn": self.connection_number,
            "method": self.command,
            "path": self.path,
            "version": self.request_version,
            "headers": [[k.lower(), v] for k, v in self.headers.items()],
            "framing": framing,
            "body_len": len(body),
            "body": body.decode("latin-1"),
        }
        with log_lock:
            with open(LOG_FILE, "a") as log:
                log.write(json.dumps(entry) + "\n")
        return entry

    def send_json(self, code, entry, extra=()):
        data = json.dumps(entry).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in extra:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def handle_any(self):
        entry = self.record()
        path, _, query = self.path.partition("?")
        parts = path.split("/")
        kind = parts[1] if len(parts) > 1 else ""
        ra = retry_after(query)
        extra = [("Retry-After", ra)] if ra else []
        try:
            if kind == "status":
                self.send_json(int(parts[2]), entry, extra)
            elif kind == "flaky":
                code, fails = int(parts[2]), int(parts[3])
                if hit(path) <= fails:
                    self.send_json(code, entry, extra)
                else:
                    self.send_json(200, entry)
            elif kind == "reset":
                if hit(path) <= int(parts[2]):
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.send_json(200, entry)
            elif kind == "sleep":
                time.sleep(int(parts[2]) / 1000)
                self.send_json(200, entry)
            elif kind == "drip-head":
                interval = int(parts[2]) / 1000
                head = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Drip: " + b"d" * 200 + b"\r\n\r\nok"
                for i in range(len(head)):
                    self.wfile.write(head[i:i + 1])
                    self.wfile.flush()
                    time.sleep(interval)
            elif kind == "drip-body":
                size, interval = int(parts[2]), int(parts[3]) / 1000
                self.send_response(200)
                self.send_header("Content-Length", str(size))
                self.end_headers()
                self.wfile.flush()
                for _ in range(size):
                    time.sleep(interval)
                    self.wfile.write(b"d")
                    self.wfile.flush()
            elif kind == "bytes":
                size = int(parts[2])
                self.send_response(200)
                self.send_header("Content-Length", str(size))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(b"x" * size)
            elif kind == "chunked":
                size = int(parts[2])
                self.send_response(200)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                if self.command == "HEAD":
                    return
                while size > 0:
                    n = min(size, 1000)
                    self.wfile.write(b"%x\r\n" % n + b"x" * n + b"\r\n")
                    self.wfile.flush()
                    size -= n
                self.wfile.write(b"0\r\n\r\n")
            elif kind == "redirect":
                self.send_response(int(parts[2]))
                self.send_header("Location", "http://%s/echo/redirected" % self.headers.get("Host", ""))
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif kind == "hop":
                self.send_json(200, entry, [
                    ("Connection", "X-Resp-Hop"),
                    ("X-Resp-Hop", "drop-me"),
                    ("Keep-Alive", "timeout=5"),
                    ("Proxy-Authenticate", "Basic realm=upstream"),
                    ("Proxy-Connection", "keep-alive"),
                    ("Trailer", "X-Checksum"),
                    ("Upgrade", "h2c"),
                    ("X-Resp-Kept", "yes"),
                ])
            elif kind == "cookie":
                self.send_json(200, entry, [("Set-Cookie", self.headers.get("X-Set-Cookie", ""))])
            else:
                self.send_json(200, entry)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = handle_any


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while True:
            data = self.request.recv(65536)
            if not data:
                return
            self.request.sendall(data)


class EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def bind(factory):
    deadline = time.time() + 10
    while True:
        try:
            return factory()
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.01)


http_server = bind(lambda: Server((ADDRESS, HTTP_PORT), Handler))
echo_server = bind(lambda: EchoServer((ADDRESS, ECHO_PORT), Echo))
threading.Thread(target=echo_server.serve_forever, daemon=True).start()
print("ready", flush=True)
http_server.serve_forever()
