# The upstream host of tests/tests/transparent_clients.rs: plain HTTP and HTTPS on several
# ports at once, so unmodified clients can be sent to the default ports (80, 443) and to
# others, and every request says which listener it reached. Run by
# `tollgate_tests::upstream::UpstreamHost::start_server` inside a network namespace of its own;
# standard library only, started with Debian's /usr/bin/python3.
#
#   transparent_clients_server.py ADDRESS CERT KEY LOG_FILE LISTENERS
#
# LISTENERS is a comma-separated list of SCHEME:PORT (`http:80,https:443,...`); the HTTPS ones
# serve CERT (signed by the test's own CA). Waits until ADDRESS exists, binds every listener,
# prints `ready` and serves until killed. Every request is appended to LOG_FILE as one JSON
# line (scheme and port of the listener, method, path, headers with lower-case names) and
# answered 200 with one text line that names what the server saw:
#
#   upstream saw GET /w1/node-fetch-http over http port 80
#
# so a test can tell from the client's output alone that the answer came from here.

import json
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ADDRESS, CERT, KEY, LOG, LISTENERS = sys.argv[1:6]
CONTEXT = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
CONTEXT.load_cert_chain(CERT, KEY)
CONTEXT.set_alpn_protocols(["http/1.1"])
log_lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "clients-upstream"
    sys_version = ""
    timeout = 20

    def log_message(self, *args):
        pass

    def handle_any(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        scheme, port = self.server.scheme, self.server.server_address[1]
        entry = {
            "scheme": scheme,
            "port": port,
            "method": self.command,
            "path": self.path,
            "headers": [[k.lower(), v] for k, v in self.headers.items()],
        }
        with log_lock:
            with open(LOG, "a") as log:
                log.write(json.dumps(entry) + "\n")
        body = f"upstream saw {self.command} {self.path} over {scheme} port {port}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_HEAD = handle_any


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, scheme, address):
        self.scheme = scheme
        super().__init__(address, Handler)

    def finish_request(self, request, client_address):
        if self.scheme == "http":
            return super().finish_request(request, client_address)
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


def bind(scheme, port):
    for _ in range(400):
        try:
            return Server(scheme, (ADDRESS, port))
        except OSError:
            time.sleep(0.025)
    sys.exit(f"cannot bind {ADDRESS}:{port}")


servers = []
for listener in LISTENERS.split(","):
    scheme, port = listener.split(":")
    servers.append(bind(scheme, int(port)))
for server in servers:
    threading.Thread(target=server.serve_forever, daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
