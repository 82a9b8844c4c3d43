#!/usr/bin/python3
"""Interop: a Python peer that speaks docs/protocol.md with the C++ channels.

Usage: /usr/bin/python3 tests/interop/interop_test.py PATH_TO_postbox_test_peer

The codec below is written from docs/protocol.md alone (msgpack-python and
pyzmq, as Debian ships them for /usr/bin/python3). Each scenario starts the
C++ peer program (tests/support/peer_main.cpp) as the other side of a channel
over tcp://127.0.0.1 on an OS-chosen port, and checks every field both ways.
The peer prints "READY <endpoint>" once its socket is set up, then one JSON
line per message (bytes as hex), then {"done": true, ...} with its counters.

Nothing here sleeps for a fixed time: readiness is the peer's READY line or a
send that blocks (with a timeout) until the peer has connected, and every
wait has a deadline. Exit status 0 when every scenario passed, 1 otherwise.
"""

import json
import os
import secrets
import select
import subprocess
import sys
import time

import msgpack
import zmq

# ---------------------------------------------------------------------------
# The wire format (docs/protocol.md)
# ---------------------------------------------------------------------------

VERSION = 0x01                   # section 2
LARGE_PAYLOAD = 8192             # section 2: payloads this size or larger go in frame 2
MAX_TOPIC = 255                  # section 6
MAX_KEY = 1024
MAX_HEADER = 64 * 1024
MAX_USER_HEADERS = 64
MAX_FRAME = 64 * 1024 * 1024     # section 13: ZMQ_MAXMSGSIZE on every socket

REASONS = ("frame_count", "too_large", "bad_topic", "unknown_version",
           "bad_header", "bad_msgpack", "depth_exceeded")  # section 12

SUBSCRIBER_MARKER = b"\xffpostbox.subscriber."          # section 10.3


class ProtocolError(Exception):
    """Received bytes that do not follow the protocol; .reason is from REASONS."""

    def __init__(self, reason, detail):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class IdGenerator:
    """Message ids, section 7: 48-bit Unix ms, version 7, 12-bit counter,
    variant 10, 62-bit tail that starts random and goes up by one per id."""

    def __init__(self):
        self.last_ms = 0
        self.counter = 0
        self.tail = secrets.randbits(62)

    def next(self, unix_ms):
        if unix_ms > self.last_ms:
            self.last_ms = unix_ms
            self.counter = 0
        else:
            self.counter += 1
            if self.counter > 0xFFF:
                self.counter = 0
                self.last_ms += 1
        self.tail = (self.tail + 1) % (1 << 62)
        return ((self.last_ms & 0xFFFF_FFFF_FFFF).to_bytes(6, "big")
                + bytes([0x70 | ((self.counter >> 8) & 0x0F), self.counter & 0xFF,
                         0x80 | ((self.tail >> 56) & 0x3F)])
                + (self.tail & ((1 << 56) - 1)).to_bytes(7, "big"))


def pack_headers(headers):
    """User headers, an ordered list of (name, value) str pairs, as a msgpack
    map in wire order (section 3/4): nil when there are none."""
    if not headers:
        return msgpack.packb(None)
    n = len(headers)
    out = bytes([0x80 | n]) if n < 16 else b"\xde" + n.to_bytes(2, "big")
    for name, value in headers:
        out += msgpack.packb(name, use_bin_type=True) + msgpack.packb(value, use_bin_type=True)
    return out


def encode(topic, payload, *, id, timestamp_us, origin=0, sequence=0, attempt=0,
           key=None, correlation=None, headers=(), extra=(), frames=None):
    """The frames of one message (section 2), canonical header (section 4).

    `extra` appends header elements after the 8th (section 5); `frames`
    forces the one- or two-frame form (default: by payload size)."""
    assert b"\x00" not in topic and len(topic) <= MAX_TOPIC
    assert len(id) == 16 and (correlation is None or len(correlation) == 16)
    count = 8 + len(extra)
    prefix = bytes([0x90 | count]) if count < 16 else b"\xdc" + count.to_bytes(2, "big")
    fields = b"".join(msgpack.packb(f, use_bin_type=True)
                      for f in (id, timestamp_us, origin, sequence, attempt, key, correlation))
    header = (prefix + fields + pack_headers(list(headers))
              + b"".join(msgpack.packb(e, use_bin_type=True) for e in extra))
    head = topic + b"\x00" + bytes([VERSION]) + header
    if frames is None:
        frames = 2 if len(payload) >= LARGE_PAYLOAD else 1
    return [head + payload] if frames == 1 else [head, payload]


