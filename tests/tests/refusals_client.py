# Client helpers for the scripts proxy_refusals.rs and audit_records.rs run inside
# `tollgate run` with Debian's /usr/bin/python3 as the sandbox user. Each test appends its own
# lines; they fill `results`, printed as one JSON line at exit.
#
# Nothing here knows about tollgate beyond what any program finds in its environment: the
# proxy in $HTTP_PROXY and the CA bundle in $SSL_CERT_FILE. Every helper sends what it is
# given verbatim (method case, path bytes), which is the point of these tests.

import atexit
import http.client
import json
import os
import socket
import ssl
import subprocess
from urllib.parse import urlsplit

# Without `network` in the policy there is no proxy (and no $HTTP_PROXY): only `bypass` works.
_proxy = urlsplit(os.environ.get("HTTP_PROXY", ""))
PROXY = (_proxy.hostname, _proxy.port)
results = {}


@atexit.register
def _report():
    print(json.dumps(results), flush=True)


def _error(e):
    return "%s: %s" % (type(e).__name__, e)


def _headers(pairs):
    return [[k.strip().lower(), v.strip()] for k, v in pairs]


def parse_response(data):
    """{status, headers, body} of the first HTTP response in `data` (bytes)."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if not lines or not lines[0].startswith("HTTP/"):
        return {"status": None, "raw": data.decode("latin-1")}
    headers = _headers(l.split(":", 1) for l in lines[1:] if ":" in l)
    length = dict(headers).get("content-length")
    if length is not None and length.isdigit():
        body = body[:int(length)]
    return {"status": int(lines[0].split()[1]), "reason_phrase": lines[0].split(" ", 2)[2:],
            "headers": headers, "body": body.decode("latin-1")}


def curl(name, *args):
    """/usr/bin/curl -sS -i -v ARGS: {rc, status, headers, body, verbose} of the final response
    (a proxy's `200 Connection established` skipped)."""
    done = subprocess.run(["/usr/bin/curl", "-sS", "-i", "-v", "--max-time", "20", *args],
                          capture_output=True)
    raw = done.stdout
    while b"\r\n\r\n" in raw and raw.split(b"\r\n\r\n", 1)[1].startswith(b"HTTP/"):
        raw = raw.split(b"\r\n\r\n", 1)[1]
    out = parse_response(raw)
    out["rc"] = done.returncode
    out["verbose"] = done.stderr.decode("latin-1")
    results[name] = out
    return out


def _tunnel(host, port, timeout):
    """A socket to the proxy with a CONNECT tunnel to host:port open, TLS on top."""
    sock = socket.create_connection(PROXY, timeout=timeout)
    sock.sendall(("CONNECT %s:%d HTTP/1.1\r\nHost: %s:%d\r\n\r\n" % (host, port, host, port)).encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        if not chunk:
            raise OSError("the proxy closed the CONNECT")
        head += chunk
    status = int(head.split(b" ")[1])
    if status != 200:
        raise OSError("CONNECT answered %d" % status)
    return ssl.create_default_context().wrap_socket(sock, server_hostname=host)


def hc(name, method, url, headers=(), body=None, timeout=20):
    """http.client with the request line verbatim: absolute-form to the proxy for http://,
    origin-form inside a CONNECT tunnel for https://. {status, headers, body} or {error}."""
    parts = urlsplit(url)
    target = url[len(parts.scheme) + 3 + len(parts.netloc):] or "/"
    try:
        if parts.scheme == "http":
            conn = http.client.HTTPConnection(*PROXY, timeout=timeout)
            conn.putrequest(method, url, skip_host=True, skip_accept_encoding=True)
        else:
            conn = http.client.HTTPSConnection(*PROXY, timeout=timeout,
                                               context=ssl.create_default_context())
            conn.set_tunnel(parts.hostname, parts.port or 443)
            conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", parts.netloc)
        for key, value in headers:
            conn.putheader(key, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        out = {"status": response.status, "headers": _headers(response.getheaders()),
               "body": response.read().decode("latin-1")}
        conn.close()
    except Exception as e:  # noqa: BLE001 - report, do not crash the script
        out = {"status": None, "error": _error(e)}
    results[name] = out
    return out


def raw(name, data, tls_host=None, timeout=20):
    """Sends the bytes `data` to the proxy (inside a CONNECT tunnel to tls_host:443 when given)
    and reads until the connection closes; the first response in what came back."""
    try:
        if tls_host:
            sock = _tunnel(tls_host, 443, timeout)
        else:
            sock = socket.create_connection(PROXY, timeout=timeout)
        sock.sendall(data)
        got = b""
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                got += chunk
                parsed = parse_response(got)
                length = dict(parsed.get("headers", [])).get("content-length")
                if length is not None and len(parsed["body"]) >= int(length):
                    break
        except (socket.timeout, ssl.SSLError, ConnectionResetError):
            pass
        sock.close()
        out = parse_response(got)
    except Exception as e:  # noqa: BLE001
        out = {"status": None, "error": _error(e)}
    results[name] = out
    return out


def connect(name, host, port, timeout=20):
    """A bare CONNECT host:port: the proxy's answer (status, headers, body) as it came."""
    return raw(name, ("CONNECT %s:%d HTTP/1.1\r\nHost: %s:%d\r\n\r\n"
                      % (host, port, host, port)).encode(), timeout=timeout)


def json_body(response):
    try:
        return json.loads(response.get("body") or "")
    except ValueError:
        return None


def bypass(count, address=("10.0.0.1", 80)):
    """`count` direct connects past the proxy (the eBPF wall refuses each); how they failed."""
    errors = {}
    for _ in range(count):
        sock = socket.socket()
        try:
            sock.connect(address)
            errors["connected"] = errors.get("connected", 0) + 1
        except OSError as e:
            errors[str(e.errno)] = errors.get(str(e.errno), 0) + 1
        finally:
            sock.close()
    return errors


def brief(response):
    """Status and Tollgate-Error of a response, for compact results."""
    return {"status": response.get("status"),
            "error": dict(response.get("headers", [])).get("tollgate-error"),
            "message": (json_body(response) or {}).get("message"),
            "failure": response.get("error")}


# ---- the test's own script follows ----
