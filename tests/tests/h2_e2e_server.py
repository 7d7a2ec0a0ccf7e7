# An HTTP/2 upstream for tests/tests/h2_e2e.rs: hypercorn (from the test venv) serving a small
# ASGI app over TLS, offering ALPN h2 and http/1.1, inside a network namespace of its own
# (`unshare --net`), reached from the host namespace over a veth.
#
#   h2_e2e_server.py ADDRESS PORT CERT KEY LOG_FILE
#
# Waits until ADDRESS exists, listens on ADDRESS:PORT, prints `ready`, and serves until
# killed. Every request is appended to LOG_FILE as one JSON line when it arrives:
# http_version ("2" or "1.1", what the proxy spoke to this server), method, path (query
# included), host (`:authority` on HTTP/2), header names in order, the sha256 of the
# `authorization` header if any (never the value), the body's length, and the client's port
# (one port per upstream connection).
#
#   /hold/GROUP/N...  held until N requests of GROUP are in flight at once, then 200 (504
#                     after 15 s without them): proves that streams were concurrent
#   anything else     200, the logged entry as JSON

import asyncio
import hashlib
import json
import socket
import sys
import time

from hypercorn.asyncio import serve
from hypercorn.config import Config

ADDRESS, PORT, CERT, KEY, LOG = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
HOLD_LIMIT = 15

# GROUP -> [requests arrived, event set when enough have]
holds = {}


def log(entry):
    with open(LOG, "a") as f:
        f.write(json.dumps(entry) + "\n")


async def read_body(receive):
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


async def hold(path):
    # /hold/GROUP/N/...
    parts = path.split("?")[0].split("/")
    group, wanted = parts[2], int(parts[3])
    arrived = holds.setdefault(group, [0, asyncio.Event()])
    arrived[0] += 1
    if arrived[0] >= wanted:
        arrived[1].set()
    try:
        await asyncio.wait_for(arrived[1].wait(), HOLD_LIMIT)
        return 200
    except asyncio.TimeoutError:
        return 504


async def lifespan(receive, send):
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        return await lifespan(receive, send)
    body = await read_body(receive)
    if body is None:
        return
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
    authorization = [v for k, v in headers if k == "authorization"]
    path = scope["raw_path"].decode("latin-1")
    if scope["query_string"]:
        path += "?" + scope["query_string"].decode("latin-1")
    entry = {
        "http_version": scope["http_version"],
        "method": scope["method"],
        "path": path,
        "host": next((v for k, v in headers if k == "host"), None),
        "header_names": [k for k, _ in headers],
        "authorization_sha256": (
            hashlib.sha256(authorization[0].encode()).hexdigest() if authorization else None
        ),
        "body_bytes": len(body),
        "client_port": scope["client"][1] if scope.get("client") else None,
    }
    log(entry)
    status = await hold(path) if path.startswith("/hold/") else 200
    data = json.dumps(entry).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


def listening_socket():
    # The namespace's address appears when the test has moved the veth's peer in.
    for _ in range(400):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((ADDRESS, PORT))
            sock.listen(100)
            return sock
        except OSError:
            sock.close()
            time.sleep(0.025)
    sys.exit(f"cannot bind {ADDRESS}:{PORT}")


sock = listening_socket()
config = Config()
config.bind = [f"fd://{sock.fileno()}"]
config.certfile, config.keyfile = CERT, KEY
config.alpn_protocols = ["h2", "http/1.1"]
config.accesslog = None
config.errorlog = None
print("ready", flush=True)
asyncio.run(serve(app, config))