def _uint(value, name, bits=64):
    if type(value) is not int or value < 0 or value >= (1 << bits):
        raise ProtocolError("bad_header", f"{name} is {value!r}, not an unsigned {bits}-bit integer")
    return value


def _id16(value, name):
    if not isinstance(value, bytes) or len(value) != 16:
        raise ProtocolError("bad_header", f"{name} is {value!r}, not 16 bytes of bin")
    return value


def decode(frames):
    """A dict of the message's fields from its 1 or 2 frames (section 12)."""
    if len(frames) not in (1, 2):
        raise ProtocolError("frame_count", f"{len(frames)} frames")
    first = frames[0]
    nul = first.find(b"\x00", 0, MAX_TOPIC + 1)
    if nul < 0:
        raise ProtocolError("too_large" if len(first) > MAX_TOPIC else "bad_topic", "no 0x00")
    if nul + 1 == len(first):
        raise ProtocolError("bad_msgpack", "no version byte")
    if first[nul + 1] != VERSION:
        raise ProtocolError("unknown_version", f"version {first[nul + 1]}")
    start = nul + 2
    window = first[start:start + MAX_HEADER]
    unpacker = msgpack.Unpacker(raw=False, use_list=True, object_pairs_hook=list,
                                max_buffer_size=MAX_HEADER, max_str_len=MAX_HEADER,
                                max_bin_len=MAX_HEADER, max_array_len=MAX_HEADER,
                                max_map_len=MAX_HEADER)
    unpacker.feed(window)
    try:
        header = unpacker.unpack()
    except msgpack.OutOfData:
        raise ProtocolError("too_large" if len(first) - start > MAX_HEADER else "bad_msgpack",
                            "header ends early") from None
    except (ValueError, msgpack.UnpackException) as e:
        raise ProtocolError("bad_msgpack", str(e)) from None
    end = start + unpacker.tell()
    if not isinstance(header, list) or len(header) < 8:
        raise ProtocolError("bad_header", f"header is {header!r}, not an array of 8 or more")
    id_, ts, origin, sequence, attempt, key, correlation, headers = header[:8]
    m = {
        "topic": first[:nul],
        "id": _id16(id_, "id"),
        "timestamp_us": _uint(ts, "timestamp_us"),
        "origin": _uint(origin, "origin"),
        "sequence": _uint(sequence, "sequence"),
        "attempt": _uint(attempt, "attempt", 32),
        "key": None,
        "correlation": None if correlation is None else _id16(correlation, "correlation"),
        "headers": [],
        "headers_field_nil": headers is None,
        "extra": header[8:],
    }
    if key is not None:
        if not isinstance(key, str):
            raise ProtocolError("bad_header", f"key is {key!r}, not str")
        m["key"] = key.encode()
        if len(m["key"]) > MAX_KEY:
            raise ProtocolError("too_large", f"key of {len(m['key'])} bytes")
    if headers is not None:
        if not isinstance(headers, list):
            raise ProtocolError("bad_header", f"headers is {headers!r}, not a map")
        if len(headers) > MAX_USER_HEADERS:
            raise ProtocolError("too_large", f"{len(headers)} user headers")
        for name, value in headers:
            if not isinstance(name, str) or not isinstance(value, str):
                raise ProtocolError("bad_header", f"header {name!r}: {value!r} is not str: str")
            m["headers"].append((name.encode(), value.encode()))
    if len(frames) == 2:
        if end != len(first):
            raise ProtocolError("bad_header", "bytes after the header in a two-frame message")
        m["payload"] = frames[1]
    else:
        m["payload"] = first[end:]
    return m


