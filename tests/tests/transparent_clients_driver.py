# Runs the client commands of tests/tests/transparent_clients.rs one after another inside one
# sandbox (one `tollgate run` per client family instead of one per request), with Debian's
# /usr/bin/python3 and the standard library only.
#
#   transparent_clients_driver.py CASES_FILE
#
# CASES_FILE is a JSON list of {"name", "argv", "stdin", "limit"}. Each command runs with the
# environment tollgate gave the sandbox, unchanged (a case that wants a variable gone says so
# in its argv with /usr/bin/env -u), `stdin` on its standard input, and is killed after
# `limit` seconds: a guard against a hang, so one stuck client cannot hide what the others
# did. Prints one JSON object, name -> {"rc", "stdout", "stderr", "hung"}; rc is null when the
# command was killed or could not start.

import json
import subprocess
import sys


def text(data):
    return (data or b"").decode("utf-8", "replace")


results = {}
with open(sys.argv[1]) as f:
    cases = json.load(f)
for case in cases:
    try:
        done = subprocess.run(
            case["argv"],
            input=case["stdin"].encode(),
            capture_output=True,
            timeout=case["limit"],
        )
        results[case["name"]] = {
            "rc": done.returncode,
            "stdout": text(done.stdout),
            "stderr": text(done.stderr),
            "hung": False,
        }
    except subprocess.TimeoutExpired as e:
        results[case["name"]] = {
            "rc": None,
            "stdout": text(e.stdout),
            "stderr": text(e.stderr),
            "hung": True,
        }
    except OSError as e:
        results[case["name"]] = {"rc": None, "stdout": "", "stderr": str(e), "hung": False}
print(json.dumps(results), flush=True)
