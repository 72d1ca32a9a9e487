"""Round-trip property tests for the STUN codec (hypothesis)."""

from __future__ import annotations

import socket

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from natsalon.stun import (
    CHANGE_IP,
    CHANGE_PORT,
    MAGIC_COOKIE,
    Address,
    Attr,
    Class,
    ErrorCode,
    Message,
    StunDecodeError,
    decode,
    encode,
    message_type,
    split_type,
    verify_integrity,
)
from natsalon.stun.attributes import CODECS, AddressErrorCode, Icmp

COOKIE = MAGIC_COOKIE.to_bytes(4, "big")
COMPUTED = (Attr.MESSAGE_INTEGRITY, Attr.MESSAGE_INTEGRITY_SHA256, Attr.FINGERPRINT)

# ------------------------------------------------------------- strategies

ipv4 = st.binary(min_size=4, max_size=4).map(lambda b: socket.inet_ntop(socket.AF_INET, b))
ipv6 = st.one_of(
    st.binary(min_size=16, max_size=16),
    # zero runs, v4-mapped and other special shapes inet_ntop abbreviates
    st.tuples(st.sampled_from([bytes(10) + b"\xff\xff", bytes(12), bytes(8), b"\xfe\x80" + bytes(6)]),
              st.binary(min_size=4, max_size=8)).map(lambda t: (t[0] + t[1] + bytes(16))[:16]),
).map(lambda b: socket.inet_ntop(socket.AF_INET6, b))
ports = st.integers(0, 0xFFFF)
addresses = st.builds(Address, st.one_of(ipv4, ipv6), ports)
ipv4_addresses = st.builds(Address, ipv4, ports)
u32 = st.integers(0, 0xFFFFFFFF)


