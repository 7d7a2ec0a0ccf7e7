# A hostile upstream for tests/tests/proxy_integrity.rs, run inside a network namespace of
# its own (`unshare --net`), reached from the host namespace over a veth. Standard library
# only; started with Debian's /usr/bin/python3.
#
#   proxy_integrity_server.py ADDRESS CERT KEY LOG_FILE
#
# Serves plain HTTP/1.1 on ADDRESS:8080 and HTTPS/1.1 on ADDRESS:443 (CERT, signed by the
# test's own CA) with the same routes, prints `ready`, and serves until killed. Every request
# is appended to LOG_FILE as one JSON line (scheme, method, path, headers) as soon as its head
# has arrived, before any body is read: a request that reached the server is logged even if
# its body never comes.
#
# Bodies are the pattern `pattern(N)` (the client computes the same bytes), so a client can
# tell a whole body from a short or corrupted one. Every connection is closed WITHOUT a TLS
# close_notify (the socket is closed, never `unwrap()`ed), as many real servers do.
#
#   /close/N/..          200, N bytes, no length: HTTP/1.1 + Connection: close, ends at close
#   /close10/N/..        the same as an HTTP/1.0 response
#   /cl/N/..             200, Content-Length: N, N bytes
#   /chunked/N/..        200, chunked, N bytes and the last chunk
#   /short-cl/N/M/..     200, Content-Length: N, then M < N bytes and close
#   /short-chunked/M/..  200, chunked, M bytes and close without the last chunk
#   /trickle/S/..        200, chunked, 100 bytes every 0.1 s for S seconds, then the last chunk
#   /upload/..           reads the body (Content-Length or chunked), 200 {"received": n}
#   /reason/CODE/TEXT/.. CODE with the reason phrase TEXT (percent-decoded), a JSON body
#   /echo/WHERE/WHAT/ENC/..
#                        echoes the request's Authorization: WHAT is `header` (the whole
#                        value), `secret` (the bearer token, or the password of Basic),
#                        `token` (the base64 of Basic) or `userpass` (`user:pass` of Basic);
#                        ENC encodes it (see `encode`); WHERE puts it in the reason phrase
#                        (`reason`), a JSON body (`body`), `Location` (302), `Set-Cookie`
#                        (`cookie`), `X-Echo` (`xecho`), a `103 Early Hints` before the
#                        answer (`early`), a chunked trailer (`trailer`), or a chunked JSON
#                        body whose two chunks cut it in half (`split`).
#   anything else        200, the request as JSON
#
# A query `?notify=1` makes the server close the connection after this request with a TLS
# close_notify (a clean TLS close) instead of the bare TCP close of every other connection.
#
# A leading `/scoped` is ignored (the tests' providers are scoped to it, so the same routes
# can be fetched inside and outside every scope).

import base64
import json
import re
import socket
import ssl
import sys
import threading
import time
import urllib.parse

ADDRESS, CERT, KEY, LOG = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
HTTP_PORT, HTTPS_PORT = 8080, 443
CONTEXT = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
CONTEXT.load_cert_chain(CERT, KEY)
CONTEXT.set_alpn_protocols(["http/1.1"])
PIECE = 16384
log_lock = threading.Lock()

# A block whose length is prime, so no cut or repeat of whole pieces leaves it looking right.
BLOCK = bytes((i * 131 + 7) % 256 for i in range(65521))