def id_layout_ok(id_):
    """Section 7: version nibble 7 in byte 6, variant bits 10 in byte 8."""
    return len(id_) == 16 and id_[6] >> 4 == 0x7 and id_[8] >> 6 == 0b10


def id_unix_ms(id_):
    return int.from_bytes(id_[:6], "big")


# ---------------------------------------------------------------------------
# Test plumbing
# ---------------------------------------------------------------------------

TIMEOUT = 10.0  # seconds, for every single wait


class Failure(Exception):
    pass


def check(condition, message):
    if not condition:
        raise Failure(message)


def check_equal(got, expected, what):
    if got != expected:
        g, e = repr(got), repr(expected)
        if len(g) > 300:
            g = g[:300] + "..."
        if len(e) > 300:
            e = e[:300] + "..."
        raise Failure(f"{what}: got {g}, expected {e}")


class Peer:
    """The C++ peer program as a child process, its stdout read line by line
    with a deadline. Killed when closed if still running."""

    def __init__(self, path, *args):
        self.argv = [path, *map(str, args)]
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, bufsize=0)
        self.buffer = b""

    def read_line(self, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Failure(f"peer {self.argv[1]} printed no line within {timeout:.0f} s")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    raise Failure(f"peer {self.argv[1]} exited (status {self.proc.wait()}) "
                                  f"before printing a line; partial output {self.buffer[:200]!r}")
                self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode()

    def read_ready(self):
        line = self.read_line()
        check(line.startswith("READY "), f"peer's first line is {line!r}, not READY <endpoint>")
        return line[len("READY "):]

    def read_json(self):
        line = self.read_line()
        try:
            return json.loads(line)
        except ValueError:
            raise Failure(f"peer printed {line[:200]!r}, not a JSON line") from None

    def wait(self, timeout=TIMEOUT):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise Failure(f"peer {self.argv[1]} did not exit within {timeout:.0f} s") from None

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()


def new_socket(ctx, kind):
    s = ctx.socket(kind)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME)  # section 15: on every socket facing the network
    s.setsockopt(zmq.SNDTIMEO, int(TIMEOUT * 1000))
    s.setsockopt(zmq.RCVTIMEO, int(TIMEOUT * 1000))
    return s


def receive_frames(sock, timeout=TIMEOUT):
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    if not poller.poll(timeout * 1000):
        raise Failure(f"nothing received within {timeout:.0f} s")
    return sock.recv_multipart()


def send_frames(sock, frames, what):
    try:
        sock.send_multipart(frames)
    except zmq.Again:
        raise Failure(f"could not send {what} within {TIMEOUT:.0f} s (peer not connected?)") \
            from None


def now_us():
    return time.time_ns() // 1000


def check_peer_line(line, sent, what):
    """The peer's JSON line (peer_main.cpp print_message) against the fields
    we sent."""
    expected = {
        "topic": sent["topic"].hex(),
        "payload": sent["payload"].hex(),
        "id": sent["id"].hex(),
        "timestamp_us": sent["timestamp_us"],
        "origin": sent.get("origin", 0),
        "sequence": sent.get("sequence", 0),
        "attempt": sent.get("attempt", 0),
        "key": None if sent.get("key") is None else sent["key"].encode().hex(),
        "correlation": None if sent.get("correlation") is None else sent["correlation"].hex(),
        "headers": [[n.encode().hex(), v.encode().hex()] for n, v in sent.get("headers", [])],
    }
    check("done" not in line, f"{what}: peer finished early: {line}")
    for field, value in expected.items():
        check_equal(line.get(field), value, f"{what}: field {field}")


# ---------------------------------------------------------------------------
# Scenarios
# ---------------------------------------------------------------------------

