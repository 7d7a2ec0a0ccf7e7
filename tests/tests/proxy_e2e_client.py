# Client helpers for the scripts `proxy_e2e.rs` runs inside `tollgate run` with Debian's
# /usr/bin/python3 as the sandbox user. Each test appends its own script to this file; the
# script fills `results` and the whole dict is printed as one JSON line at exit.
#
# Nothing here knows about tollgate: clients find the proxy in $HTTP_PROXY / $http_proxy
# like any program would (urllib and curl read it themselves; `raw` and `connection` use it
# to open a socket for hand-written requests).

import atexit
import base64
import http.client
import json
import os
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

_proxy = urlsplit(os.environ["HTTP_PROXY"])
PROXY = (_proxy.hostname, _proxy.port)
U = "http://up.test:8080"
results = {}


@atexit.register
def _report():
    print(json.dumps(results), flush=True)


def _headers(pairs):
    return [[k.lower(), v] for k, v in pairs]


def fetch(url, method="GET", data=None, headers=None, timeout=30):
    """urllib through $http_proxy: {status, headers, body} or {status, error} on a cut body."""
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    out = {"status": None}
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        response = e
    except Exception as e:  # noqa: BLE001 - report, do not crash the script
        out["error"] = "%s: %s" % (type(e).__name__, e)
        return out
    out["status"] = response.status if hasattr(response, "status") else response.code
    out["headers"] = _headers(response.headers.items())
    try:
        out["body"] = response.read().decode("latin-1")
    except Exception as e:  # noqa: BLE001
        out["error"] = "%s: %s" % (type(e).__name__, e)
    return out


def curl(*args, data_file=None):
    """/usr/bin/curl -sS -i -v ARGS: {code, status, headers, body, stderr} of the final response."""
    command = ["/usr/bin/curl", "-sS", "-i", "-v", "--max-time", "30"] + list(args)
    done = subprocess.run(command, capture_output=True)
    out = {"code": done.returncode, "stderr": done.stderr.decode("latin-1")}
    raw_out = done.stdout
    # Skip interim responses (100 Continue) and a proxy's CONNECT answer (--proxytunnel)
    # before the final response.
    while b"\r\n\r\n" in raw_out and raw_out.split(b"\r\n\r\n", 1)[1].startswith(b"HTTP/"):
        raw_out = raw_out.split(b"\r\n\r\n", 1)[1]
    head, _, body = raw_out.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if lines and lines[0].startswith("HTTP/"):
        out["status"] = int(lines[0].split()[1])
        out["headers"] = _headers(l.split(":", 1) for l in lines[1:] if ":" in l)
        out["headers"] = [[k, v.strip()] for k, v in out["headers"]]
    else:
        out["status"] = None
    out["body"] = body.decode("latin-1")
    return out


def body_file(data):
    """A file holding `data`, for curl --data-binary @FILE."""
    fd, path = tempfile.mkstemp(prefix="tollgate-e2e-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def read_response(sock, head_only=False):
    """One response from `sock`: {status, headers, body, complete, extra}."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            return {"status": None, "raw": buf.decode("latin-1"), "complete": False}
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = [[k.strip().lower(), v.strip()] for k, v in (l.split(":", 1) for l in lines[1:] if ":" in l)]
    names = dict(headers)
    out = {"status": status, "headers": headers, "complete": True}
    if head_only or status in (204, 304) or status < 200:
        out["body"], out["extra"] = "", rest.decode("latin-1")
        return out
    if "content-length" in names:
        size = int(names["content-length"])
        while len(rest) < size:
            chunk = sock.recv(65536)
            if not chunk:
                out["complete"] = False
                break
            rest += chunk
        out["body"], out["extra"] = rest[:size].decode("latin-1"), rest[size:].decode("latin-1")
        return out
    if "chunked" in names.get("transfer-encoding", ""):
        while not rest.endswith(b"0\r\n\r\n"):
            chunk = sock.recv(65536)
            if not chunk:
                out["complete"] = False
                break
            rest += chunk
        out["body"], out["extra"] = rest.decode("latin-1"), ""
        return out
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    out["body"], out["extra"] = rest.decode("latin-1"), ""
    return out


def connection(timeout=15):
    return socket.create_connection(PROXY, timeout=timeout)


def raw(data, timeout=15, until_close=False):
    """Sends `data` on a fresh connection to the proxy; the first response, and with
    `until_close` everything the proxy sent until it closed (`rest`)."""
    sock = connection(timeout)
    try:
        sock.sendall(data)
        out = read_response(sock)
        if until_close:
            rest = b""
            try:
                while True:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    rest += chunk
                out["closed"] = True
            except socket.timeout:
                out["closed"] = False
            out["rest"] = out.get("extra", "") + rest.decode("latin-1")
        return out
    finally:
        sock.close()


def echo_of(response):
    """The upstream's echo JSON in a response body, or None."""
    try:
        return json.loads(response.get("body") or "")
    except ValueError:
        return None


def parallel(cases):
    """Runs {name: callable} concurrently; results[name] = callable()."""
    threads = []
    for name, call in cases.items():
        def run(name=name, call=call):
            try:
                results[name] = call()
            except Exception as e:  # noqa: BLE001
                results[name] = {"status": None, "error": "%s: %s" % (type(e).__name__, e)}
        thread = threading.Thread(target=run)
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join()


# ---- the test's own script follows ----
