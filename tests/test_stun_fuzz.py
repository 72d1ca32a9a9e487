"""Fuzzing the STUN decoder: every input either decodes to a Message or
raises StunDecodeError, nothing else.  Plus targeted malformed datagrams."""

from __future__ import annotations

import collections
import random
import re
import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from natsalon.stun import (
    MAGIC_COOKIE,
    Address,
    Attr,
    Class,
    ErrorCode,
    Message,
    Method,
    StunDecodeError,
    decode,
    encode,
    verify_integrity,
)
from natsalon.stun.attributes import CODECS

COOKIE = MAGIC_COOKIE.to_bytes(4, "big")
TXID = bytes.fromhex("0102030405060708090a0b0c")
COMPUTED = (Attr.MESSAGE_INTEGRITY, Attr.MESSAGE_INTEGRITY_SHA256, Attr.FINGERPRINT)
SEED = 0x5EED


def check(data: bytes):
    """Decode ``data``; return the Message or the StunDecodeError.  Any other
    exception propagates and fails the test."""
    try:
        m = decode(data)
    except StunDecodeError as e:
        assert isinstance(e.reason, str) and e.reason
        assert str(e) == e.reason
        assert e.header is None or (len(e.header) == 4 and isinstance(e.header[2], bytes))
        return e
    assert isinstance(m, Message)
    assert m.raw == bytes(data)
    assert isinstance(verify_integrity(m, b"key"), bool)
    # a decoded message can always be encoded again, to the same content
    again = decode(encode(m))
    assert again.attributes == tuple(a for a in m.attributes if a[0] not in COMPUTED)
    assert again.unknown_required == m.unknown_required
    assert (again.method, again.cls, again.transaction_id, again.classic) == (
        m.method, m.cls, m.transaction_id, m.classic,
    )
    return m


def raw_message(attrs, mtype=0x0001, txid=TXID, cookie=True, length=None):
    """Hand-built datagram; ``attrs`` are (type, value) or (type, value, declared_len)."""
    body = b""
    for a in attrs:
        t, v = a[0], a[1]
        declared = a[2] if len(a) > 2 else len(v)
        body += struct.pack("!HH", t, declared) + v + bytes(-len(v) % 4)
    head = struct.pack("!HH", mtype, len(body) if length is None else length)
    return head + (COOKIE if cookie else b"") + txid + body


def with_fingerprint(data: bytes) -> bytes:
    """Append a correct FINGERPRINT (CRC over everything before its header)."""
    head = data[:2] + struct.pack("!H", len(data) - 20 + 8) + data[4:20]
    crc = (zlib.crc32(head + data[20:]) ^ 0x5354554E) & 0xFFFFFFFF
    return head + data[20:] + b"\x80\x28\x00\x04" + struct.pack("!I", crc)


# ------------------------------------------------------------ seed messages


def _seeds():
    tx16 = bytes(range(16, 32))
    msgs = [
        (Message(Method.BINDING, Class.REQUEST, TXID), {}),
        (Message(Method.BINDING, Class.REQUEST, TXID, (
            (Attr.SOFTWARE, "STUN test client"), (Attr.PRIORITY, 0x6E0001FF),
            (Attr.ICE_CONTROLLED, bytes(8)), (Attr.USERNAME, "evtj:h6vY"),
        )), dict(integrity_key=b"VOkJxbRl1RmTxUk/WvJxBt", fingerprint=True, pad=b" ")),
        (Message(Method.BINDING, Class.SUCCESS, TXID, (
            (Attr.SOFTWARE, "test vector"), (Attr.XOR_MAPPED_ADDRESS, Address("192.0.2.1", 32853)),
            (Attr.MAPPED_ADDRESS, Address("192.0.2.1", 32853)),
            (Attr.RESPONSE_ORIGIN, Address("198.51.100.1", 3478)),
            (Attr.OTHER_ADDRESS, Address("198.51.100.2", 3479)),
        )), dict(integrity_key=b"k", fingerprint=True)),
        (Message(Method.BINDING, Class.SUCCESS, TXID, (
            (Attr.XOR_MAPPED_ADDRESS, Address("2001:db8:1234:5678:11:2233:4455:6677", 32853)),
            (Attr.OTHER_ADDRESS, Address("2001:db8::2", 3479)),
        )), dict(sha256_key=b"k256", fingerprint=True)),
        (Message(Method.BINDING, Class.ERROR, TXID, (
            (Attr.ERROR_CODE, ErrorCode(420, "Unknown Attribute")),
            (Attr.UNKNOWN_ATTRIBUTES, (0x7F01, 0x0031, 0x0002)),
        )), dict(integrity_key=b"k", sha256_key=b"k2", fingerprint=True)),
        (Message(Method.BINDING, Class.REQUEST, TXID, (
            (Attr.CHANGE_REQUEST, 6), (Attr.RESPONSE_PORT, 40000), (Attr.PADDING, bytes(37)),
            (Attr.REALM, "example.org"), (Attr.NONCE, "f//499k954d6OL34oL9FSTvy64sA"),
        )), dict(integrity_key=b"k")),
        (Message(Method.JOIN, Class.INDICATION, TXID, (
            (Attr.NS_ROOM, bytes(16)), (Attr.NS_ROLE, 1), (Attr.NS_PEER, b"peer"),
            (0xC0FF, b"opt"), (0x7ABC, b"req"),
        )), dict(fingerprint=True)),
        (Message(Method.BINDING, Class.SUCCESS, tx16, (
            (Attr.MAPPED_ADDRESS, Address("192.0.2.1", 32853)),
            (Attr.SOURCE_ADDRESS, Address("192.0.2.9", 3478)),
            (Attr.CHANGED_ADDRESS, Address("192.0.2.10", 3479)),
        ), classic=True), {}),
        (Message(Method.BINDING, Class.REQUEST, tx16, ((Attr.CHANGE_REQUEST, 4),), classic=True), {}),
    ]
    return [encode(m, **kw) for m, kw in msgs]


