# A WebSocket upstream (wss://) for tests/tests/websocket_e2e.rs, run inside a network
# namespace of its own (`unshare --net`) under the test venv's interpreter (the `websockets`
# library), reached from the host namespace over a veth.
#
#   websocket_e2e_server.py ADDRESS PORT CERT KEY LOG_FILE
#
# Waits until ADDRESS exists, serves WebSocket over TLS on ADDRESS:PORT with CERT (signed by
# the test's own CA; ALPN http/1.1), prints `ready`, and serves until killed. It logs as JSON
# lines to LOG_FILE, each with `event` and `path`:
#
#   handshake  every request that reached it (websockets reads GET requests only), an
#              upgrade or not: `upgrade`, `authorization_sha256` (sha256 hex of the
#              Authorization header, never the header itself; null without one),
#              `subprotocols` (Sec-WebSocket-Protocol offered), `extensions`
#              (Sec-WebSocket-Extensions offered, every value), `header_names`
#   message    each data message received: `kind` (text/binary), `length`, `text` (a text
#              message's first 200 characters)
#   close      when a session ended: `code`, `reason` of the Close frame it received (1006
#              when none came)
#
# Paths:
#   /echo...        every message sent back as it came
#   /silent...      one text message `hello`, then nothing until the session ends
#   /echo-auth...   every text message sent back as `<message>|<the Authorization header>`:
#                   an upstream that echoes the credential tollgate injected
#
# Subprotocol: `chat.v2` is chosen when offered, else none. Compression (permessage-deflate)
# is on by default in `websockets`: the server would accept it if it were offered.

import asyncio
import hashlib
import json
import ssl
import sys

from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

ADDRESS, PORT, CERT, KEY, LOG = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
CONTEXT = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
CONTEXT.load_cert_chain(CERT, KEY)
CONTEXT.set_alpn_protocols(["http/1.1"])


def log(entry):
    with open(LOG, "a") as f:
        f.write(json.dumps(entry) + "\n")


def process_request(connection, request):
    headers = request.headers
    authorization = headers.get("Authorization")
    log({
        "event": "handshake",
        "path": request.path,
        "upgrade": headers.get("Upgrade"),
        "authorization_sha256": (
            hashlib.sha256(authorization.encode()).hexdigest() if authorization is not None else None
        ),
        "subprotocols": headers.get_all("Sec-WebSocket-Protocol"),
        "extensions": headers.get_all("Sec-WebSocket-Extensions"),
        "header_names": [name.lower() for name in headers.keys()],
    })
    return None


def select_subprotocol(connection, offered):
    return "chat.v2" if "chat.v2" in offered else None


def logged_message(path, message):
    entry = {"event": "message", "path": path}
    if isinstance(message, str):
        entry.update(kind="text", length=len(message.encode()), text=message[:200])
    else:
        entry.update(kind="binary", length=len(message))
    log(entry)


async def handler(ws):
    path = ws.request.path
    authorization = ws.request.headers.get("Authorization", "")
    try:
        if path.startswith("/silent"):
            await ws.send("hello")
            async for message in ws:
                logged_message(path, message)
        elif path.startswith("/echo-auth"):
            async for message in ws:
                logged_message(path, message)
                await ws.send(f"{message}|{authorization}")
        else:
            async for message in ws:
                logged_message(path, message)
                await ws.send(message)
    except ConnectionClosed:
        pass
    await ws.wait_closed()
    log({"event": "close", "path": path, "code": ws.close_code, "reason": ws.close_reason})


async def main():
    for _ in range(400):
        try:
            server = await serve(
                handler,
                ADDRESS,
                PORT,
                ssl=CONTEXT,
                process_request=process_request,
                select_subprotocol=select_subprotocol,
            )
            break
        except OSError:
            await asyncio.sleep(0.025)
    else:
        sys.exit(f"cannot bind {ADDRESS}:{PORT}")
    print("ready", flush=True)
    await server.serve_forever()


asyncio.run(main())
