# A gRPC upstream for tests/tests/h2_e2e.rs: grpcio (from the test venv) over TLS (HTTP/2 by
# ALPN, as every gRPC server), inside a network namespace of its own (`unshare --net`).
#
#   h2_e2e_grpc_server.py ADDRESS PORT CERT KEY LOG_FILE
#
# No generated code: generic handlers on raw bytes (no serializers) for the service
# `tollgate.test.Echo`:
#
#   Unary(b"X")   -> b"pong:X"
#   Stream(b"X")  -> b"X:0" ... b"X:4" (five messages), trailing metadata x-sent: 5
#
# Every call is appended to LOG_FILE as one JSON line: the method, the metadata keys it
# received, and the sha256 of its `authorization` metadata (never the value).

import hashlib
import json
import socket
import sys
import threading
import time
from concurrent import futures

import grpc

ADDRESS, PORT, CERT, KEY, LOG = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
STREAMED = 5
log_lock = threading.Lock()


def log(method, context):
    metadata = list(context.invocation_metadata())
    authorization = [v for k, v in metadata if k == "authorization"]
    entry = {
        "method": method,
        "metadata_keys": [k for k, _ in metadata],
        "authorization_sha256": (
            hashlib.sha256(authorization[0].encode()).hexdigest() if authorization else None
        ),
    }
    with log_lock:
        with open(LOG, "a") as f:
            f.write(json.dumps(entry) + "\n")


def unary(request, context):
    log("Unary", context)
    return b"pong:" + request


def stream(request, context):
    log("Stream", context)
    for i in range(STREAMED):
        yield request + b":%d" % i
    context.set_trailing_metadata((("x-sent", str(STREAMED)),))


def wait_for_address():
    # The namespace's address appears when the test has moved the veth's peer in.
    for _ in range(400):
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            probe.bind((ADDRESS, 0))
            return
        except OSError:
            time.sleep(0.025)
        finally:
            probe.close()
    sys.exit(f"address {ADDRESS} never appeared")


wait_for_address()
handler = grpc.method_handlers_generic_handler(
    "tollgate.test.Echo",
    {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
    },
)
server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
server.add_generic_rpc_handlers((handler,))
with open(CERT, "rb") as c, open(KEY, "rb") as k:
    credentials = grpc.ssl_server_credentials([(k.read(), c.read())])
server.add_secure_port(f"{ADDRESS}:{PORT}", credentials)
server.start()
print("ready", flush=True)
server.wait_for_termination()
