# Sandbox-side helpers for tests/tests/h2_e2e.rs: prepended to each test's script, which the
# test venv's python3 runs inside the sandbox as `script OUT_DIR`. Every observation goes into
# `results`, printed as one JSON line at exit.

import atexit
import json
import os
import socket
import ssl
import subprocess
import sys
import urllib.parse

OUT = sys.argv[1]
results = {}
atexit.register(lambda: print(json.dumps(results)))


def curl(name, *args, urls):
    """Runs Debian's curl with `args` and one `-o` per URL; results[name] holds the exit
    status, stderr and, per URL path, what the transfer saw: status, HTTP version, new
    connections made for it, the Tollgate-Error header and the body."""
    command = ["/usr/bin/curl", "-sS", "--no-progress-meter", *args]
    command += ["-w", "%header{tollgate-error}\t%{json}\n"]
    bodies = {}
    for i, url in enumerate(urls):
        bodies[url] = os.path.join(OUT, f"{name}.{i}.body")
        command += ["-o", bodies[url], url]
    p = subprocess.run(command, capture_output=True, timeout=60)
    transfers = {}
    for line in p.stdout.decode("utf-8", "replace").splitlines():
        error, _, text = line.partition("\t")
        seen = json.loads(text)
        url = seen.get("url") or seen.get("url_effective")
        try:
            body = open(bodies[url], "rb").read().decode("utf-8", "replace")
        except (KeyError, OSError):
            body = ""
        transfers[urllib.parse.urlsplit(url).path] = {
            "status": seen.get("http_code"),
            "version": seen.get("http_version"),
            "connects": seen.get("num_connects"),
            "error": error,
            "body": body,
        }
    results[name] = {"rc": p.returncode, "stderr": p.stderr.decode("utf-8", "replace"),
                     "transfers": transfers}
    return results[name]


def tunnel(host, alpn):
    """A TLS connection to `host`:443 through the execution's proxy (CONNECT), verified
    against the execution's CA bundle, offering `alpn`; returns (tls socket, chosen ALPN)."""
    proxy = urllib.parse.urlsplit(os.environ["HTTPS_PROXY"])
    sock = socket.create_connection((proxy.hostname, proxy.port), timeout=20)
    sock.sendall(f"CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"the proxy closed the CONNECT: {head!r}")
        head += chunk
    status = head.split(b"\r\n", 1)[0].decode("latin-1")
    if " 200" not in status:
        raise ConnectionError(f"CONNECT refused: {status}")
    context = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
    context.set_alpn_protocols(alpn)
    tls = context.wrap_socket(sock, server_hostname=host)
    return tls, tls.selected_alpn_protocol()


class RawH2:
    """A hand-driven HTTP/2 client connection (the `h2` library) on an intercepted tunnel,
    for requests no ordinary client sends: outbound header validation is off, since the
    point is to send what a hostile client would."""

    def __init__(self, host):
        import h2.config
        import h2.connection

        self.tls, self.alpn = tunnel(host, ["h2"])
        config = h2.config.H2Configuration(
            client_side=True, header_encoding="utf-8", validate_outbound_headers=False
        )
        self.conn = h2.connection.H2Connection(config=config)
        self.conn.initiate_connection()
        self.tls.sendall(self.conn.data_to_send())
        self.terminated = None

    def exchange(self, requests):
        """Sends every request (a header list) at once, each as its own stream with no
        body, and reads until each stream ended, was reset, or the connection ended.
        Returns one reply per request: status, Tollgate-Error, body, reset code."""
        import h2.events

        ids = []
        for headers in requests:
            stream = self.conn.get_next_available_stream_id()
            self.conn.send_headers(stream, headers, end_stream=True)
            ids.append(stream)
        self.tls.sendall(self.conn.data_to_send())
        replies = {s: {"status": None, "error": None, "body": b"", "reset": None} for s in ids}
        waiting = set(ids)
        while waiting and self.terminated is None:
            data = self.tls.recv(65535)
            if not data:
                self.terminated = "closed"
                break
            for event in self.conn.receive_data(data):
                reply = replies.get(getattr(event, "stream_id", None))
                if isinstance(event, h2.events.ResponseReceived):
                    headers = dict(event.headers)
                    reply["status"] = int(headers[":status"])
                    reply["error"] = headers.get("tollgate-error")
                elif isinstance(event, h2.events.DataReceived):
                    reply["body"] += event.data
                    self.conn.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id
                    )
                elif isinstance(event, h2.events.StreamEnded):
                    waiting.discard(event.stream_id)
                elif isinstance(event, h2.events.StreamReset):
                    reply["reset"] = int(event.error_code)
                    waiting.discard(event.stream_id)
                elif isinstance(event, h2.events.ConnectionTerminated):
                    self.terminated = f"goaway {int(event.error_code)}"
            out = self.conn.data_to_send()
            if out:
                self.tls.sendall(out)
        for reply in replies.values():
            reply["body"] = reply["body"].decode("utf-8", "replace")
        return [replies[s] for s in ids]


def get(authority, path, *extra):
    """The header list of a GET for `path` with this `:authority` (and `extra` headers)."""
    return [(":method", "GET"), (":scheme", "https"), (":authority", authority),
            (":path", path), *extra]
