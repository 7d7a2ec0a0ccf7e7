# The sandboxed side of `quota_failures.rs`: run by Debian's /usr/bin/python3 inside
# `tollgate run`, it makes requests in phases the test asks for, one JSON command a line on
# stdin, and answers each with one JSON line on stdout. The test does things between phases
# (stops Redis, restarts it, runs another execution of the team), so the phases are ordered
# by this pipe, not by time.
#
#   {"phase": "a", "count": 3}
#       `count` GETs of http://up.test:8080/echo/<phase>/<i>, one after another.
#   {"phase": "c", "until": 200, "max": 400, "gap": 0.05}
#       GETs until one answers `until` (at most `max`, `gap` seconds apart): for waiting out
#       the quota store's reconnect backoff, bounded.
#
# Each answer: {"phase": ..., "answers": [{"status", "error", "retry_after", "body"}, ...]},
# `error` being the Tollgate-Error header. urllib finds the proxy in $HTTP_PROXY itself.

import json
import sys
import time
import urllib.error
import urllib.request

UPSTREAM = "http://up.test:8080"


def get(url):
    try:
        response = urllib.request.urlopen(url, timeout=30)
    except urllib.error.HTTPError as e:
        response = e
    except Exception as e:  # noqa: BLE001 - report, do not crash the script
        return {"status": None, "error": None, "retry_after": None, "body": repr(e)}
    body = response.read().decode("latin-1")
    return {
        "status": response.status if hasattr(response, "status") else response.code,
        "error": response.headers.get("Tollgate-Error"),
        "retry_after": response.headers.get("Retry-After"),
        "body": body[:500],
    }


for line in sys.stdin:
    if not line.strip():
        continue
    command = json.loads(line)
    phase = command["phase"]
    answers = []
    if "until" in command:
        for i in range(command["max"]):
            answer = get("%s/echo/%s/%d" % (UPSTREAM, phase, i))
            answers.append(answer)
            if answer["status"] == command["until"]:
                break
            time.sleep(command["gap"])
    else:
        for i in range(command["count"]):
            answers.append(get("%s/echo/%s/%d" % (UPSTREAM, phase, i)))
    print(json.dumps({"phase": phase, "answers": answers}), flush=True)