def pattern(n):
    return (BLOCK * (n // len(BLOCK) + 1))[:n]


def encode(value, how):
    """The ways a server may spell a value it echoes."""
    if how == "raw":
        return value
    if how == "json":  # PHP's json_encode: `/` as `\/`
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("/", "\\/")
    if how == "json_u":  # every non-alphanumeric character as \u00xx
        return "".join(c if c.isalnum() else "\\u%04x" % ord(c) for c in value)
    if how == "json_U":
        return "".join(c if c.isalnum() else "\\u%04X" % ord(c) for c in value)
    if how == "json_mixed":  # only `/` escaped, as \u002F
        return value.replace("/", "\\u002F")
    if how == "url":  # every reserved character, upper-case hex, space as %20
        return urllib.parse.quote(value, safe="")
    if how == "url_lower":
        return re.sub("%[0-9A-F]{2}", lambda m: m.group(0).lower(),
                      urllib.parse.quote(value, safe=""))
    if how == "url_plus":  # a form field: space as +
        return urllib.parse.quote_plus(value, safe="")
    if how == "url_path":  # Python's default quote: `/` stays
        return urllib.parse.quote(value)
    raise ValueError(how)


def header(headers, name):
    for key, value in headers:
        if key == name:
            return value
    return None


def log(entry):
    with log_lock:
        with open(LOG, "a") as out:
            out.write(json.dumps(entry) + "\n")


def read_head(rfile):
    line = rfile.readline(65537)
    if not line or not line.strip():
        return None
    method, target, _version = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
    headers = []
    while True:
        raw = rfile.readline(65537)
        if raw in (b"\r\n", b"\n", b""):
            break
        name, _, value = raw.decode("latin-1").partition(":")
        headers.append([name.strip().lower(), value.strip()])
    return method, target, headers


def read_body(rfile, headers):
    """The body's length, read whole (Content-Length or chunked)."""
    if (header(headers, "transfer-encoding") or "").lower() == "chunked":
        total = 0
        while True:
            size = int(rfile.readline(1024).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                return total
            total += len(rfile.read(size))
            rfile.readline(8)
    length = int(header(headers, "content-length") or 0)
    return len(rfile.read(length)) if length else 0


def send(sock, data):
    for start in range(0, len(data), PIECE):
        sock.sendall(data[start:start + PIECE])


def head(status, reason, fields, version="HTTP/1.1"):
    lines = [f"{version} {status} {reason}"] + [f"{k}: {v}" for k, v in fields]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def chunk(data):
    return b"%x\r\n%s\r\n" % (len(data), data)


def echo_value(headers, what, how):
    auth = header(headers, "authorization") or ""
    kind, _, credential = auth.partition(" ")
    if kind.lower() == "basic":
        userpass = base64.b64decode(credential).decode("latin-1")
        values = {"header": auth, "secret": userpass.partition(":")[2],
                  "token": credential, "userpass": userpass}
    else:
        values = {"header": auth, "secret": credential, "token": credential,
                  "userpass": credential}
    return encode(values[what], how)


def answer(sock, scheme, method, target, headers, rfile):
    """Sends one response; returns whether the connection may carry another request."""
    path = target.split("?", 1)[0]
    parts = [urllib.parse.unquote(p) for p in path.split("/")[1:]]
    if parts and parts[0] == "scoped":  # the same routes, inside a provider's scope
        parts = parts[1:]
    route = parts[0] if parts else ""
    octets = "application/octet-stream"
    if route == "upload":
        if (header(headers, "expect") or "").lower() == "100-continue":
            sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        received = read_body(rfile, headers)
        data = json.dumps({"received": received}).encode()
        sock.sendall(head(200, "OK", [("Content-Type", "application/json"),
                                      ("Content-Length", len(data))]) + data)
        return True
    body_length = read_body(rfile, headers)
    if route in ("close", "close10"):
        n = int(parts[1])
        version = "HTTP/1.0" if route == "close10" else "HTTP/1.1"
        fields = [("Content-Type", octets)]
        if route == "close":
            fields.append(("Connection", "close"))
        sock.sendall(head(200, "OK", fields, version))
        send(sock, pattern(n))
        return False
    if route == "cl":
        n = int(parts[1])
        sock.sendall(head(200, "OK", [("Content-Type", octets), ("Content-Length", n)]))
        send(sock, pattern(n))
        return True
    if route == "chunked":
        n = int(parts[1])
        data = pattern(n)
        sock.sendall(head(200, "OK", [("Content-Type", octets),
                                      ("Transfer-Encoding", "chunked")]))
        send(sock, b"".join(chunk(data[i:i + 10000]) for i in range(0, n, 10000)) + b"0\r\n\r\n")
        return True
    if route == "short-cl":
        n, m = int(parts[1]), int(parts[2])
        sock.sendall(head(200, "OK", [("Content-Type", octets), ("Content-Length", n)]))
        send(sock, pattern(m))
        return False
    if route == "short-chunked":
        m = int(parts[1])
        data = pattern(m)
        sock.sendall(head(200, "OK", [("Content-Type", octets),
                                      ("Transfer-Encoding", "chunked")]))
        send(sock, b"".join(chunk(data[i:i + 10000]) for i in range(0, m, 10000)))
        return False
    if route == "trickle":
        seconds = float(parts[1])
        sock.sendall(head(200, "OK", [("Content-Type", octets),
                                      ("Transfer-Encoding", "chunked")]))
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            sock.sendall(chunk(b"t" * 100))
            time.sleep(0.1)
        sock.sendall(b"0\r\n\r\n")
        return True
    if route == "reason":
        code, text = int(parts[1]), parts[2]
        data = b'{"reason": "custom"}'
        sock.sendall(head(code, text, [("Content-Type", "application/json"),
                                       ("Content-Length", len(data))]) + data)
        return True
    if route == "echo":
        where, what, how = parts[1], parts[2], parts[3]
        value = echo_value(headers, what, how)
        data = b'{"ok": true}'
        status, reason, fields = 200, "OK", [("Content-Type", "application/json")]
        if where == "reason":
            reason = value
        elif where == "body":
            data = ('{"echo": "' + value + '"}').encode("latin-1")
        elif where == "location":
            status, reason = 302, "Found"
            fields.append(("Location", "https://elsewhere.example/cb?t=" + value))
        elif where == "cookie":
            fields.append(("Set-Cookie", "sid=" + value + "; Path=/"))
        elif where == "xecho":
            fields.append(("X-Echo", value))
        elif where == "early":  # an informational response before the real one
            sock.sendall(head(103, "Early Hints", [
                ("Link", "<https://elsewhere.example/?t=" + value + ">; rel=preload")]))
        elif where == "trailer":
            sock.sendall(head(200, "OK", fields + [("Transfer-Encoding", "chunked"),
                                                   ("Trailer", "X-Echo")]))
            sock.sendall(chunk(data) + b"0\r\nX-Echo: " + value.encode("latin-1") + b"\r\n\r\n")
            return True
        elif where == "split":  # the body in two chunks that cut the value in half
            text = ('{"echo": "' + value + '"}').encode("latin-1")
            cut = len(b'{"echo": "') + len(value) // 2
            sock.sendall(head(200, "OK", fields + [("Transfer-Encoding", "chunked")]))
            sock.sendall(chunk(text[:cut]))
            time.sleep(0.05)  # two reads on the proxy's side, not one
            sock.sendall(chunk(text[cut:]) + b"0\r\n\r\n")
            return True
        fields.append(("Content-Length", len(data)))
        sock.sendall(head(status, reason, fields) + data)
        return True
    data = json.dumps({"scheme": scheme, "method": method, "path": target,
                       "headers": headers, "body_length": body_length}).encode()
    sock.sendall(head(200, "OK", [("Content-Type", "application/json"),
                                  ("Content-Length", len(data))]) + data)
    return True


def serve(sock, scheme):
    rfile = sock.makefile("rb")
    notify = False
    try:
        while True:
            request = read_head(rfile)
            if request is None:
                return
            method, target, headers = request
            log({"scheme": scheme, "method": method, "path": target, "headers": headers})
            notify = target.endswith("?notify=1")
            if not answer(sock, scheme, method, target, headers, rfile):
                return
    except (OSError, ValueError):
        return
    finally:
        # Closing the socket (after the file that holds a reference to it), never unwrap():
        # the peer sees TCP's FIN with no TLS close_notify before it. Unless the request
        # asked for a clean TLS close (`?notify=1`): then close_notify goes first.
        rfile.close()
        if notify and scheme == "https":
            try:
                sock.settimeout(5)
                sock.unwrap()
            except (OSError, ValueError):
                pass
        try:
            sock.close()
        except OSError:
            pass


def connection(raw, tls):
    if tls:
        try:
            raw.settimeout(20)
            sock = CONTEXT.wrap_socket(raw, server_side=True)
            sock.settimeout(None)
        except (ssl.SSLError, OSError):
            raw.close()
            return
        serve(sock, "https")
    else:
        serve(raw, "http")


def listen(port):
    for _ in range(400):
        try:
            sock = socket.create_server((ADDRESS, port), backlog=128)
            return sock
        except OSError:
            time.sleep(0.025)
    sys.exit(f"cannot bind {ADDRESS}:{port}")


def accept(listener, tls):
    while True:
        raw, _ = listener.accept()
        threading.Thread(target=connection, args=(raw, tls), daemon=True).start()


listeners = [(listen(HTTP_PORT), False), (listen(HTTPS_PORT), True)]
for listener, tls in listeners:
    threading.Thread(target=accept, args=(listener, tls), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
