# An HTTPS upstream for tests/tests/tls_e2e.rs, run inside a network namespace of its own
# (`unshare --net`), reached from the host namespace over a veth. Standard library only;
# started with Debian's /usr/bin/python3.
#
#   tls_e2e_server.py ADDRESS PORT CERT KEY LOG_FILE
#
# Waits until ADDRESS exists, serves HTTPS/1.1 on ADDRESS:PORT with CERT (signed by the
# test's own CA), prints `ready`, and serves until killed. Every request is appended to
# LOG_FILE as one JSON line: method, path, headers (names lowercased, in order), body.
#
#   /data...        200 {"result": "received <body>"} (the seed example's endpoint)
#   .../echo-auth.. 200, the request as JSON, and X-Echo: <the Authorization header>
#   /status/CODE... CODE, the request as JSON
#   anything else   200, the request as JSON

import json
import socket
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ADDRESS, PORT, CERT, KEY, LOG = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
CONTEXT = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
CONTEXT.load_cert_chain(CERT, KEY)
CONTEXT.set_alpn_protocols(["http/1.1"])
log_lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "tls-upstream"
    sys_version = ""
    timeout = 20

    def log_message(self, *args):
        pass

    def handle_any(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        entry = {
            "method": self.command,
            "path": self.path,
            "headers": [[k.lower(), v] for k, v in self.headers.items()],
            "body": body.decode("latin-1"),
        }
        with log_lock:
            with open(LOG, "a") as log:
                log.write(json.dumps(entry) + "\n")
        code, extra, payload = 200, [], entry
        if self.path.startswith("/data"):
            payload = {"result": "received " + body.decode("utf-8", "replace")}
        elif "/echo-auth" in self.path:
            extra.append(("X-Echo", self.headers.get("Authorization", "")))
        elif self.path.startswith("/status/"):
            code = int(self.path.split("/")[2])
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in extra:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = handle_any


class Server(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default backlog is 5: a burst of connections (h2_hostile opens 100 at
    # once through tollgate) would wait out SYN retransmits instead of being served.
    request_queue_size = 256

    def finish_request(self, request, client_address):
        # The handshake runs on the request's own thread, not in accept().
        try:
            tls = CONTEXT.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        try:
            super().finish_request(tls, client_address)
        finally:
            try:
                tls.close()
            except OSError:
                pass


for _ in range(400):
    try:
        server = Server((ADDRESS, PORT), Handler)
        break
    except OSError:
        time.sleep(0.025)
else:
    sys.exit(f"cannot bind {ADDRESS}:{PORT}")
print("ready", flush=True)
server.serve_forever()