SEEDS = _seeds()


def _tlv_offsets(data: bytes):
    """Offsets of the attribute headers of a well-formed message."""
    out, pos = [], 20
    while pos + 4 <= len(data):
        out.append(pos)
        alen = struct.unpack_from("!H", data, pos + 2)[0]
        pos += 4 + alen + (-alen % 4)
    return out


def _fix_length(data: bytes) -> bytes:
    if len(data) < 4:
        return data
    return data[:2] + struct.pack("!H", max(0, len(data) - 20) & 0xFFFF) + data[4:]


def mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    if len(b) < 20:  # already cut short by an earlier mutation
        if b and rng.random() < 0.5:
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        else:
            b += bytes(rng.randrange(256) for _ in range(rng.randint(1, 24)))
        return bytes(b)
    op = rng.randrange(14)
    offsets = _tlv_offsets(data)
    if op == 0:  # bit flips
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    elif op == 1:  # random bytes
        for _ in range(rng.randint(1, 3)):
            b[rng.randrange(len(b))] = rng.randrange(256)
    elif op == 2:  # truncation, length field left or fixed
        b = b[: rng.randrange(len(b))]
        if rng.random() < 0.5:
            b = bytearray(_fix_length(bytes(b)))
    elif op == 3:  # extension, length field left or fixed
        b += bytes(rng.randrange(256) for _ in range(rng.randint(1, 40)))
        if rng.random() < 0.5:
            b = bytearray(_fix_length(bytes(b)))
    elif op == 4:  # length field
        b[2:4] = struct.pack("!H", rng.choice([0, 1, 2, 4, len(b) - 16, len(b) - 24, rng.randrange(65536)]) & 0xFFFF)
    elif op == 5 and offsets:  # attribute length
        at = rng.choice(offsets)
        old = struct.unpack_from("!H", b, at + 2)[0]
        new = rng.choice([0, old + 1, old - 1, old + 4, old - 4, old + 3, rng.randrange(65536)])
        b[at + 2:at + 4] = struct.pack("!H", new & 0xFFFF)
    elif op == 6 and offsets:  # attribute type -> another known or random type
        at = rng.choice(offsets)
        new = rng.choice(sorted(CODECS) + [rng.randrange(65536)])
        b[at:at + 2] = struct.pack("!H", new)
    elif op == 7:  # an attribute appended (after FINGERPRINT / MI if present)
        t = rng.choice(sorted(CODECS) + [rng.randrange(65536)])
        v = bytes(rng.randrange(256) for _ in range(rng.choice([0, 4, 8, 12, 20, rng.randrange(30)])))
        b += struct.pack("!HH", t, len(v)) + v + bytes(-len(v) % 4)
        b = bytearray(_fix_length(bytes(b)))
    elif op == 8 and offsets:  # delete an attribute
        i = rng.randrange(len(offsets))
        end = offsets[i + 1] if i + 1 < len(offsets) else len(b)
        del b[offsets[i]:end]
        b = bytearray(_fix_length(bytes(b)))
    elif op == 9 and len(offsets) > 1:  # duplicate an attribute somewhere else
        i = rng.randrange(len(offsets))
        end = offsets[i + 1] if i + 1 < len(offsets) else len(b)
        chunk = bytes(b[offsets[i]:end])
        b[rng.choice(offsets):rng.choice(offsets)] = chunk  # may also drop a span
        b = bytearray(_fix_length(bytes(b)))
    elif op == 10:  # header bits: leading bits, cookie, type
        field = rng.randrange(3)
        if field == 0:
            b[0] |= rng.choice([0x40, 0x80, 0xC0])
        elif field == 1:
            b[4 + rng.randrange(4)] ^= 1 << rng.randrange(8)
        else:
            b[0:2] = struct.pack("!H", rng.randrange(0x4000))
    elif op == 11 and offsets:  # address family / reserved byte of an attribute value
        at = rng.choice(offsets)
        if at + 6 <= len(b):
            b[at + 4 + rng.randrange(2)] = rng.choice([0, 1, 2, 3, 0xFF])
    elif op == 12:  # random tail of random TLVs, length fixed
        b = b[:20]
        for _ in range(rng.randint(0, 6)):
            t = rng.choice(sorted(CODECS) + [rng.randrange(65536)])
            n = rng.randrange(40)
            b += struct.pack("!HH", t, n) + bytes(rng.randrange(256) for _ in range(n)) + bytes(-n % 4)
        b = bytearray(_fix_length(bytes(b)))
    else:  # valid FINGERPRINT over a corrupted body, so later checks are reached
        i = rng.randrange(20, max(21, len(b)))
        if i < len(b):
            b[i] ^= 0xFF
        if data[-8:-4] == b"\x80\x28\x00\x04":
            b = bytearray(with_fingerprint(bytes(b[:-8])))
    return bytes(b)


