# The hostile resolver battery of transparent_dns.rs, appended to transparent_refusals_client.py
# and run inside `tollgate run` as the sandbox user: everything a program in the sandbox can
# throw at the stub resolver on 127.0.0.1:53 by hand (raw UDP and TCP sockets), then the
# queries a normal client makes, which must still be answered.
#
# Results: `rcode <case>` for the malformed-but-readable messages (the response code, or None
# when nothing came back), `sentinel <batch>` (the normal query sent after a batch of
# datagrams on the same socket was answered, and how many other responses came back first),
# `during flood` / `after flood` (a normal query while 100 TCP connections are held / after
# they are closed), and dig's view at the end.

import random
import struct
import time

STUB = ("127.0.0.1", 53)
rng = random.Random(11)


def encode_name(name):
    return b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\0"


def message(qid=0x1234, opcode=0, qdcount=1, body=None, name="allowed.test", qtype=1,
            qclass=1):
    """A query header (RD set) and, unless `body` is given, one question."""
    header = struct.pack(">HHHHHH", qid, (opcode << 11) | 0x0100, qdcount, 0, 0, 0)
    if body is None:
        body = encode_name(name) + struct.pack(">HH", qtype, qclass)
    return header + body


def response_info(data):
    """(id, rcode, answer count, first A address or None) of a response."""
    if data is None or len(data) < 12:
        return None
    qid, flags, _, ancount = struct.unpack(">HHHH", data[:8])
    address = None
    if ancount and len(data) >= 4:
        address = ".".join(str(b) for b in data[-4:])
    return {"id": qid, "rcode": flags & 0xF, "answers": ancount, "address": address}


def udp_ask(data, timeout=5):
    """Sends one datagram and returns the response (bytes) or None."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(timeout)
    try:
        sock.sendto(data, STUB)
        return sock.recvfrom(65535)[0]
    except OSError:
        return None
    finally:
        sock.close()


def sentinel_after(datagrams):
    """Sends `datagrams` then a normal query (id 0x5e17) from one socket; reads responses
    until the normal query's: {answered, address, before} (`before`: other responses first)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(3)
    for data in datagrams:
        try:
            sock.sendto(data, STUB)
        except OSError as e:
            return {"answered": False, "error": _error(e)}
    before = 0
    # Sent up to three times, as resolvers do: a burst of datagrams can fill the socket's
    # receive buffer, and the kernel drops what does not fit before the stub sees it.
    for _ in range(3):
        sock.sendto(message(qid=0x5E17), STUB)
        try:
            while True:
                info = response_info(sock.recvfrom(65535)[0])
                if info and info["id"] == 0x5E17:
                    sock.close()
                    return {"answered": info["rcode"] == 0, "address": info["address"],
                            "before": before}
                before += 1
        except socket.timeout:
            continue
    sock.close()
    return {"answered": False, "before": before}


def tcp_ask(data, timeout=5):
    """One length-prefixed query over a new TCP connection: the response or None."""
    try:
        sock = socket.create_connection(STUB, timeout=timeout)
    except OSError:
        return None
    try:
        sock.sendall(struct.pack(">H", len(data)) + data)
        head = b""
        while len(head) < 2:
            chunk = sock.recv(2 - len(head))
            if not chunk:
                return None
            head += chunk
        (length,) = struct.unpack(">H", head)
        body = b""
        while len(body) < length:
            chunk = sock.recv(length - len(body))
            if not chunk:
                return None
            body += chunk
        return body
    except OSError:
        return None
    finally:
        sock.close()


def rcode_of(data):
    info = response_info(data)
    return info["rcode"] if info else None


# Nothing to attack without a stub (and no point waiting for each case's timeout).
results["stub"] = "answered" if response_info(udp_ask(message(qid=1))) else "no answer"
if results["stub"] != "answered":
    raise SystemExit(0)

# Readable headers, wrong content: each must get the contract's response code.
question = encode_name("allowed.test") + struct.pack(">HH", 1, 1)
readable = {
    "zero questions": message(qdcount=0, body=b""),
    "two questions": message(qdcount=2, body=question + encode_name("other.test") + b"\0\1\0\1"),
    "class CH": message(qclass=3),
    "opcode STATUS": message(opcode=2),
    "pointer to itself": message(body=b"\xc0\x0c\0\1\0\1"),
    "pointer loop": message(body=b"\xc0\x0e\xc0\x0c\0\1\0\1"),
    "pointer past the end": message(body=b"\xc0\xff\0\1\0\1"),
    "label type 0x40": message(body=b"\x41" + b"a" * 65 + b"\0\0\1\0\1"),
    "name over 255 bytes": message(body=(b"\x3f" + b"a" * 63) * 5 + b"\0\0\1\0\1"),
    "question cut short": message(body=b"\x07allowed"),
    "qdcount 65535": message(qdcount=65535),
}
for case, data in readable.items():
    results["rcode " + case] = rcode_of(udp_ask(data))
    results["tcp rcode " + case] = rcode_of(tcp_ask(data))

# Unreadable datagrams: never answered; the query after them is.
truncated = [message()[:n] for n in range(0, 12)]
results["sentinel truncated"] = sentinel_after(truncated)
noise = [bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 600))) for _ in range(300)]
results["sentinel random"] = sentinel_after(noise)
results["sentinel oversized"] = sentinel_after([message() + b"\0" * 5000, b"\xff" * 9000])

# TCP: a length prefix of 65535 and nothing after it, held open through the rest.
held = []
stalled = socket.create_connection(STUB, timeout=5)
stalled.sendall(b"\xff\xff")
held.append(stalled)
# A prefix, then a message shorter than it, then a byte more than it.
for data in [b"\x00\x40" + message(), b"\x00\x05" + b"\x12" * 6, b"\x00\x00"]:
    try:
        sock = socket.create_connection(STUB, timeout=5)
        sock.sendall(data)
        held.append(sock)
    except OSError:
        pass

# 100 TCP connections at once, each sending a normal query.
flood = []
refused = 0
for i in range(100):
    try:
        sock = socket.create_connection(STUB, timeout=10)
        flood.append(sock)
    except OSError:
        refused += 1
for i, sock in enumerate(flood):
    try:
        data = message(qid=i)
        sock.sendall(struct.pack(">H", len(data)) + data)
    except OSError:
        pass
results["during flood"] = response_info(udp_ask(message(qid=0xD0D0)))
answered = 0
for sock in flood:
    try:
        if len(sock.recv(2)) == 2:
            answered += 1
    except OSError:
        pass
results["flood"] = {"connected": len(flood), "refused": refused, "answered": answered}
for sock in flood + held:
    sock.close()

# After the flood: a normal TCP query is answered (a few fresh tries: the stub notices the
# closes asynchronously and only then has room again).
after = None
for _ in range(5):
    after = response_info(tcp_ask(message(qid=0xAF7E)))
    if after and after["rcode"] == 0:
        break
    time.sleep(1)
results["after flood tcp"] = after
results["after flood udp"] = response_info(udp_ask(message(qid=0xAF7F)))
results["dig udp"] = dig("allowed.test")
results["dig tcp"] = dig("allowed.test", tcp=True)
