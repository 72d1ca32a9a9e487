"""The RFC 5769 STUN test vectors, and MESSAGE-INTEGRITY-SHA256 (RFC 8489).

The hex below is the RFC 5769 section 2 text, one line per 32-bit word as
the RFC lays it out.  Sections 2.1-2.3 pad with 0x20 (spaces); section 2.4
pads with 0x00.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import zlib

import pytest

from natsalon.stun import (
    Address,
    Attr,
    Class,
    ErrorCode,
    Message,
    Method,
    StunDecodeError,
    decode,
    encode,
    long_term_key,
    verify_integrity,
)


def _hex(text: str) -> bytes:
    return bytes.fromhex("".join(line.split("#")[0] for line in text.splitlines()))


TXID = bytes.fromhex("b7e7a701bc34d686fa87dfae")
SHORT_TERM_PASSWORD = b"VOkJxbRl1RmTxUk/WvJxBt"

# RFC 5769 section 2.1: Sample Request
SAMPLE_REQUEST = _hex(
    """
    00 01 00 58   # Request type and message length
    21 12 a4 42   # Magic cookie
    b7 e7 a7 01   # }
    bc 34 d6 86   # }  Transaction ID
    fa 87 df ae   # }
    80 22 00 10   # SOFTWARE attribute header
    53 54 55 4e   # }
    20 74 65 73   # }  User-agent...
    74 20 63 6c   # }  ...name
    69 65 6e 74   # }
    00 24 00 04   # PRIORITY attribute header
    6e 00 01 ff   # ICE priority value
    80 29 00 08   # ICE-CONTROLLED attribute header
    93 2f f9 b1   # }  Pseudo-random tie breaker...
    51 26 3b 36   # }   ...for ICE control
    00 06 00 09   # USERNAME attribute header
    65 76 74 6a   # }
    3a 68 36 76   # }  Username (9 bytes) and padding (3 bytes)
    59 20 20 20   # }
    00 08 00 14   # MESSAGE-INTEGRITY attribute header
    9a ea a7 0c   # }
    bf d8 cb 56   # }
    78 1e f2 b5   # }  HMAC-SHA1 fingerprint
    b2 d3 f2 49   # }
    c1 b5 71 a2   # }
    80 28 00 04   # FINGERPRINT attribute header
    e5 7a 3b cf   # CRC32 fingerprint
    """
)

# RFC 5769 section 2.2: Sample IPv4 Response
SAMPLE_IPV4_RESPONSE = _hex(
    """
    01 01 00 3c   # Response type and message length
    21 12 a4 42   # Magic cookie
    b7 e7 a7 01   # }
    bc 34 d6 86   # }  Transaction ID
    fa 87 df ae   # }
    80 22 00 0b   # SOFTWARE attribute header
    74 65 73 74   # }
    20 76 65 63   # }  UTF-8 server name
    74 6f 72 20   # }
    00 20 00 08   # XOR-MAPPED-ADDRESS attribute header
    00 01 a1 47   # Address family (IPv4) and xor'd mapped port number
    e1 12 a6 43   # Xor'd mapped IPv4 address
    00 08 00 14   # MESSAGE-INTEGRITY attribute header
    2b 91 f5 99   # }
    fd 9e 90 c3   # }
    8c 74 89 f9   # }  HMAC-SHA1 fingerprint
    2a f9 ba 53   # }
    f0 6b e7 d7   # }
    80 28 00 04   # FINGERPRINT attribute header
    c0 7d 4c 96   # CRC32 fingerprint
    """
)

# RFC 5769 section 2.3: Sample IPv6 Response
SAMPLE_IPV6_RESPONSE = _hex(
    """
    01 01 00 48   # Response type and message length
    21 12 a4 42   # Magic cookie
    b7 e7 a7 01   # }
    bc 34 d6 86   # }  Transaction ID
    fa 87 df ae   # }
    80 22 00 0b   # SOFTWARE attribute header
    74 65 73 74   # }
    20 76 65 63   # }  UTF-8 server name
    74 6f 72 20   # }
    00 20 00 14   # XOR-MAPPED-ADDRESS attribute header
    00 02 a1 47   # Address family (IPv6) and xor'd mapped port number
    01 13 a9 fa   # }
    a5 d3 f1 79   # }  Xor'd mapped IPv6 address
    bc 25 f4 b5   # }
    be d2 b9 d9   # }
    00 08 00 14   # MESSAGE-INTEGRITY attribute header
    a3 82 95 4e   # }
    4b e6 7b f1   # }
    17 84 c9 7c   # }  HMAC-SHA1 fingerprint
    82 92 c2 75   # }
    bf e3 ed 41   # }
    80 28 00 04   # FINGERPRINT attribute header
    c8 fb 0b 4c   # CRC32 fingerprint
    """
)

# RFC 5769 section 2.4: Sample Request with Long-Term Authentication
LT_TXID = bytes.fromhex("78ad3433c6ad72c029da412e")
LT_USERNAME = "\u30DE\u30C8\u30EA\u30C3\u30AF\u30B9"
LT_REALM = "example.org"
LT_NONCE = "f//499k954d6OL34oL9FSTvy64sA"
LT_PASSWORD = "TheMatrIX"  # SASLprep("The\u00ADM\u00AAtr\u2168") per the RFC
SAMPLE_LONG_TERM_REQUEST = _hex(
    """
    00 01 00 60   # Request type and message length
    21 12 a4 42   # Magic cookie
    78 ad 34 33   # }
    c6 ad 72 c0   # }  Transaction ID
    29 da 41 2e   # }
    00 06 00 12   # USERNAME attribute header
    e3 83 9e e3   # }
    83 88 e3 83   # }
    aa e3 83 83   # }  Username value (18 bytes) and padding (2 bytes)
    e3 82 af e3   # }
    82 b9 00 00   # }
    00 15 00 1c   # NONCE attribute header
    66 2f 2f 34   # }
    39 39 6b 39   # }
    35 34 64 36   # }
    4f 4c 33 34   # }  Nonce value
    6f 4c 39 46   # }
    53 54 76 79   # }
    36 34 73 41   # }
    00 14 00 0b   # REALM attribute header
    65 78 61 6d   # }
    70 6c 65 2e   # }  Realm value (11 bytes) and padding (1 byte)
    6f 72 67 00   # }
    00 08 00 14   # MESSAGE-INTEGRITY attribute header
    f6 70 24 65   # }
    6d d6 4a 3e   # }
    02 b8 e0 71   # }  HMAC-SHA1 fingerprint
    2e 85 c9 a2   # }
    8c a8 96 66   # }
    """
)


def _lt_key() -> bytes:
    return long_term_key(LT_USERNAME, LT_REALM, LT_PASSWORD)


def _flip(data: bytes, index: int, bit: int = 0x01) -> bytes:
    b = bytearray(data)
    b[index] ^= bit
    return bytes(b)


def _crc_ok(data: bytes) -> bool:
    """FINGERPRINT is the last 8 bytes; check it independently of the codec."""
    want = (zlib.crc32(data[:-8]) ^ 0x5354554E) & 0xFFFFFFFF
    return data[-8:-4] == b"\x80\x28\x00\x04" and struct.unpack("!I", data[-4:])[0] == want


# ----------------------------------------------------------------- sanity


def test_vector_lengths_match_headers():
    for vec, total in (
        (SAMPLE_REQUEST, 108),
        (SAMPLE_IPV4_RESPONSE, 80),
        (SAMPLE_IPV6_RESPONSE, 92),
        (SAMPLE_LONG_TERM_REQUEST, 116),
    ):
        assert len(vec) == total
        assert struct.unpack("!H", vec[2:4])[0] == total - 20


def test_vectors_fingerprints_independently_correct():
    # Guards the transcription: a typo anywhere would break the CRC.
    for vec in (SAMPLE_REQUEST, SAMPLE_IPV4_RESPONSE, SAMPLE_IPV6_RESPONSE):
        assert _crc_ok(vec)


# ----------------------------------------------------------- 2.1 request


def test_sample_request_fields():
    m = decode(SAMPLE_REQUEST)
    assert m.method == Method.BINDING and m.cls == Class.REQUEST
    assert m.transaction_id == TXID
    assert m.classic is False
    assert m.unknown_required == ()
    assert [t for t, _ in m.attributes] == [
        Attr.SOFTWARE,
        Attr.PRIORITY,
        Attr.ICE_CONTROLLED,
        Attr.USERNAME,
        Attr.MESSAGE_INTEGRITY,
        Attr.FINGERPRINT,
    ]
    assert m.get(Attr.SOFTWARE) == "STUN test client"
    assert m.get(Attr.PRIORITY) == 0x6E0001FF
    assert m.get(Attr.ICE_CONTROLLED) == bytes.fromhex("932ff9b151263b36")
    assert m.get(Attr.USERNAME) == "evtj:h6vY"
    assert m.get(Attr.MESSAGE_INTEGRITY) == bytes.fromhex("9aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a2")
    assert m.get(Attr.FINGERPRINT) == 0xE57A3BCF
    assert m.mapped_address is None


def test_sample_request_integrity():
    m = decode(SAMPLE_REQUEST)
    assert verify_integrity(m, SHORT_TERM_PASSWORD) is True
    assert verify_integrity(m, b"VOkJxbRl1RmTxUk/WvJxBu") is False
    assert verify_integrity(m, b"") is False


# ---------------------------------------------------------- 2.2 / 2.3 responses


@pytest.mark.parametrize(
    "vector, host, family_len",
    [
        (SAMPLE_IPV4_RESPONSE, "192.0.2.1", 8),
        (SAMPLE_IPV6_RESPONSE, "2001:db8:1234:5678:11:2233:4455:6677", 20),
    ],
    ids=["ipv4", "ipv6"],
)
def test_sample_response_fields(vector, host, family_len):
    m = decode(vector)
    assert m.method == Method.BINDING and m.cls == Class.SUCCESS
    assert m.transaction_id == TXID
    assert m.classic is False
    assert [t for t, _ in m.attributes] == [
        Attr.SOFTWARE,
        Attr.XOR_MAPPED_ADDRESS,
        Attr.MESSAGE_INTEGRITY,
        Attr.FINGERPRINT,
    ]
    assert m.get(Attr.SOFTWARE) == "test vector"
    assert m.get(Attr.XOR_MAPPED_ADDRESS) == Address(host, 32853)
    assert m.mapped_address == Address(host, 32853)
    assert struct.unpack("!H", vector[38:40])[0] == family_len
    assert m.get(Attr.FINGERPRINT) == struct.unpack("!I", vector[-4:])[0]
    assert verify_integrity(m, SHORT_TERM_PASSWORD) is True
    assert verify_integrity(m, SHORT_TERM_PASSWORD + b"x") is False


# ------------------------------------------------- 2.4 long-term credentials


def test_long_term_username_is_utf8_katakana():
    assert LT_USERNAME.encode("utf-8") == bytes.fromhex("e3839ee38388e383aae38383e382afe382b9")


def test_long_term_key_matches_md5():
    want = hashlib.md5(
        LT_USERNAME.encode("utf-8") + b":" + LT_REALM.encode() + b":" + LT_PASSWORD.encode()
    ).digest()
    assert _lt_key() == want
    assert len(_lt_key()) == 16
    assert long_term_key(LT_USERNAME, LT_REALM, "thematrix") != want


def test_sample_long_term_request_fields():
    m = decode(SAMPLE_LONG_TERM_REQUEST)
    assert m.method == Method.BINDING and m.cls == Class.REQUEST
    assert m.transaction_id == LT_TXID
    assert [t for t, _ in m.attributes] == [
        Attr.USERNAME,
        Attr.NONCE,
        Attr.REALM,
        Attr.MESSAGE_INTEGRITY,
    ]
    assert m.get(Attr.USERNAME) == LT_USERNAME
    assert m.get(Attr.NONCE) == LT_NONCE
    assert m.get(Attr.REALM) == LT_REALM
    assert not m.has(Attr.FINGERPRINT)


def test_sample_long_term_request_integrity():
    m = decode(SAMPLE_LONG_TERM_REQUEST)
    key = long_term_key(m.get(Attr.USERNAME), m.get(Attr.REALM), LT_PASSWORD)
    assert verify_integrity(m, key) is True
    assert verify_integrity(m, long_term_key(LT_USERNAME, LT_REALM, "TheMatrix")) is False
    # the short-term reading of the password is not the key
    assert verify_integrity(m, LT_PASSWORD.encode()) is False


# ------------------------------------------------------ tamper detection

ALL = [
    ("request", SAMPLE_REQUEST, SHORT_TERM_PASSWORD, True),
    ("ipv4", SAMPLE_IPV4_RESPONSE, SHORT_TERM_PASSWORD, True),
    ("ipv6", SAMPLE_IPV6_RESPONSE, SHORT_TERM_PASSWORD, True),
    ("long-term", SAMPLE_LONG_TERM_REQUEST, None, False),
]


def _key(k):
    return _lt_key() if k is None else k


def _mi_offset(vector: bytes) -> int:
    return vector.index(b"\x00\x08\x00\x14")


@pytest.mark.parametrize("name, vector, key, fp", ALL, ids=[a[0] for a in ALL])
def test_one_bit_change_breaks_integrity(name, vector, key, fp):
    key = _key(key)
    mi = _mi_offset(vector)
    changed = 0
    # every byte the HMAC covers, except the length field (changing it
    # breaks framing) and the padding bytes (covered too, so also caught)
    for i in list(range(0, 2)) + list(range(4, mi)) + list(range(mi + 4, mi + 24)):
        for bit in (0x01, 0x80):
            data = _flip(vector, i, bit)
            if fp:
                # keep FINGERPRINT valid so the MAC is what catches the change
                crc = (zlib.crc32(data[:-8]) ^ 0x5354554E) & 0xFFFFFFFF
                data = data[:-4] + struct.pack("!I", crc)
            try:
                m = decode(data)
            except StunDecodeError:
                continue  # e.g. a flipped attribute header: rejected outright
            assert verify_integrity(m, key) is False, (i, bit)
            changed += 1
    assert changed > 50


@pytest.mark.parametrize("name, vector, key, fp", ALL[:3], ids=[a[0] for a in ALL[:3]])
def test_one_bit_change_breaks_fingerprint(name, vector, key, fp):
    for i in (0, 5, 12, 25, len(vector) - 9, len(vector) - 1):
        with pytest.raises(StunDecodeError) as exc:
            decode(_flip(vector, i))
        if i not in (0, 5):  # 0/5 may fail earlier checks; the rest reach FINGERPRINT
            assert "FINGERPRINT" in exc.value.reason


# --------------------------------------------------------- re-encoding


@pytest.mark.parametrize("name, vector, key, fp", ALL, ids=[a[0] for a in ALL])
def test_reencode_is_byte_exact(name, vector, key, fp):
    m = decode(vector)
    pad = b"\x00" if name == "long-term" else b" "
    again = encode(m, integrity_key=_key(key), fingerprint=fp, pad=pad)
    assert again == vector


@pytest.mark.parametrize("name, vector, key, fp", ALL, ids=[a[0] for a in ALL])
def test_reencode_from_scratch(name, vector, key, fp):
    """Build each vector from a hand-made Message, not a decoded one."""
    if name == "request":
        attrs = (
            (Attr.SOFTWARE, "STUN test client"),
            (Attr.PRIORITY, 0x6E0001FF),
            (Attr.ICE_CONTROLLED, bytes.fromhex("932ff9b151263b36")),
            (Attr.USERNAME, "evtj:h6vY"),
        )
        msg = Message(Method.BINDING, Class.REQUEST, TXID, attrs)
    elif name == "long-term":
        attrs = ((Attr.USERNAME, LT_USERNAME), (Attr.NONCE, LT_NONCE), (Attr.REALM, LT_REALM))
        msg = Message(Method.BINDING, Class.REQUEST, LT_TXID, attrs)
    else:
        host = "192.0.2.1" if name == "ipv4" else "2001:db8:1234:5678:11:2233:4455:6677"
        attrs = ((Attr.SOFTWARE, "test vector"), (Attr.XOR_MAPPED_ADDRESS, Address(host, 32853)))
        msg = Message(Method.BINDING, Class.SUCCESS, TXID, attrs)
    pad = b"\x00" if name == "long-term" else b" "
    assert encode(msg, integrity_key=_key(key), fingerprint=fp, pad=pad) == vector
    if name != "long-term":
        # zero padding: different bytes (the MAC covers padding), still valid
        zero = encode(msg, integrity_key=_key(key), fingerprint=fp)
        assert zero != vector
        assert verify_integrity(decode(zero), _key(key))


# ----------------------------------------------- MESSAGE-INTEGRITY-SHA256

SHA_KEY = b"introducer short-term secret"


def _sha_msg() -> Message:
    return Message(
        Method.JOIN,
        Class.REQUEST,
        bytes(range(1, 13)),
        ((Attr.USERNAME, "alice:bob"), (Attr.SOFTWARE, "natsalon"), (Attr.NS_ROOM, bytes(16))),
    )


def test_sha256_roundtrip_and_verify():
    data = encode(_sha_msg(), sha256_key=SHA_KEY, fingerprint=True)
    m = decode(data)
    mac = m.get(Attr.MESSAGE_INTEGRITY_SHA256)
    assert isinstance(mac, bytes) and len(mac) == 32
    assert [t for t, _ in m.attributes][-2:] == [Attr.MESSAGE_INTEGRITY_SHA256, Attr.FINGERPRINT]
    assert verify_integrity(m, SHA_KEY) is True
    assert verify_integrity(m, SHA_KEY + b"!") is False
    # independent computation of the MAC
    at = data.index(b"\x00\x1c\x00\x20")
    covered = data[:2] + struct.pack("!H", at + 36 - 20) + data[4:at]
    assert mac == hmac.new(SHA_KEY, covered, hashlib.sha256).digest()


def test_sha256_tampered_fails():
    data = encode(_sha_msg(), sha256_key=SHA_KEY)
    at = data.index(b"\x00\x1c\x00\x20")
    for i in (0, 1, 8, 19, 24, 30, at - 1, at + 4, at + 35):
        m = decode(_flip(data, i))
        assert verify_integrity(m, SHA_KEY) is False, i
    assert verify_integrity(decode(data), SHA_KEY) is True


def test_sha256_with_sha1_checks_sha256():
    data = encode(_sha_msg(), integrity_key=b"sha1-key", sha256_key=SHA_KEY, fingerprint=True)
    m = decode(data)
    assert [t for t, _ in m.attributes][-3:] == [
        Attr.MESSAGE_INTEGRITY,
        Attr.MESSAGE_INTEGRITY_SHA256,
        Attr.FINGERPRINT,
    ]
    assert verify_integrity(m, SHA_KEY) is True
    assert verify_integrity(m, b"sha1-key") is False


def _truncated_sha256(msg: Message, key: bytes, size: int) -> bytes:
    """MESSAGE-INTEGRITY-SHA256 truncated to ``size`` bytes, built by hand."""
    plain = encode(msg)
    mtype, body = struct.unpack("!H", plain[:2])[0], plain[20:]
    length = len(body) + 4 + size
    header = struct.pack("!HH", mtype, length) + b"\x21\x12\xa4\x42" + msg.transaction_id
    mac = hmac.new(key, header + body, hashlib.sha256).digest()[:size]
    return header + body + struct.pack("!HH", Attr.MESSAGE_INTEGRITY_SHA256, size) + mac


@pytest.mark.parametrize("size", [16, 20, 24, 28, 32])
def test_sha256_truncated_mac_verifies(size):
    data = _truncated_sha256(_sha_msg(), SHA_KEY, size)
    m = decode(data)
    assert len(m.get(Attr.MESSAGE_INTEGRITY_SHA256)) == size
    assert verify_integrity(m, SHA_KEY) is True
    assert verify_integrity(m, b"other") is False
    assert verify_integrity(decode(_flip(data, len(data) - 1)), SHA_KEY) is False
    assert verify_integrity(decode(_flip(data, 24)), SHA_KEY) is False
    if size == 32:
        assert data == encode(_sha_msg(), sha256_key=SHA_KEY)


@pytest.mark.parametrize("size", [0, 4, 12, 36, 64])
def test_sha256_bad_sizes_rejected(size):
    body = encode(_sha_msg())[20:]
    raw = struct.pack("!HH", Attr.MESSAGE_INTEGRITY_SHA256, size) + bytes(size)
    data = struct.pack("!HH", 0x0001, len(body) + len(raw)) + b"\x21\x12\xa4\x42" + bytes(12) + body + raw
    with pytest.raises(StunDecodeError) as exc:
        decode(data)
    assert "0x001c" in exc.value.reason


@pytest.mark.parametrize("size", [17, 18, 30])
def test_sha256_unaligned_size_rejected(size):
    body = encode(_sha_msg())[20:]
    raw = struct.pack("!HH", Attr.MESSAGE_INTEGRITY_SHA256, size) + bytes(size) + bytes(-size % 4)
    data = struct.pack("!HH", 0x0001, len(body) + len(raw)) + b"\x21\x12\xa4\x42" + bytes(12) + body + raw
    with pytest.raises(StunDecodeError) as exc:
        decode(data)
    assert "MESSAGE-INTEGRITY-SHA256" in exc.value.reason


def test_no_integrity_attribute_is_not_verified():
    m = decode(encode(_sha_msg(), fingerprint=True))
    assert verify_integrity(m, SHA_KEY) is False
    # a hand-built (never decoded) Message carries no raw bytes to check
    assert verify_integrity(_sha_msg(), SHA_KEY) is False


def test_error_response_roundtrip_with_integrity():
    msg = Message(
        Method.BINDING,
        Class.ERROR,
        TXID,
        ((Attr.ERROR_CODE, ErrorCode(401, "Unauthenticated")), (Attr.SOFTWARE, "natsalon")),
    )
    m = decode(encode(msg, integrity_key=SHORT_TERM_PASSWORD, fingerprint=True))
    assert m.get(Attr.ERROR_CODE) == ErrorCode(401, "Unauthenticated")
    assert verify_integrity(m, SHORT_TERM_PASSWORD)