# ------------------------------------------------------------ the fuzzing


def test_seeds_decode():
    for s in SEEDS:
        assert isinstance(check(s), Message)


def test_random_datagrams():
    rng = random.Random(SEED)
    outcomes = collections.Counter()
    for i in range(4000):
        n = rng.randrange(601)
        data = bytes(rng.randrange(256) for _ in range(n))
        if i % 2 and n >= 20:
            # a plausible header so the attribute walk is reached
            n -= n % 4
            data = struct.pack("!HH", rng.randrange(0x4000), n - 20) + (
                COOKIE if i % 4 == 1 else data[4:8]
            ) + data[8:n]
        outcomes[type(check(data)).__name__] += 1
    assert outcomes["StunDecodeError"] > 2000
    assert outcomes["Message"] > 10  # the plausible-header half does decode sometimes


def test_mutated_messages():
    rng = random.Random(SEED + 1)
    outcomes = collections.Counter()
    reasons = set()
    for i in range(12000):
        data = SEEDS[i % len(SEEDS)]
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            data = mutate(rng, data)
        r = check(data)
        outcomes[type(r).__name__] += 1
        if isinstance(r, StunDecodeError):
            reasons.add(re.sub(r"0x[0-9a-f]+|[0-9]+", "#", r.reason))
    assert outcomes["Message"] > 1000 and outcomes["StunDecodeError"] > 1000
    assert len(reasons) > 15  # the mutations reach many different checks


def test_random_attribute_soup():
    """Valid framing, random attribute types and values of plausible sizes."""
    rng = random.Random(SEED + 2)
    types = sorted(CODECS)
    outcomes = collections.Counter()
    for i in range(6000):
        attrs = []
        for _ in range(rng.randint(1, 5)):
            t = rng.choice(types) if rng.random() < 0.8 else rng.randrange(65536)
            n = rng.choice([0, 1, 2, 3, 4, 8, 12, 16, 20, 24, 32, rng.randrange(64)])
            v = bytearray(rng.randrange(256) for _ in range(n))
            if n >= 2 and rng.random() < 0.5:
                v[0], v[1] = 0, rng.choice([1, 2])
            attrs.append((t, bytes(v)))
        data = raw_message(attrs, cookie=i % 3 != 0, txid=TXID if i % 3 else bytes(16))
        if rng.random() < 0.3:
            data = with_fingerprint(data)
        outcomes[type(check(data)).__name__] += 1
    assert outcomes["Message"] > 500 and outcomes["StunDecodeError"] > 500


@given(st.binary(max_size=600))
@settings(max_examples=1500, deadline=None)
def test_hypothesis_arbitrary_bytes(data):
    check(data)


