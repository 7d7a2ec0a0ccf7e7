# The sandboxed side of tests/tests/websocket_e2e.rs: the prelude of every client script, run
# by the test venv's interpreter inside the sandbox.
#
#   python3 client.py OUT_DIR NODE_CLIENT
#
# `ws(name, url, ...)` opens a session with the `websockets` library as a program would: the
# proxy comes from the environment (`proxy=True` is its default: HTTPS_PROXY for wss://), the
# CA from SSL_CERT_FILE (the bundle with the execution's CA the sandbox is given).
# `node(name, spec)` runs the raw Node client (websocket_e2e_client.js). Each records what it
# saw in `results`, printed as one JSON line at exit.

import asyncio
import atexit
import json
import os
import ssl
import subprocess
import sys

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

OUT, NODE_CLIENT = sys.argv[1], sys.argv[2]
results = {}
atexit.register(lambda: print(json.dumps(results)))

CA = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
# A guard against a hang (the test would fail on it), never a point of synchronisation.
GUARD = 15


def save(name, data):
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def shown(message):
    """A message as JSON can carry it: text as is, binary as `bytes:<hex>`."""
    return message if isinstance(message, str) else "bytes:" + message.hex()


def close_of(connection):
    """The Close frame the client received (1006: none) and the one it sent."""
    sent = connection.protocol.close_sent
    return {
        "received": connection.close_code,
        "reason": connection.close_reason,
        "sent": sent.code if sent else None,
    }


async def session(url, messages, headers, subprotocols, until_closed):
    seen = {}
    try:
        connection = await connect(
            url,
            ssl=CA,
            additional_headers=headers,
            subprotocols=subprotocols,
            open_timeout=GUARD,
            close_timeout=GUARD,
        )
    except InvalidStatus as e:
        response = e.response
        return {
            "status": response.status_code,
            "headers": {k.lower(): v for k, v in response.headers.raw_items()},
            "body": response.body.decode("utf-8", "replace"),
        }
    seen["status"] = connection.response.status_code
    seen["response_headers"] = {k.lower(): v for k, v in connection.response.headers.raw_items()}
    seen["subprotocol"] = connection.subprotocol
    seen["extensions"] = [extension.name for extension in connection.protocol.extensions]
    replies = seen["replies"] = []
    try:
        async with asyncio.timeout(GUARD):
            for message in messages:
                await connection.send(message)
                replies.append(shown(await connection.recv()))
            while until_closed:
                replies.append(shown(await connection.recv()))
            await connection.close()
    except ConnectionClosed:
        seen["ended_early"] = True
    except TimeoutError:
        seen["error"] = f"no end within {GUARD} s"
        await connection.close()
    await connection.wait_closed()
    seen["close"] = close_of(connection)
    return seen


def ws(name, url, messages=(), headers=None, subprotocols=None, until_closed=False):
    """One session: send each message and wait for its reply; then close (1000), or, with
    `until_closed`, read until the other side ends the session."""
    try:
        results[name] = asyncio.run(session(url, messages, headers, subprotocols, until_closed))
    except Exception as e:  # what failed goes into the results, for the test's message
        results[name] = {"error": f"{type(e).__name__}: {e}"}
    save(name + ".json", json.dumps(results[name]))
    return results[name]


def node(name, spec):
    """The raw Node client with `spec` (see websocket_e2e_client.js)."""
    try:
        p = subprocess.run(
            ["/usr/bin/node", NODE_CLIENT, json.dumps(spec)], capture_output=True, timeout=2 * GUARD
        )
    except subprocess.TimeoutExpired:
        results[name] = {"error": f"node ran for more than {2 * GUARD} s"}
        return results[name]
    save(name + ".out", p.stdout + p.stderr)
    lines = p.stdout.decode("utf-8", "replace").strip().splitlines()
    try:
        results[name] = json.loads(lines[-1])
    except (IndexError, ValueError):
        results[name] = {"error": "no result", "rc": p.returncode, "stderr": p.stderr.decode()}
    return results[name]