# docs/protocol.md, section 14, copied as printed.
VECTOR_1 = """
6a 6f 62 73 00 01 98 c4 10 01 8b cf e5 68 00 70
00 80 11 22 33 44 55 66 77 cf 00 06 0a 24 18 1e
40 00 00 00 00 c0 c0 c0
"""
VECTOR_2 = """
6f 72 64 65 72 73 2e 65 75 2e 63 72 65 61 74 65
64 00 01 98 c4 10 01 8b cf e5 6b e8 70 00 80 11
22 33 44 55 66 78 cf 00 06 0a 24 18 2d 82 40 00
00 03 ab 63 75 73 74 6f 6d 65 72 2d 34 32 c4 10
01 8b cf e5 69 f4 70 05 9a bc de f0 12 34 56 78
82 a5 74 72 61 63 65 a6 61 62 63 31 32 33 ac 63
6f 6e 74 65 6e 74 2d 74 79 70 65 aa 74 65 78 74
2f 70 6c 61 69 6e 68 65 6c 6c 6f
"""
VECTOR_3 = """
70 72 69 63 65 73 2e 65 75 72 75 73 64 00 01 98
c4 10 01 8b cf e5 6f d0 70 00 b3 5a 0c 1d 2e 3f
40 51 cf 00 06 0a 24 18 3c c4 80 cf 9e 37 79 b9
7f 4a 7c 15 2a 00 c0 c0 c0 31 2e 30 38 34 32
"""
VECTOR_4_FRAME_1 = """
62 6c 6f 62 73 00 01 98 c4 10 01 8b cf e5 73 b8
70 00 80 11 22 33 44 55 66 79 cf 00 06 0a 24 18
4c 06 c0 00 00 00 a7 76 69 64 65 6f 2d 37 c0 c0
"""
VECTOR_5 = """
6a 6f 62 73 00 01 9a c4 10 01 8b cf e5 68 00 70
00 80 11 22 33 44 55 66 77 cf 00 06 0a 24 18 1e
40 00 00 00 00 c0 c0 c0 91 91 91 07 81 a6 66 75
74 75 72 65 c3 6f 6b
"""


def vector_4_payload():
    return bytes(i % 251 for i in range(20000))


def scenario_vectors(_peer_path):
    """The Python codec reproduces and reads the documented test vectors."""
    h = bytes.fromhex
    id1 = h("018bcfe568007000 8011223344556677".replace(" ", ""))
    v1 = encode(b"jobs", b"", id=id1, timestamp_us=1700000000000000)
    check_equal(v1, [h(VECTOR_1.replace("\n", " ").replace(" ", ""))], "vector 1")

    corr = h("018bcfe569f470059abcdef012345678")
    sent2 = dict(topic=b"orders.eu.created", payload=b"hello",
                 id=h("018bcfe56be870008011223344556678"), timestamp_us=1700000001000000,
                 attempt=3, key="customer-42", correlation=corr,
                 headers=[("trace", "abc123"), ("content-type", "text/plain")])
    v2 = encode(sent2["topic"], sent2["payload"],
                **{k: v for k, v in sent2.items() if k not in ("topic", "payload")})
    check_equal(v2, [h("".join(VECTOR_2.split()))], "vector 2")

    v3 = encode(b"prices.eurusd", b"1.0842", id=h("018bcfe56fd07000b35a0c1d2e3f4051"),
                timestamp_us=1700000002000000, origin=0x9e3779b97f4a7c15, sequence=42)
    check_equal(v3, [h("".join(VECTOR_3.split()))], "vector 3")

    payload4 = vector_4_payload()
    v4 = encode(b"blobs", payload4, id=h("018bcfe573b870008011223344556679"),
                timestamp_us=1700000003000000, key="video-7")
    check_equal(len(v4), 2, "vector 4 frame count")
    check_equal(v4[0], h("".join(VECTOR_4_FRAME_1.split())), "vector 4 frame 1")
    check_equal(v4[1], payload4, "vector 4 frame 2")

    m = decode([h("".join(VECTOR_2.split()))])
    check_equal((m["topic"], m["payload"], m["id"], m["timestamp_us"], m["attempt"], m["key"],
                 m["correlation"], m["headers"]),
                (b"orders.eu.created", b"hello", sent2["id"], 1700000001000000, 3,
                 b"customer-42", corr, [(b"trace", b"abc123"), (b"content-type", b"text/plain")]),
                "vector 2 decoded")
    m = decode([h("".join(VECTOR_5.split()))])
    check_equal((m["topic"], m["id"], m["payload"], m["extra"]),
                (b"jobs", id1, b"ok", [[[[7]]], [("future", True)]]), "vector 5 decoded")
    v6 = bytearray(h("".join(VECTOR_1.split())))
    v6[5] = 0x02
    try:
        decode([bytes(v6)])
        raise Failure("vector 6 (version 2) decoded")
    except ProtocolError as e:
        check_equal(e.reason, "unknown_version", "vector 6")