@given(st.sampled_from(SEEDS), st.data())
@settings(max_examples=1500, deadline=None)
def test_hypothesis_mutations(seed, data):
    b = bytearray(seed)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(b) - 1))
        b[i] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        b = bytearray(_fix_length(bytes(b[: data.draw(st.integers(0, len(b)))])))
    check(bytes(b))


def test_decode_accepts_bytearray_and_memoryview():
    for s in SEEDS[:3]:
        assert decode(bytearray(s)) == decode(s)
        assert decode(memoryview(s)) == decode(s)


# -------------------------------------------------------- targeted negatives

HEADER = (Method.BINDING, Class.REQUEST, TXID, False)


def reject(data: bytes, pattern: str, header=HEADER):
    with pytest.raises(StunDecodeError, match=pattern) as exc:
        decode(data)
    assert exc.value.header == header
    return exc.value


@pytest.mark.parametrize("n", [0, 1, 4, 19])
def test_short_header(n):
    reject(raw_message([])[:n], "shorter than a STUN header", None)


@pytest.mark.parametrize("top", [0x40, 0x80, 0xC0])
def test_nonzero_leading_bits(top):
    data = bytearray(raw_message([]))
    data[0] |= top
    reject(bytes(data), "first two bits", None)


@pytest.mark.parametrize("extra", [1, 2, 3, 5])
def test_length_not_multiple_of_four(extra):
    data = raw_message([(Attr.SOFTWARE, b"abcd")]) + bytes(extra)
    data = _fix_length(data)
    reject(data, "not a multiple of 4", None)


@pytest.mark.parametrize("delta", [-8, -4, 4, 8])
def test_length_mismatch(delta):
    good = raw_message([(Attr.SOFTWARE, b"abcdefgh")])
    data = good[:2] + struct.pack("!H", len(good) - 20 + delta) + good[4:]
    reject(data, "length field", None)
    # and a datagram longer or shorter than the (valid-looking) length field
    reject(good + bytes(4), "length field", None)
    reject(good[:-4], "length field", None)


def test_truncated_attribute():
    # SOFTWARE says 12 bytes but the message ends after 4
    data = raw_message([(Attr.SOFTWARE, b"abcd", 12)])
    reject(data, "0x8022 of length 12 overruns")


@pytest.mark.parametrize("declared", [5, 6, 7, 100, 0xFFFF])
def test_attribute_overrunning(declared):
    # the padded value (declared rounded up to 4) must fit: 4 bytes are there
    data = raw_message([(Attr.USERNAME, b"abcd", declared)])
    reject(data, "overruns")


def test_attribute_overrunning_into_next():
    data = raw_message([(Attr.USERNAME, b"abcd", 13), (Attr.SOFTWARE, b"xyz")])
    # 13 bytes padded to 16 swallow the SOFTWARE attribute and overrun the end
    reject(data, "overruns")


@pytest.mark.parametrize("family", [0, 3, 4, 0xFF])
def test_bad_address_family(family):
    v = bytes([0, family]) + b"\x12\x34" + bytes(4)
    reject(raw_message([(Attr.MAPPED_ADDRESS, v)]), "0x0001: unknown address family 0x%02x" % family)
    reject(raw_message([(Attr.XOR_MAPPED_ADDRESS, v)]), "unknown address family")


@pytest.mark.parametrize("size", [0, 2, 3, 5, 8, 16])
def test_ipv4_address_of_wrong_length(size):
    v = b"\x00\x01\x12\x34" + bytes(size)
    reject(raw_message([(Attr.XOR_MAPPED_ADDRESS, v)]), "IPv4 address of %d bytes" % size)


@pytest.mark.parametrize("size", [0, 4, 12, 20])
def test_ipv6_address_of_wrong_length(size):
    v = b"\x00\x02\x12\x34" + bytes(size)
    reject(raw_message([(Attr.OTHER_ADDRESS, v)]), "IPv6 address of %d bytes" % size)


@pytest.mark.parametrize("size", [0, 1, 3])
def test_address_attribute_too_short(size):
    reject(raw_message([(Attr.MAPPED_ADDRESS, b"\x00\x01\x00"[:size])]), "address attribute of %d bytes" % size)


def test_xor_ipv6_in_classic_message():
    tx16 = bytes(range(16))
    data = raw_message([(Attr.XOR_MAPPED_ADDRESS, b"\x00\x02\x12\x34" + bytes(16))], txid=tx16, cookie=False)
    reject(data, "without magic cookie", (Method.BINDING, Class.REQUEST, tx16, True))


