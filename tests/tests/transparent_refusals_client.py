# Client helpers for the scripts transparent_refusals.rs and transparent_dns.rs run inside
# `tollgate run` with Debian's /usr/bin/python3 as the sandbox user. Each test appends its own
# lines; they fill `results`, printed as one JSON line at exit.
#
# These helpers behave like programs that ignore the proxy settings: they look names up with
# the system resolver (the sandbox's /etc/resolv.conf) and connect to whatever address comes
# back, or ask a DNS server themselves (/usr/bin/dig), or send bytes of their own choosing.
# Only `curl(..., proxy=True)` uses the proxy variables, for comparing the two ways out.

import atexit
import errno
import json
import os
import socket
import ssl
import subprocess

results = {}


@atexit.register
def _report():
    print(json.dumps(results), flush=True)


def _error(e):
    return "%s: %s" % (type(e).__name__, e)


def parse_response(data):
    """{status, headers, body} of the first HTTP response in `data` (bytes); {status: None,
    raw} when it is not one."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if not lines or not lines[0].startswith("HTTP/"):
        return {"status": None, "raw": data.decode("latin-1")}
    headers = [[k.strip().lower(), v.strip()]
               for k, v in (l.split(":", 1) for l in lines[1:] if ":" in l)]
    length = dict(headers).get("content-length")
    if length is not None and length.isdigit():
        body = body[:int(length)]
    return {"status": int(lines[0].split()[1]), "headers": headers,
            "body": body.decode("latin-1")}


def tollgate_error(response):
    return dict(response.get("headers") or []).get("tollgate-error")


def resolve(name):
    """The IPv4 address the system resolver gives `name`, or {error}."""
    try:
        return socket.gethostbyname(name)
    except OSError as e:
        return {"error": _error(e)}


def _read_to_close(sock):
    """Everything until the peer closes; `closed` says whether it did (not a timeout)."""
    got = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return got, True
            got += chunk
    except socket.timeout:
        return got, False
    except (ConnectionResetError, ssl.SSLError):
        return got, True


def raw(address, port, data, timeout=30):
    """Connects to address:port, sends `data` (nothing when empty), reads until the peer
    closes: {connected, closed, response} or {connected: False, errno, error}."""
    sock = socket.socket()
    sock.settimeout(timeout)
    try:
        sock.connect((address, port))
    except OSError as e:
        sock.close()
        return {"connected": False, "errno": errno.errorcode.get(e.errno), "error": _error(e)}
    try:
        if data:
            sock.sendall(data)
        got, closed = _read_to_close(sock)
    except OSError as e:
        got, closed = b"", True
    sock.close()
    return {"connected": True, "closed": closed, "response": parse_response(got)}


def tls(address, port, sni, request, timeout=30):
    """A TLS handshake with address:port sending server name `sni` (None: no SNI at all),
    then `request` (bytes) if it completed: {handshake: "ok" | error, response}."""
    context = ssl.create_default_context()
    if sni is None:
        context.check_hostname = False
    sock = socket.create_connection((address, port), timeout=timeout)
    try:
        wrapped = context.wrap_socket(sock, server_hostname=sni)
    except (OSError, ssl.SSLError) as e:
        sock.close()
        return {"handshake": _error(e)}
    try:
        wrapped.sendall(request)
        got, closed = _read_to_close(wrapped)
    except (OSError, ssl.SSLError) as e:
        got, closed = b"", True
    wrapped.close()
    return {"handshake": "ok", "closed": closed, "response": parse_response(got)}


def curl(*args, proxy=False):
    """/usr/bin/curl -sS -i ARGS, ignoring the proxy variables (`--noproxy '*'`) unless
    `proxy`: {rc, status, headers, body, stderr} of the final response."""
    command = ["/usr/bin/curl", "-sS", "-i", "--max-time", "20"]
    if not proxy:
        command += ["--noproxy", "*"]
    done = subprocess.run(command + list(args), capture_output=True)
    data = done.stdout
    # A proxy's `200 Connection established` comes first through CONNECT: skip it.
    while b"\r\n\r\n" in data and data.split(b"\r\n\r\n", 1)[1].startswith(b"HTTP/"):
        data = data.split(b"\r\n\r\n", 1)[1]
    out = parse_response(data)
    out["rc"] = done.returncode
    out["stderr"] = done.stderr.decode("latin-1")
    return out


def brief(response):
    """Status, Tollgate-Error and the refusal's JSON body of a curl() or raw() response."""
    response = response.get("response", response)
    try:
        body = json.loads(response.get("body") or "")
    except ValueError:
        body = None
    return {"status": response.get("status"), "error": tollgate_error(response),
            "body": body if isinstance(body, dict) else None}


def dig(name, rtype="A", server="127.0.0.1", tcp=False, timeout=5):
    """/usr/bin/dig @server name rtype (one try): {rc, status, answers: [[name, ttl, class,
    type, data]], tail} — status None when no response came (then tail has dig's words)."""
    command = ["/usr/bin/dig", "@" + server, "+tries=1", "+time=%d" % timeout, name, rtype]
    if tcp:
        command.append("+tcp")
    done = subprocess.run(command, capture_output=True)
    text = done.stdout.decode("latin-1")
    status, answers, section = None, [], None
    for line in text.splitlines():
        if "->>HEADER<<-" in line and "status:" in line:
            status = line.split("status:")[1].split(",")[0].strip()
        if line.startswith(";; ") and line.endswith("SECTION:"):
            section = line
            continue
        if not line.strip():
            section = None
            continue
        if section == ";; ANSWER SECTION:" and not line.startswith(";"):
            answers.append(line.split(None, 4))
    tail = [l for l in (done.stderr.decode("latin-1") + text).splitlines()
            if l.strip() and not l.startswith(";; ANSWER") and status is None][:8]
    return {"rc": done.returncode, "status": status, "answers": answers, "tail": tail}


def getent(database, name):
    """/usr/bin/getent DATABASE NAME: {rc, addresses} (the first field of each line)."""
    done = subprocess.run(["/usr/bin/getent", database, name], capture_output=True)
    lines = done.stdout.decode("latin-1").splitlines()
    return {"rc": done.returncode, "addresses": [l.split()[0] for l in lines if l.split()]}


def direct_errno(address, port, kind=socket.SOCK_STREAM):
    """errno name of a direct connect (TCP) or sendto (UDP) to address:port, or "ok"."""
    sock = socket.socket(socket.AF_INET, kind)
    sock.settimeout(5)
    try:
        if kind == socket.SOCK_STREAM:
            sock.connect((address, port))
        else:
            sock.sendto(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03com"
                        b"\x00\x00\x01\x00\x01", (address, port))
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
    finally:
        sock.close()


# ---- the test's own script follows ----