def garbage_messages(ids):
    """Invalid messages and the reason docs/protocol.md section 12 gives each."""
    def head(topic=b"jobs", version=VERSION):
        return topic + b"\x00" + bytes([version])

    def fields(**over):
        f = [ids.next(now_us() // 1000), now_us(), 0, 0, 0, None, None, None]
        for i, name in enumerate(("id", "ts", "origin", "sequence", "attempt", "key",
                                  "correlation", "headers")):
            if name in over:
                f[i] = over[name]
        return f

    def packed(array):
        return msgpack.packb(array, use_bin_type=True)

    nested_9 = []
    for _ in range(8):
        nested_9 = [nested_9]  # 9 arrays deep, counting the outermost
    valid = encode(b"jobs", b"", id=ids.next(now_us() // 1000), timestamp_us=now_us())[0]
    return [
        ("an empty frame", [b""], "bad_topic"),
        ("a frame without 0x00", [b"no terminator here"], "bad_topic"),
        ("300 bytes without 0x00", [b"x" * 300], "too_large"),
        ("no version byte", [b"jobs\x00"], "bad_msgpack"),
        ("version 2", [head(version=2) + packed(fields())], "unknown_version"),
        ("7 header elements", [head() + packed(fields()[:7])], "bad_header"),
        ("a negative attempt", [head() + packed(fields(attempt=-1))], "bad_header"),
        ("a truncated header", [valid[:-3]], "bad_msgpack"),
        ("a key of 1025 bytes", [head() + packed(fields(key="k" * 1025))], "too_large"),
        ("65 user headers",
         [head() + packed(fields(headers={f"h{i}": "v" for i in range(65)}))], "too_large"),
        ("a trailing element 9 deep", [head() + packed(fields() + [nested_9])],
         "depth_exceeded"),
        ("bytes after the header in a two-frame message", [valid + b"x", b"payload"],
         "bad_header"),
        ("three frames", [valid, b"a", b"b"], "frame_count"),
    ]


def scenario_push_to_cpp(peer_path):
    """(a) Python PUSH binds; the C++ `recv` peer connects and reports every
    field of what Python encoded, and counts the garbage sent first."""
    ids = IdGenerator()
    big = bytes((i * 7 + 3) % 256 for i in range(20000))
    ts = now_us()
    sent = [
        dict(topic=b"orders.eu.created", payload=b"small one-frame payload", attempt=3,
             key="customer-1", headers=[("trace", "t-1"), ("content-type", "text/plain")]),
        dict(topic=b"media.uploaded", payload=big, attempt=5, key="video-7",
             correlation=ids.next(ts // 1000), headers=[("codec", "h264"), ("part", "1/1")]),
        dict(topic=b"", payload=b"the empty topic"),
        dict(topic=b"t" * 255, payload=b"\x00\xff" * 10, key="k" * 1024,
             origin=(1 << 64) - 1, sequence=(1 << 64) - 1, attempt=(1 << 32) - 1,
             timestamp_us=(1 << 64) - 1),
        dict(topic=b"z\xc3\xbcrich.\xd0\xba", payload=b"utf-8", key="",
             headers=[("dup", "1"), ("dup", "2"), ("\u00e9t\u00e9", "\u2603")]),
        dict(topic=b"forms.small-in-two-frames", payload=b"abc", frames=2),
        dict(topic=b"forms.empty-second-frame", payload=b"", frames=2),
        dict(topic=b"forms.large-in-one-frame", payload=big[:10000], frames=1),
        dict(topic=b"future.header", payload=b"ok", extra=[[[[7]]], {"future": True}]),
        dict(topic=b"many.headers", payload=b"x",
             headers=[(f"h{i:02d}", "v" * i) for i in range(MAX_USER_HEADERS)]),
    ]
    for s in sent:
        s.setdefault("id", ids.next(ts // 1000))
        s.setdefault("timestamp_us", ts)
    garbage = garbage_messages(ids)

    ctx = zmq.Context()
    push = new_socket(ctx, zmq.PUSH)
    peer = None
    try:
        push.bind("tcp://127.0.0.1:*")
        endpoint = push.getsockopt_string(zmq.LAST_ENDPOINT)
        peer = Peer(peer_path, "recv", ">" + endpoint, len(sent), int(TIMEOUT * 1000))
        peer.read_ready()
        # A bound PUSH has no peer until the C++ side connects: the first send
        # blocks until then (SNDTIMEO bounds the wait).
        for what, frames, _ in garbage:
            send_frames(push, frames, what)
        for i, s in enumerate(sent):
            options = {k: v for k, v in s.items() if k not in ("topic", "payload")}
            frames = encode(s["topic"], s["payload"], **options)
            if len(s["payload"]) >= LARGE_PAYLOAD and "frames" not in s:
                check_equal(len(frames), 2, f"message {i}: frames for a large payload")
            send_frames(push, frames, f"message {i}")
        for i, s in enumerate(sent):
            check_peer_line(peer.read_json(), s, f"message {i} ({s['topic'][:30]!r})")
        done = peer.read_json()
        check(done.get("done") is True, f"expected the done line, got {done}")
        check_equal(done["received"], len(sent), "peer's received count")
        expected = {r: 0 for r in REASONS}
        for _, _, reason in garbage:
            expected[reason] += 1
        check_equal(done["rejected"], expected, "peer's rejected counts by reason")
        check_equal(peer.wait(), 0, "peer exit status")
    finally:
        if peer:
            peer.close()
        push.close()
        ctx.term()


TOPICS = ("orders.eu.created", "orders.us.created", "orders.eu.cancelled", "billing.invoice")


def make(i):
    """What peer_main.cpp's make(i) documents for message i of a test stream."""
    return {
        "topic": TOPICS[i % 4].encode(),
        "payload": f"payload-{i}".encode(),
        "key": f"customer-{i % 5}".encode() if i % 2 == 0 else None,
        "headers": [(b"trace", f"t{i}".encode())] if i % 3 == 0 else [],
        "attempt": i % 2,
    }


def check_stream_message(m, i, what):
    expected = make(i)
    for field in ("topic", "payload", "key", "headers", "attempt"):
        check_equal(m[field], expected[field], f"{what}: {field}")
    # Canonical encoding (section 4): no headers is nil, not an empty map.
    check_equal(m["headers_field_nil"], not expected["headers"], f"{what}: headers nil")
    check_equal(m["correlation"], None, f"{what}: correlation")
    check_equal(m["extra"], [], f"{what}: trailing header elements")
    check(id_layout_ok(m["id"]), f"{what}: id {m['id'].hex()} lacks the UUIDv7 layout")
    check(abs(m["timestamp_us"] - now_us()) < 300 * 1_000_000,
          f"{what}: timestamp_us {m['timestamp_us']} is not near now")
    check(abs(id_unix_ms(m["id"]) - m["timestamp_us"] // 1000) < 1000,
          f"{what}: id time {id_unix_ms(m['id'])} far from timestamp_us {m['timestamp_us']}")


def scenario_cpp_to_pull(peer_path):
    """(b) The C++ `send` peer connects to a Python PULL; Python decodes every
    field and checks it against make(i), and that the bytes are canonical."""
    count = 12
    ctx = zmq.Context()
    pull = new_socket(ctx, zmq.PULL)
    peer = None
    try:
        pull.bind("tcp://127.0.0.1:*")
        endpoint = pull.getsockopt_string(zmq.LAST_ENDPOINT)
        peer = Peer(peer_path, "send", ">" + endpoint, count)
        peer.read_ready()
        previous_id = b""
        for i in range(count):
            frames = receive_frames(pull)
            check_equal(len(frames), 1, f"message {i}: frame count of a small message")
            m = decode(frames)
            what = f"message {i}"
            check_stream_message(m, i, what)
            check_equal((m["origin"], m["sequence"]), (0, 0), f"{what}: origin, sequence")
            check(m["id"] > previous_id, f"{what}: id {m['id'].hex()} not above the previous one")
            previous_id = m["id"]
            again = encode(m["topic"], m["payload"], id=m["id"], timestamp_us=m["timestamp_us"],
                           attempt=m["attempt"],
                           key=None if m["key"] is None else m["key"].decode(),
                           headers=[(n.decode(), v.decode()) for n, v in m["headers"]])
            check_equal(again, frames, f"{what}: re-encoded bytes (canonical encoding)")
        check_equal(peer.wait(), 0, "peer exit status")
    finally:
        if peer:
            peer.close()
        pull.close()
        ctx.term()


def scenario_sub_from_cpp(peer_path):
    """(c) A Python SUB announces itself with a marker subscription after its
    filters; the C++ `pub` peer, waiting for one subscriber, then publishes.
    Sequence numbers count 1, 2, 3 ... per topic under one origin."""
    count = 40  # the last message, 39, is on billing.invoice: taken by a filter below
    ctx = zmq.Context()
    sub = new_socket(ctx, zmq.SUB)
    peer = None
    try:
        peer = Peer(peer_path, "pub", "tcp://127.0.0.1:*", count, 1)
        endpoint = peer.read_ready()
        check(endpoint.startswith("tcp://127.0.0.1:"), f"pub peer bound {endpoint!r}")
        sub.connect(endpoint)
        # Section 8: a prefix filter, and an exact topic (its 0x00 included).
        sub.setsockopt(zmq.SUBSCRIBE, b"orders.eu.")
        sub.setsockopt(zmq.SUBSCRIBE, b"billing.invoice\x00")
        # Section 10.3: the marker comes after the filters.
        marker = SUBSCRIBER_MARKER + secrets.token_hex(8).encode() + b".1"
        sub.setsockopt(zmq.SUBSCRIBE, marker)

        wanted = [i for i in range(count) if TOPICS[i % 4] != "orders.us.created"]
        origin = None
        last = {}  # (origin, topic) -> last sequence, section 10.2
        gaps = missed = 0
        for i in wanted:
            frames = receive_frames(sub)
            m = decode(frames)
            what = f"published message {i}"
            check(m["topic"] != b"orders.us.created", f"{what}: a topic no filter takes arrived")
            check_stream_message(m, i, what)
            if origin is None:
                origin = m["origin"]
                check(origin != 0, "a publisher's origin is not 0")
            check_equal(m["origin"], origin, f"{what}: origin")
            check_equal(m["sequence"], i // 4 + 1, f"{what}: sequence on {m['topic']!r}")
            stream = (m["origin"], m["topic"])
            if stream in last and m["sequence"] > last[stream] + 1:
                gaps += 1
                missed += m["sequence"] - last[stream] - 1
            last[stream] = m["sequence"]
        check_equal((gaps, missed), (0, 0), "gaps and missed")
        check_equal(sorted(last.values()), [10, 10, 10], "last sequence per topic")
        check_equal(peer.wait(), 0, "peer exit status")
    finally:
        if peer:
            peer.close()
        sub.close()
        ctx.term()


def scenario_request_reply(peer_path):
    """(d) Python DEALER (and REQ) requests to the C++ `reply` peer: the reply
    has the request's topic, payload "reply:<payload>" and correlation = the
    request's id. Malformed requests get no reply and do not stop the peer."""
    ids = IdGenerator()
    requests = [
        ("dealer", b"rpc.echo", b"hello"),
        ("dealer", b"rpc.large", bytes(i % 256 for i in range(20000))),
        ("req", b"rpc.from-req", b"via a REQ socket"),
    ]
    ctx = zmq.Context()
    dealer = new_socket(ctx, zmq.DEALER)
    req = new_socket(ctx, zmq.REQ)
    peer = None
    try:
        peer = Peer(peer_path, "reply", "tcp://127.0.0.1:*", len(requests))
        endpoint = peer.read_ready()
        dealer.connect(endpoint)
        req.connect(endpoint)
        # Refused at the replier (section 11), never answered: no delimiter,
        # and a delimiter followed by garbage.
        no_delimiter = encode(b"rpc.echo", b"x", id=ids.next(now_us() // 1000),
                              timestamp_us=now_us())
        send_frames(dealer, no_delimiter, "a request without the empty delimiter")
        send_frames(dealer, [b"", b"garbage"], "a garbage request")
        for kind, topic, payload in requests:
            request_id = ids.next(now_us() // 1000)
            frames = encode(topic, payload, id=request_id, timestamp_us=now_us(),
                            key="k1", headers=[("h", "v")])
            what = f"{kind} request on {topic!r}"
            if kind == "dealer":
                send_frames(dealer, [b""] + frames, what)
                reply = receive_frames(dealer)
                check_equal(reply[0], b"", f"{what}: the reply's first frame (delimiter)")
                reply = reply[1:]
            else:
                send_frames(req, frames, what)
                reply = receive_frames(req)
            expected_payload = b"reply:" + payload
            check_equal(len(reply), 2 if len(expected_payload) >= LARGE_PAYLOAD else 1,
                        f"{what}: frames of the reply")
            m = decode(reply)
            check_equal(m["topic"], topic, f"{what}: reply topic")
            check_equal(m["payload"], expected_payload, f"{what}: reply payload")
            check_equal(m["correlation"], request_id, f"{what}: reply correlation")
            check(m["id"] != request_id, f"{what}: the reply reuses the request's id")
            check(id_layout_ok(m["id"]), f"{what}: reply id {m['id'].hex()} lacks the layout")
            check_equal((m["origin"], m["sequence"], m["attempt"]), (0, 0, 0),
                        f"{what}: origin, sequence, attempt")
        check_equal(peer.wait(), 0, "peer exit status")
    finally:
        if peer:
            peer.close()
        dealer.close()
        req.close()
        ctx.term()


SCENARIOS = [
    ("the Python codec reproduces docs/protocol.md's test vectors", scenario_vectors),
    ("(a) Python PUSH -> C++ receiver: every field, both frame forms, garbage counted",
     scenario_push_to_cpp),
    ("(b) C++ sender -> Python PULL: every field of make(i), canonical bytes",
     scenario_cpp_to_pull),
    ("(c) C++ publisher -> Python SUB with a marker: sequences 1, 2, 3 per topic",
     scenario_sub_from_cpp),
    ("(d) Python DEALER/REQ -> C++ replier: correlation and reply payload",
     scenario_request_reply),
]


def main(argv):
    if len(argv) != 2:
        print(f"usage: {argv[0]} PATH_TO_postbox_test_peer", file=sys.stderr)
        return 2
    peer_path = os.path.abspath(argv[1])
    if not os.access(peer_path, os.X_OK):
        print(f"interop: {peer_path} is not an executable", file=sys.stderr)
        return 2
    passed = failed = 0
    for name, scenario in SCENARIOS:
        try:
            scenario(peer_path)
        except (Failure, ProtocolError) as e:
            failed += 1
            print(f"FAIL {name}\n     {e}", flush=True)
        else:
            passed += 1
            print(f"ok   {name}", flush=True)
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