def test_bad_fingerprint():
    good = with_fingerprint(raw_message([(Attr.SOFTWARE, b"abc")]))
    assert decode(good).get(Attr.FINGERPRINT) == struct.unpack("!I", good[-4:])[0]
    for i in (len(good) - 1, len(good) - 4):
        bad = bytearray(good)
        bad[i] ^= 0x10
        reject(bytes(bad), "FINGERPRINT mismatch")
    # body changed under a fingerprint
    bad = bytearray(good)
    bad[24] ^= 0x01
    reject(bytes(bad), "FINGERPRINT mismatch")


@pytest.mark.parametrize("size", [0, 2, 8])
def test_fingerprint_of_wrong_size(size):
    reject(raw_message([(Attr.FINGERPRINT, bytes(size))]), "FINGERPRINT of %d bytes" % size)


@pytest.mark.parametrize("after", [Attr.SOFTWARE, Attr.FINGERPRINT, Attr.MESSAGE_INTEGRITY, 0x7777, 0xC123])
def test_attribute_after_fingerprint(after):
    fp = with_fingerprint(raw_message([(Attr.SOFTWARE, b"abc")]))
    extra = struct.pack("!HH", after, 4) + bytes(4)
    data = _fix_length(fp + extra)
    reject(data, "0x%04x after FINGERPRINT" % after)


def test_attribute_after_valid_fingerprint_still_rejected():
    # FINGERPRINT computed over the header with the final length, then more
    base = raw_message([(Attr.SOFTWARE, b"abc")])
    extra = struct.pack("!HH", Attr.SOFTWARE, 4) + b"late"
    head = base[:2] + struct.pack("!H", len(base) - 20 + 8 + len(extra)) + base[4:20]
    crc = (zlib.crc32(head + base[20:]) ^ 0x5354554E) & 0xFFFFFFFF
    reject(head + base[20:] + b"\x80\x28\x00\x04" + struct.pack("!I", crc) + extra, "after FINGERPRINT")


@pytest.mark.parametrize("klass, number", [(0, 0), (1, 0), (2, 0), (7, 0), (3, 100), (4, 255)])
def test_error_code_out_of_range(klass, number):
    v = struct.pack("!HBB", 0, klass, number) + b"Oops"
    reject(raw_message([(Attr.ERROR_CODE, v)], mtype=0x0111), "ERROR-CODE %d.%02d out of range" % (klass, number),
           (Method.BINDING, Class.ERROR, TXID, False))


def test_error_code_too_short_and_bad_reason():
    reject(raw_message([(Attr.ERROR_CODE, b"\x00\x00\x04")]), "ERROR-CODE of 3 bytes")
    reject(raw_message([(Attr.ERROR_CODE, b"\x00\x00\x04\x00\xff\xfe")]), "reason is not UTF-8")


def test_error_code_reserved_bits_ignored():
    # RFC 8489 14.8: the 21 reserved bits are not part of the code
    v = b"\xff\xff\xfc\x14Gone"
    m = decode(raw_message([(Attr.ERROR_CODE, v)], mtype=0x0111))
    assert m.get(Attr.ERROR_CODE) == ErrorCode(420, "Gone")


@pytest.mark.parametrize("attr", [Attr.SOFTWARE, Attr.USERNAME, Attr.REALM, Attr.NONCE])
@pytest.mark.parametrize("value", [b"\xff", b"ab\xc3", b"\xed\xa0\x80", b"\xc0\xaf"])
def test_non_utf8_text(attr, value):
    reject(raw_message([(attr, value)]), "0x%04x: text attribute is not UTF-8" % attr)


@pytest.mark.parametrize("attr, limit", [(Attr.USERNAME, 513), (Attr.SOFTWARE, 763), (Attr.REALM, 763)])
def test_text_over_limit(attr, limit):
    assert decode(raw_message([(attr, b"a" * limit)])).get(attr) == "a" * limit
    reject(raw_message([(attr, b"a" * (limit + 1))]), "limit %d" % limit)


