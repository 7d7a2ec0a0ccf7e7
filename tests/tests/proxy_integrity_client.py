# Client helpers for the scripts `proxy_integrity.rs` runs inside `tollgate run` with
# Debian's /usr/bin/python3 as the sandbox user. Each test appends its own lines; they fill
# `results`, printed as one JSON line at exit. `sys.argv[1]` is a directory the script may
# write into (the test reads back everything in it).
#
# Every client finds the proxy the way it would anywhere: curl and urllib read
# $HTTP_PROXY/$HTTPS_PROXY themselves; `hc` (http.client) opens the proxy connection itself
# (absolute form for http, CONNECT for https); the helper is tollgate's own.

import atexit
import hashlib
import http.client
import json
import os
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from urllib.parse import urlsplit

OUT = sys.argv[1]
TLS = "https://api.example.com"          # intercepted
PLAIN = "http://api.example.com:8080"    # forward-proxied
PASS = "https://passthrough.example.com"  # a raw tunnel
_proxy = urlsplit(os.environ["HTTP_PROXY"])
PROXY = (_proxy.hostname, _proxy.port)
results = {}


@atexit.register
def _report():
    print(json.dumps(results), flush=True)


BLOCK = bytes((i * 131 + 7) % 256 for i in range(65521))


def pattern(n):
    """The bytes the server sends for a body of n bytes."""
    return (BLOCK * (n // len(BLOCK) + 1))[:n]


def judge(out, data, expect):
    """Records the body's length and whether it is the server's pattern of `expect` bytes."""
    out["len"] = len(data)
    out["sha256"] = hashlib.sha256(data).hexdigest()
    if expect is not None:
        out["exact"] = data == pattern(expect)
        out["prefix_ok"] = data == pattern(len(data))


def save(name, data):
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode("utf-8", "replace"))


def _final_head(raw):
    """(status, reason, headers, version) of the last response head in a `curl -D` dump."""
    text = raw.decode("latin-1")
    blocks = [b for b in text.split("\r\n\r\n") if b.startswith("HTTP/")]
    if not blocks:
        return None, None, {}, None
    lines = blocks[-1].split("\r\n")
    parts = lines[0].split(" ", 2)
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        fields.setdefault(name.strip().lower(), value.strip())
    return int(parts[1]), parts[2] if len(parts) > 2 else "", fields, parts[0]


def curl(name, *args, expect=None, keep=False):
    """/usr/bin/curl -sS ARGS: {rc, status, reason, headers, len, exact, stderr}. With
    `keep`, the whole output (head and body) stays in OUT."""
    where = OUT if keep else "/tmp"
    body_path = os.path.join(where, name.replace("/", "_") + ".body")
    head_path = os.path.join(where, name.replace("/", "_") + ".head")
    done = subprocess.run(["/usr/bin/curl", "-sS", "--max-time", "50", "-o", body_path,
                           "-D", head_path, "-w", "%{http_code}", *args],
                          capture_output=True)
    out = {"rc": done.returncode, "stderr": done.stderr.decode("latin-1")[-2000:]}
    try:
        code = int(done.stdout.decode() or 0)
    except ValueError:
        code = 0
    data = open(body_path, "rb").read() if os.path.exists(body_path) else b""
    raw_head = open(head_path, "rb").read() if os.path.exists(head_path) else b""
    status, reason, fields, version = _final_head(raw_head)
    out.update(status=code, head_status=status, reason=reason, headers=fields, version=version)
    judge(out, data, expect)
    if keep:
        save(name.replace("/", "_") + ".stderr", done.stderr)
        out["body"] = data.decode("latin-1")[:4000]
    else:
        for path in (body_path, head_path):
            if os.path.exists(path):
                os.unlink(path)
    results[name] = out
    return out


class Connection:
    """http.client through the proxy, kept open between requests (keep-alive)."""

    def __init__(self, scheme):
        self.scheme = scheme
        self.conn = None

    def open(self):
        if self.scheme == "https":
            self.conn = http.client.HTTPSConnection(*PROXY, timeout=60,
                                                    context=ssl.create_default_context())
            self.conn.set_tunnel("api.example.com", 443)
        else:
            self.conn = http.client.HTTPConnection(*PROXY, timeout=60)

    def url(self, path):
        return path if self.scheme == "https" else PLAIN + path

    def request(self, method, path, body=None, headers=None, chunked=False):
        """(status, reason, headers, data, error): `error` is the exception's class name
        (with `partial`, the bytes read before it, for IncompleteRead)."""
        if self.conn is None:
            self.open()
        if chunked and isinstance(body, bytes):
            # An iterable body without a length: http.client sends it chunked.
            view = memoryview(body)
            body = (view[i:i + 65536] for i in range(0, len(view), 65536))
        try:
            self.conn.request(method, self.url(path), body=body, headers=headers or {})
            response = self.conn.getresponse()
            status, reason = response.status, response.reason
            fields = {k.lower(): v for k, v in response.getheaders()}
        except Exception as e:  # noqa: BLE001 - report, do not crash the script
            self.close()
            return None, None, {}, b"", "%s: %s" % (type(e).__name__, e)
        try:
            data = response.read()
            error = None
        except http.client.IncompleteRead as e:
            data, error = e.partial, "IncompleteRead"
        except Exception as e:  # noqa: BLE001
            data, error = b"", "%s: %s" % (type(e).__name__, e)
        if error or response.will_close:
            self.close()
        return status, reason, fields, data, error

    def close(self):
        if self.conn is not None:
            self.conn.close()
        self.conn = None


def hc(name, scheme, method, path, body=None, headers=None, chunked=False, expect=None):
    """One request on a new http.client connection; the outcome in results[name]."""
    connection = Connection(scheme)
    status, reason, fields, data, error = connection.request(method, path, body, headers,
                                                             chunked)
    connection.close()
    out = {"status": status, "reason": reason, "headers": fields, "error": error}
    judge(out, data, expect)
    results[name] = out
    return out


def fetch(name, url, data=None, headers=None, expect=None):
    """urllib through the proxy variables: {status, headers, len, exact, error}."""
    out = {"status": None, "error": None}
    try:
        response = urllib.request.urlopen(
            urllib.request.Request(url, data=data, headers=headers or {}), timeout=60)
    except urllib.error.HTTPError as e:
        response = e
    except Exception as e:  # noqa: BLE001
        out["error"] = "%s: %s" % (type(e).__name__, e)
        results[name] = out
        return out
    out["status"] = response.status if hasattr(response, "status") else response.code
    out["headers"] = {k.lower(): v for k, v in response.headers.items()}
    try:
        body = response.read()
    except http.client.IncompleteRead as e:
        body, out["error"] = e.partial, "IncompleteRead"
    except Exception as e:  # noqa: BLE001
        body, out["error"] = b"", "%s: %s" % (type(e).__name__, e)
    judge(out, body, expect)
    results[name] = out
    return out


def helper(name, method, url, **kwargs):
    """tollgate's helper: {status, len} or {raised, error, status} when it raised."""
    from tollgate_http import http as tollgate_http
    try:
        r = tollgate_http.request(method, url, **kwargs)
        out = {"raised": None, "status": r["status_code"], "len": len(r["text"]),
               "headers": r["headers"], "text": r["text"][:4000]}
    except Exception as e:  # noqa: BLE001
        out = {"raised": type(e).__name__, "error": getattr(e, "error", None),
               "status": getattr(e, "status_code", None), "message": str(e)[:500]}
    results[name] = out
    return out


def raw(scheme, path, headers):
    """Every byte the proxy sends back for one GET (`Connection: close`, read to the end),
    through a socket of our own: what any program in the sandbox could read."""
    import socket
    sock = socket.create_connection(PROXY, timeout=30)
    lines = ["Host: api.example.com" + ("" if scheme == "https" else ":8080"),
             "TE: trailers", "Connection: close"]
    lines += ["%s: %s" % item for item in headers.items()]
    try:
        if scheme == "https":
            sock.sendall(b"CONNECT api.example.com:443 HTTP/1.1\r\nHost: api.example.com:443\r\n\r\n")
            answer = b""
            while b"\r\n\r\n" not in answer:
                piece = sock.recv(1)
                if not piece:
                    return answer
                answer += piece
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname="api.example.com")
            target = path
        else:
            target = PLAIN + path
        request = "GET %s HTTP/1.1\r\n%s\r\n\r\n" % (target, "\r\n".join(lines))
        sock.sendall(request.encode("latin-1"))
        got = b""
        while True:
            try:
                piece = sock.recv(65536)
            except (ssl.SSLError, OSError):
                break
            if not piece:
                break
            got += piece
        return got
    finally:
        sock.close()


def body_file(n):
    """A file of n bytes in the sandbox's /tmp, for curl --data-binary @FILE."""
    path = "/tmp/body-%d" % n
    if not os.path.exists(path):
        with open(path, "wb") as f:
            block = b"u" * (1 << 20)
            left = n
            while left:
                f.write(block[:min(left, len(block))])
                left -= min(left, len(block))
    return path