def _text(max_bytes: int):
    # at most 4 UTF-8 bytes a character; hypothesis text() never yields surrogates
    return st.text(max_size=max_bytes // 4)


error_codes = st.builds(ErrorCode, st.integers(300, 699), _text(400))
small_bytes = st.binary(max_size=64)

ADDRESS_TYPES = [
    Attr.MAPPED_ADDRESS,
    Attr.RESPONSE_ADDRESS,
    Attr.SOURCE_ADDRESS,
    Attr.CHANGED_ADDRESS,
    Attr.REFLECTED_FROM,
    Attr.XOR_MAPPED_ADDRESS,
    Attr.XOR_MAPPED_ADDRESS_DRAFT,
    Attr.ALTERNATE_SERVER,
    Attr.RESPONSE_ORIGIN,
    Attr.OTHER_ADDRESS,
    Attr.NS_PEER_ADDRESS,
    Attr.XOR_PEER_ADDRESS,
    Attr.XOR_RELAYED_ADDRESS,
]

VALUE_STRATEGIES = {
    Attr.CHANGE_REQUEST: st.one_of(st.sampled_from([0, CHANGE_IP, CHANGE_PORT, CHANGE_IP | CHANGE_PORT]), u32),
    Attr.USERNAME: _text(513),
    Attr.PASSWORD: small_bytes,
    Attr.ERROR_CODE: error_codes,
    Attr.UNKNOWN_ATTRIBUTES: st.lists(st.integers(0, 0xFFFF), max_size=8).map(tuple),
    Attr.REALM: _text(763),
    Attr.NONCE: _text(763),
    Attr.PRIORITY: u32,
    Attr.USE_CANDIDATE: st.just(b""),
    Attr.PADDING: st.binary(max_size=200),
    Attr.RESPONSE_PORT: ports,
    Attr.SOFTWARE: _text(763),
    Attr.ICE_CONTROLLED: st.binary(min_size=8, max_size=8),
    Attr.ICE_CONTROLLING: st.binary(min_size=8, max_size=8),
    Attr.NS_ROOM: st.binary(min_size=16, max_size=16),
    Attr.NS_CANDIDATES: small_bytes,
    Attr.NS_COOKIE: small_bytes,
    Attr.NS_LEAVE: small_bytes,
    Attr.NS_PEER: small_bytes,
    Attr.NS_NONCE: small_bytes,
    Attr.NS_ROLE: u32,
    Attr.NS_STATUS: u32,
    # TURN (RFC 8656)
    Attr.CHANNEL_NUMBER: ports,
    Attr.LIFETIME: u32,
    Attr.DATA: st.binary(max_size=200),
    Attr.REQUESTED_ADDRESS_FAMILY: st.integers(0, 0xFF),
    Attr.EVEN_PORT: st.booleans(),
    Attr.REQUESTED_TRANSPORT: st.integers(0, 0xFF),
    Attr.DONT_FRAGMENT: st.just(b""),
    Attr.RESERVATION_TOKEN: st.binary(min_size=8, max_size=8),
    Attr.ADDITIONAL_ADDRESS_FAMILY: st.integers(0, 0xFF),
    Attr.ADDRESS_ERROR_CODE: st.builds(AddressErrorCode, st.integers(0, 0xFF), st.integers(300, 699), _text(400)),
    Attr.ICMP: st.builds(Icmp, st.integers(0, 0xFF), st.integers(0, 0xFF), u32),
}
for _t in ADDRESS_TYPES:
    VALUE_STRATEGIES[_t] = addresses


def test_strategies_cover_every_known_attribute():
    assert set(VALUE_STRATEGIES) | set(COMPUTED) == set(CODECS)


known_attribute = st.sampled_from(sorted(VALUE_STRATEGIES)).flatmap(
    lambda t: VALUE_STRATEGIES[t].map(lambda v: (int(t), v))
)
unknown_types = st.integers(0, 0xFFFF).filter(lambda t: t not in CODECS)
unknown_attribute = st.tuples(unknown_types, small_bytes)
attribute = st.one_of(known_attribute, known_attribute, unknown_attribute)

methods = st.integers(0, 0xFFF)
classes = st.sampled_from(list(Class))

modern_messages = st.builds(
    Message,
    methods,
    classes,
    st.binary(min_size=12, max_size=12),
    st.lists(attribute, max_size=8).map(tuple),
)

CLASSIC_TYPES = [
    Attr.MAPPED_ADDRESS,
    Attr.RESPONSE_ADDRESS,
    Attr.SOURCE_ADDRESS,
    Attr.CHANGED_ADDRESS,
    Attr.REFLECTED_FROM,
]
classic_attribute = st.one_of(
    st.tuples(st.sampled_from(CLASSIC_TYPES), ipv4_addresses),
    st.tuples(st.just(Attr.CHANGE_REQUEST),
              st.sampled_from([0, CHANGE_IP, CHANGE_PORT, CHANGE_IP | CHANGE_PORT])),
)
classic_messages = st.builds(
    Message,
    st.sampled_from([0x001]),
    classes,
    st.binary(min_size=16, max_size=16).filter(lambda t: t[:4] != COOKIE),
    st.lists(classic_attribute, max_size=6).map(tuple),
    st.just(True),
)

messages = st.one_of(modern_messages, classic_messages)
keys = st.binary(min_size=1, max_size=64)


def _plain(m: Message):
    """The attributes a sender chose, without the computed ones."""
    return tuple((t, v) for t, v in m.attributes if t not in COMPUTED)


def _expected_unknown(m: Message):
    return tuple(t for t, _ in m.attributes if t < 0x8000 and t not in CODECS)


# -------------------------------------------------------------- properties


@given(messages)
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_roundtrip_plain(m):
    data = encode(m)
    assert len(data) % 4 == 0
    got = decode(data)
    assert got.method == m.method and got.cls == m.cls
    assert got.transaction_id == m.transaction_id
    assert got.classic == m.classic
    assert got.attributes == m.attributes
    assert got.unknown_required == _expected_unknown(m)
    assert got.raw == data
    assert verify_integrity(got, b"key") is False
    # re-encoding the decoded message gives the same bytes
    assert encode(got) == data


@given(messages, st.one_of(st.none(), keys), st.one_of(st.none(), keys), st.booleans())
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_roundtrip_with_integrity_and_fingerprint(m, key1, key256, fp):
    data = encode(m, integrity_key=key1, sha256_key=key256, fingerprint=fp)
    got = decode(data)
    assert (got.method, got.cls, got.transaction_id, got.classic) == (
        m.method, m.cls, m.transaction_id, m.classic,
    )
    assert _plain(got) == m.attributes
    assert got.unknown_required == _expected_unknown(m)
    tail = [t for t, _ in got.attributes if t in COMPUTED]
    want_tail = ([Attr.MESSAGE_INTEGRITY] if key1 is not None else []) + (
        [Attr.MESSAGE_INTEGRITY_SHA256] if key256 is not None else []
    ) + ([Attr.FINGERPRINT] if fp else [])
    assert tail == want_tail
    # the computed attributes come last, in that order
    assert [t for t, _ in got.attributes[len(m.attributes):]] == want_tail
    checking = key256 if key256 is not None else key1
    if checking is not None:
        assert verify_integrity(got, checking) is True
        # (appending a zero byte would not do: HMAC zero-pads short keys)
        assert verify_integrity(got, bytes([checking[0] ^ 1]) + checking[1:]) is False
    else:
        assert verify_integrity(got, b"anything") is False
    # encode(decode(x)) recomputes, so it reproduces x byte for byte
    assert encode(got, integrity_key=key1, sha256_key=key256, fingerprint=fp) == data


@given(messages, st.binary(min_size=1, max_size=1))
@settings(max_examples=200, deadline=None)
def test_padding_bytes_are_ignored(m, pad):
    data, zero = encode(m, pad=pad), encode(m)
    assert len(data) == len(zero)
    assert decode(data) == decode(zero)
    # the only differences are padding bytes
    assert all(a == pad[0] and b == 0 for a, b in zip(data, zero) if a != b)
    # with integrity, the MAC covers the padding, yet each verifies with its own bytes
    signed = encode(m, integrity_key=b"k", pad=pad)
    assert verify_integrity(decode(signed), b"k")


@given(modern_messages, keys)
@settings(max_examples=200, deadline=None)
def test_attributes_after_integrity_are_ignored(m, key):
    data = encode(m, integrity_key=key)
    extra = encode(Message(1, 0, bytes(12), ((Attr.SOFTWARE, "late"), (0x7FFF, b"x"))))[20:]
    body = data[20:] + extra
    tampered = data[:2] + len(body).to_bytes(2, "big") + data[4:20] + body
    got = decode(tampered)
    assert _plain(got) == m.attributes
    assert got.unknown_required == _expected_unknown(m)
    assert verify_integrity(got, key) is True


@given(methods, st.integers(0, 3))
@example(0xFFF, 3)
@example(0, 0)
def test_message_type_split_type_inverse(method, cls):
    t = message_type(method, cls)
    assert 0 <= t <= 0x3FFF
    assert split_type(t) == (method, cls)


def test_message_type_exhaustive():
    seen = set()
    for method in range(0x1000):
        for cls in range(4):
            t = message_type(method, cls)
            assert split_type(t) == (method, cls)
            seen.add(t)
    assert seen == set(range(0x4000))  # a bijection onto the 14-bit types


@pytest.mark.parametrize(
    "method, cls, wire",
    [(1, Class.REQUEST, 0x0001), (1, Class.INDICATION, 0x0011), (1, Class.SUCCESS, 0x0101),
     (1, Class.ERROR, 0x0111), (0xFFF, Class.ERROR, 0x3FFF), (0x3A1, Class.REQUEST, 0x0E41)],
)
def test_message_type_known_values(method, cls, wire):
    assert message_type(method, cls) == wire
    assert split_type(wire) == (method, cls)


# ----------------------------------- encode refuses what decode would not accept


@given(modern_messages)
@settings(max_examples=100, deadline=None)
def test_encode_rejects_method_or_class_out_of_range(m):
    with pytest.raises(ValueError):
        encode(Message(m.method | 0x1000, m.cls, m.transaction_id, m.attributes))
    with pytest.raises(ValueError):
        encode(Message(m.method, 4, m.transaction_id, m.attributes))


def test_encode_rejects_classic_txid_starting_with_cookie():
    with pytest.raises(ValueError):
        encode(Message(1, 0, COOKIE + bytes(12), classic=True))


def test_encode_rejects_xor_ipv6_in_classic_message():
    msg = Message(1, Class.SUCCESS, b"\x01" * 16,
                  ((Attr.XOR_MAPPED_ADDRESS, Address("2001:db8::1", 9)),), classic=True)
    with pytest.raises(ValueError):
        encode(msg)
    # IPv4 XOR in a classic message is well defined (cookie mask only)
    v4 = Message(1, Class.SUCCESS, b"\x01" * 16,
                 ((Attr.XOR_MAPPED_ADDRESS, Address("192.0.2.1", 9)),), classic=True)
    assert decode(encode(v4)) == v4


@pytest.mark.parametrize(
    "attr",
    [
        (Attr.ICE_CONTROLLED, b"\x00" * 5),
        (Attr.NS_ROOM, b"\x00" * 15),
        (Attr.USE_CANDIDATE, b"\x00"),
        (Attr.PRIORITY, 1 << 32),
        (Attr.PRIORITY, -1),
        (Attr.RESPONSE_PORT, 0x10000),
        (Attr.UNKNOWN_ATTRIBUTES, (0x10000,)),
        (Attr.ERROR_CODE, ErrorCode(700, "x")),
        (Attr.ERROR_CODE, ErrorCode(299, "x")),
        (Attr.SOFTWARE, "x" * 764),
        (Attr.USERNAME, b"\xff\xfe"),
        (Attr.MAPPED_ADDRESS, Address("1.2.3.4\x00", 1)),
        (Attr.MAPPED_ADDRESS, Address("example.org", 1)),
        (Attr.MAPPED_ADDRESS, Address("1.2.3.4", 70000)),
        (Attr.PADDING, bytes(0x10000)),
    ],
)
def test_encode_rejects_invalid_values_with_value_error(attr):
    with pytest.raises(ValueError):
        encode(Message(1, 0, bytes(12), (attr,)))


def test_encode_rejects_oversized_message():
    big = ((Attr.PADDING, bytes(0xFFF8)),)
    assert len(encode(Message(1, 0, bytes(12), big))) == 20 + 4 + 0xFFF8
    with pytest.raises(ValueError):
        encode(Message(1, 0, bytes(12), big), fingerprint=True)
    with pytest.raises(ValueError):
        encode(Message(1, 0, bytes(12), big + ((Attr.PADDING, bytes(100)),)))


@pytest.mark.parametrize("pad", [b"", b"  "])
def test_encode_rejects_bad_pad(pad):
    with pytest.raises(ValueError):
        encode(Message(1, 0, bytes(12), ((Attr.SOFTWARE, "x"),)), pad=pad)


@given(messages, st.data())
@settings(max_examples=200, deadline=None)
def test_encode_output_always_decodes(m, data):
    """Whatever encode() produces, decode() accepts (never a StunDecodeError)."""
    # slightly wrong values: encode must either refuse or produce decodable bytes
    t = data.draw(st.sampled_from(sorted(CODECS)))
    v = data.draw(st.one_of(st.binary(max_size=40), st.integers(-2, 1 << 33), _text(40),
                            st.builds(Address, st.one_of(ipv4, ipv6), st.integers(-1, 70000))))
    bad = Message(m.method, m.cls, m.transaction_id, m.attributes + ((t, v),), m.classic)
    try:
        out = encode(bad)
    except (ValueError, TypeError):
        return
    try:
        decode(out)
    except StunDecodeError as e:  # pragma: no cover - this is the failure
        pytest.fail("encode produced undecodable bytes: %s" % e.reason)