@pytest.mark.parametrize(
    "attr, size, pattern",
    [
        (Attr.MESSAGE_INTEGRITY, 16, "want 20"),
        (Attr.MESSAGE_INTEGRITY, 32, "want 20"),
        (Attr.CHANGE_REQUEST, 2, "32-bit attribute of 2 bytes"),
        (Attr.CHANGE_REQUEST, 8, "32-bit attribute of 8 bytes"),
        (Attr.RESPONSE_PORT, 2, "RESPONSE-PORT of 2 bytes"),
        (Attr.UNKNOWN_ATTRIBUTES, 3, "odd length"),
        (Attr.ICE_CONTROLLING, 4, "want 8"),
        (Attr.USE_CANDIDATE, 4, "want 0"),
        (Attr.NS_ROOM, 12, "want 16"),
    ],
)
def test_fixed_size_attributes(attr, size, pattern):
    reject(raw_message([(attr, bytes(size))]), pattern)


# ------------------------------------------ integrity ordering and unknowns


def test_attributes_after_message_integrity_are_ignored():
    signed = encode(Message(Method.BINDING, Class.REQUEST, TXID, ((Attr.USERNAME, "u"),)), integrity_key=b"k")
    extra = raw_message([
        (Attr.SOFTWARE, b"late"),
        (0x7FFE, b"unknown-required"),
        (Attr.MAPPED_ADDRESS, b"\x00\x07junk"),  # malformed, but ignored
        (Attr.MESSAGE_INTEGRITY, bytes(20)),
    ])[20:]
    m = check(_fix_length(signed + extra))
    assert isinstance(m, Message)
    assert [t for t, _ in m.attributes] == [Attr.USERNAME, Attr.MESSAGE_INTEGRITY]
    assert m.unknown_required == ()
    assert verify_integrity(m, b"k") is True


def test_sha256_and_fingerprint_after_message_integrity_are_kept():
    base = Message(Method.BINDING, Class.REQUEST, TXID, ((Attr.USERNAME, "u"),))
    data = encode(base, integrity_key=b"k", sha256_key=b"s", fingerprint=True)
    m = decode(data)
    assert [t for t, _ in m.attributes] == [
        Attr.USERNAME, Attr.MESSAGE_INTEGRITY, Attr.MESSAGE_INTEGRITY_SHA256, Attr.FINGERPRINT,
    ]
    # but after MESSAGE-INTEGRITY-SHA256 even MESSAGE-INTEGRITY is ignored
    data = encode(base, sha256_key=b"s")
    extra = raw_message([(Attr.MESSAGE_INTEGRITY, bytes(20)), (Attr.SOFTWARE, b"x")])[20:]
    m = decode(with_fingerprint(_fix_length(data + extra)))
    assert [t for t, _ in m.attributes] == [Attr.USERNAME, Attr.MESSAGE_INTEGRITY_SHA256, Attr.FINGERPRINT]
    assert verify_integrity(m, b"s") is True


def test_unknown_comprehension_required_and_optional():
    data = raw_message([
        (0x7F01, b"a"),
        (0xC0FF, b"optional"),
        (0x0031, b""),
        (0x8FFF, b"opt"),
        (Attr.SOFTWARE, b"x"),
        (0x7F01, b"again"),
    ])
    m = decode(data)
    assert m.unknown_required == (0x7F01, 0x0031, 0x7F01)
    assert m.get(0xC0FF) == b"optional"
    assert m.get(0x7F01) == b"a"
    assert m.get(0x8FFF) == b"opt"
    assert m.get(Attr.SOFTWARE) == "x"


def test_known_required_types_are_not_unknown():
    data = raw_message([(Attr.PRIORITY, bytes(4)), (Attr.USE_CANDIDATE, b""), (Attr.RESPONSE_ADDRESS,
                        b"\x00\x01\x00\x01" + bytes(4))])
    assert decode(data).unknown_required == ()


def test_classic_request_detected_without_cookie():
    tx16 = bytes.fromhex("00112233445566778899aabbccddeeff")
    data = raw_message([(Attr.CHANGE_REQUEST, b"\x00\x00\x00\x06")], txid=tx16, cookie=False)
    m = decode(data)
    assert m.classic is True and m.transaction_id == tx16
    assert m.get(Attr.CHANGE_REQUEST) == 6
    # the same bytes with the cookie are a modern message with a 96-bit txid
    modern = decode(raw_message([(Attr.CHANGE_REQUEST, b"\x00\x00\x00\x06")]))
    assert modern.classic is False and modern.transaction_id == TXID


def test_padding_content_is_ignored():
    a = raw_message([(Attr.SOFTWARE, b"abc"), (Attr.USERNAME, b"u")])
    b = bytearray(a)
    b[27] = 0xAA  # SOFTWARE padding byte
    b[33:36] = b"\xff\xff\xff"  # USERNAME padding
    assert decode(bytes(b)) == decode(a)
