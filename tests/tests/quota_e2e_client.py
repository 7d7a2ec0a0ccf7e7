# Client helpers for the scripts `quota_e2e.rs` runs inside `tollgate run` with Debian's
# /usr/bin/python3 as the sandbox user. Each test appends its own lines to this file; they
# fill `results`, which is printed as one JSON line at exit.
#
# Requests go to the proxy named in $HTTP_PROXY as absolute-form HTTP/1.1 requests, one
# connection each (http.client, standard library only), and every answer is reduced to what
# the tests assert: status, the quota headers, and how much of the body arrived.

import atexit
import http.client
import json
import os
import sys
import time
from urllib.parse import urlsplit

_proxy = urlsplit(os.environ["HTTP_PROXY"])
results = {}


@atexit.register
def _report():
    print(json.dumps(results), flush=True)


def request(path, method="GET", host="up.test", body=None):
    """One request through the proxy: {status, error, retry_after, length, cut, body}."""
    out = {"status": None, "error": None, "retry_after": None, "length": 0, "cut": False}
    connection = http.client.HTTPConnection(_proxy.hostname, _proxy.port, timeout=60)
    try:
        connection.request(method, "http://%s:8080%s" % (host, path), body=body)
        response = connection.getresponse()
        out["status"] = response.status
        out["error"] = response.getheader("Tollgate-Error")
        out["retry_after"] = response.getheader("Retry-After")
        try:
            data = response.read()
        except http.client.IncompleteRead as e:
            data = e.partial
            out["cut"] = True
        out["length"] = len(data)
        # Tollgate's own answers are small JSON bodies; keep them for the failure messages.
        if out["error"] is not None:
            out["body"] = data[:2000].decode("latin-1")
    except (OSError, http.client.HTTPException) as e:
        out["exception"] = "%s: %s" % (type(e).__name__, e)
        out["cut"] = True
    finally:
        connection.close()
    return out


def wait_for_go():
    """Says `ready` and waits for the test to close stdin: executions start their requests together."""
    print("ready", flush=True)
    sys.stdin.read()


def flood(prefix, seconds):
    """Sends GETs to PREFIX/N one after the other for SECONDS; counts the answers by kind.

    Keeps the first few answers that are neither a 200 nor a proper quota refusal (429,
    `team_rate_limited`, a whole number of seconds >= 1 in Retry-After)."""
    counts = {"attempts": 0, "ok": 0, "rate_limited": 0, "other": 0}
    retry_afters = []
    odd = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        answer = request("%s/%d" % (prefix, counts["attempts"]))
        counts["attempts"] += 1
        if answer["status"] == 200 and not answer["cut"]:
            counts["ok"] += 1
        elif (
            answer["status"] == 429
            and answer["error"] == "team_rate_limited"
            and answer["retry_after"] is not None
            and answer["retry_after"].isdigit()
            and int(answer["retry_after"]) >= 1
        ):
            counts["rate_limited"] += 1
            retry_afters.append(int(answer["retry_after"]))
        else:
            counts["other"] += 1
            if len(odd) < 5:
                odd.append(answer)
    counts["retry_after_min"] = min(retry_afters) if retry_afters else None
    counts["retry_after_max"] = max(retry_afters) if retry_afters else None
    counts["odd"] = odd
    return counts


def each(requests):
    """Sends each (method, path, host) in order; the list of answers."""
    return [request(path, method=method, host=host) for method, path, host in requests]


def curl(url):
    """/usr/bin/curl through $HTTPS_PROXY (TLS to the upstream verified against the sandbox's
    bundle): {rc, status, connect}: the final status and the proxy's answer to CONNECT."""
    import subprocess

    done = subprocess.run(
        ["/usr/bin/curl", "-sS", "-o", "/dev/null", "--max-time", "30",
         "-w", "%{http_code} %{http_connect}", url],
        capture_output=True,
    )
    status, _, connect = done.stdout.decode().partition(" ")
    return {"rc": done.returncode, "status": int(status or 0), "connect": int(connect or 0),
            "stderr": done.stderr.decode("latin-1")}
