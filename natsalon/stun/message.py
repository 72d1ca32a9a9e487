"""The STUN message: decode bytes into a :class:`Message`, encode it back.

Sans-IO: no sockets, no reactor, no clock.  :func:`decode` validates the
whole datagram (RFC 8489 section 5 and 14: leading zero bits, length a
multiple of 4 and equal to the datagram, magic cookie, attribute bounds and
padding, known attribute formats, FINGERPRINT last and correct) and raises
exactly one error type, :class:`StunDecodeError`, with a precise reason.
Messages without the magic cookie are RFC 3489 ("classic") messages with a
128-bit transaction id.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any, Optional, Tuple

from natsalon.stun.attributes import CODECS, AttributeValueError
from natsalon.stun.constants import (
    FINGERPRINT_XOR,
    HEADER_LENGTH,
    MAGIC_COOKIE_BYTES,
    Attr,
    message_type,
    split_type,
)
from natsalon.stun.errors import StunDecodeError

_HH = struct.Struct("!HH")
_I = struct.Struct("!I")
# plain ints: the attribute walk compares every type against these, and an
# int compares faster than an enum member looked up on its class
_FINGERPRINT = int(Attr.FINGERPRINT)
_MI = int(Attr.MESSAGE_INTEGRITY)
_MI256 = int(Attr.MESSAGE_INTEGRITY_SHA256)
_COMPUTED = frozenset((_MI, _MI256, _FINGERPRINT))


@dataclass(frozen=True)
class Message:
    """One STUN message.

    ``attributes`` is a tuple of ``(type, value)`` pairs in wire order, with
    values decoded by the attribute table (raw bytes for types we do not
    know).  On decoded messages, ``unknown_required`` lists the
    comprehension-required types we did not understand (a server answers
    420 to those), and ``raw`` keeps the datagram so integrity can be
    checked once the key is known.
    """

    method: int
    cls: int
    transaction_id: bytes
    attributes: Tuple[Tuple[int, Any], ...] = ()
    classic: bool = False
    unknown_required: Tuple[int, ...] = ()
    raw: bytes = field(default=b"", compare=False, repr=False)
    _mi_at: int = field(default=-1, compare=False, repr=False)
    _mi256_at: int = field(default=-1, compare=False, repr=False)

    def get(self, attr_type: int, default: Any = None) -> Any:
        for t, v in self.attributes:
            if t == attr_type:
                return v
        return default

    def has(self, attr_type: int) -> bool:
        return any(t == attr_type for t, _ in self.attributes)

    @property
    def mapped_address(self):
        """The reflexive address: XOR-MAPPED-ADDRESS, else the draft XOR
        attribute, else MAPPED-ADDRESS; None when none is present."""
        for t in (Attr.XOR_MAPPED_ADDRESS, Attr.XOR_MAPPED_ADDRESS_DRAFT, Attr.MAPPED_ADDRESS):
            v = self.get(t)
            if v is not None:
                return v
        return None


def decode(data: bytes) -> Message:
    """Decode one datagram; raise :class:`StunDecodeError` if it is not STUN."""
    if not isinstance(data, bytes):
        data = memoryview(data).tobytes()  # bytearray/memoryview: slices need .decode()
    header = _parse_header(data)
    attrs, unknown, mi_at, mi256_at = _walk_attributes(data, header)
    method, cls, txid, classic = header
    return Message(method, cls, txid, attrs, classic, unknown, bytes(data), mi_at, mi256_at)


def _parse_header(data: bytes) -> tuple:
    """The 20-byte header as ``(method, cls, transaction_id, classic)``,
    after checking the leading bits and that the length field is a multiple
    of 4 that matches the datagram."""
    n = len(data)
    if n < HEADER_LENGTH:
        raise StunDecodeError("datagram of %d bytes is shorter than a STUN header" % n)
    msg_type, length = _HH.unpack_from(data)
    if msg_type & 0xC000:
        raise StunDecodeError("first two bits are not zero")
    if length % 4:
        raise StunDecodeError("length %d is not a multiple of 4" % length)
    if length != n - HEADER_LENGTH:
        raise StunDecodeError("length field %d but %d bytes follow the header" % (length, n - HEADER_LENGTH))
    classic = data[4:8] != MAGIC_COOKIE_BYTES
    method, cls = split_type(msg_type)
    txid = data[4:20] if classic else data[8:20]
    return method, cls, txid, classic


def _walk_attributes(data: bytes, header: tuple) -> tuple:
    """The attributes after the header, in wire order:
    ``(attributes, unknown_required, mi_at, mi256_at)``.

    Each attribute must fit, padding included, in the message; its value is
    decoded by the attribute table.  Position rules (RFC 8489 sections 14.5
    to 14.7): FINGERPRINT ends the walk (:func:`_check_fingerprint`); after
    MESSAGE-INTEGRITY only MESSAGE-INTEGRITY-SHA256 is read, after that
    nothing: what is not read is only bounds-checked.
    """
    n = len(data)
    attrs = []
    unknown = []
    mi_at = mi256_at = -1
    pos = HEADER_LENGTH
    while pos < n:
        if pos + 4 > n:
            raise StunDecodeError("truncated attribute header at offset %d" % pos, header)
        attr_type, alen = _HH.unpack_from(data, pos)
        vstart = pos + 4
        padded = vstart + ((alen + 3) & ~3)
        if padded > n:
            raise StunDecodeError("attribute 0x%04x of length %d overruns the message" % (attr_type, alen), header)
        if attr_type == _FINGERPRINT:
            attrs.append((attr_type, _check_fingerprint(data, pos, alen, header)))
            break
        if mi256_at < 0 and (mi_at < 0 or attr_type == _MI256):
            attrs.append((attr_type, _attribute_value(attr_type, data[vstart:vstart + alen], header, unknown)))
            if attr_type == _MI:
                mi_at = pos
            elif attr_type == _MI256:
                mi256_at = pos
        pos = padded
    return tuple(attrs), tuple(unknown), mi_at, mi256_at


def _attribute_value(attr_type: int, value: bytes, header: tuple, unknown: list):
    """The value decoded by the attribute table; the raw bytes for a type
    the table lacks, noted in ``unknown`` if comprehension-required."""
    codec = CODECS.get(attr_type)
    if codec is None:
        if attr_type < 0x8000:
            unknown.append(attr_type)
        return value
    try:
        return codec[1](value, header[2])
    except AttributeValueError as e:
        raise StunDecodeError("attribute 0x%04x: %s" % (attr_type, e), header) from None


def _check_fingerprint(data: bytes, pos: int, alen: int, header: tuple) -> int:
    """The value of the FINGERPRINT at offset ``pos``, once it is 4 bytes,
    the last attribute, and the CRC-32 of all that precedes it."""
    if alen != 4:
        raise StunDecodeError("FINGERPRINT of %d bytes" % alen, header)
    end = pos + 8
    if end < len(data):
        # checked before the CRC, which would fail too, less precisely
        after = _HH.unpack_from(data, end)[0]
        raise StunDecodeError("attribute 0x%04x after FINGERPRINT" % after, header)
    got = _I.unpack_from(data, pos + 4)[0]
    if got != (zlib.crc32(data[:pos]) ^ FINGERPRINT_XOR) & 0xFFFFFFFF:
        raise StunDecodeError("FINGERPRINT mismatch", header)
    return got


def _header(msg_type: int, length: int, txid: bytes, classic: bool) -> bytes:
    if classic:
        return _HH.pack(msg_type, length) + txid
    return _HH.pack(msg_type, length) + MAGIC_COOKIE_BYTES + txid


#: (attribute type, hash, value length) of the two integrity attributes
_SHA1_MAC = (_MI, hashlib.sha1, 20)
_SHA256_MAC = (_MI256, hashlib.sha256, 32)


def encode(
    msg: Message,
    integrity_key: Optional[bytes] = None,
    sha256_key: Optional[bytes] = None,
    fingerprint: bool = False,
    pad: bytes = b"\x00",
) -> bytes:
    """Encode ``msg``; append MESSAGE-INTEGRITY (HMAC-SHA1 with
    ``integrity_key``), MESSAGE-INTEGRITY-SHA256 (with ``sha256_key``) and
    FINGERPRINT as asked, in that order.  Integrity and fingerprint
    attributes already in ``msg.attributes`` are recomputed, not copied.
    """
    _check_encodable(msg, pad)
    body = _encode_attributes(msg, pad)
    extra = (24 if integrity_key is not None else 0) + (36 if sha256_key is not None else 0)
    extra += 8 if fingerprint else 0
    if len(body) + extra > 0xFFFF:
        raise ValueError("message body of %d bytes is too long" % (len(body) + extra))
    mtype = message_type(msg.method, msg.cls)
    if integrity_key is not None:
        body = _append_mac(body, mtype, msg, _SHA1_MAC, integrity_key)
    if sha256_key is not None:
        body = _append_mac(body, mtype, msg, _SHA256_MAC, sha256_key)
    if fingerprint:
        crc = zlib.crc32(_header(mtype, len(body) + 8, msg.transaction_id, msg.classic) + body)
        body += _HH.pack(_FINGERPRINT, 4) + _I.pack((crc ^ FINGERPRINT_XOR) & 0xFFFFFFFF)
    return _header(mtype, len(body), msg.transaction_id, msg.classic) + body


def _append_mac(body: bytes, mtype: int, msg: Message, mac: tuple, key: bytes) -> bytes:
    """``body`` and an integrity attribute over the header (its length
    counting that attribute) and ``body``."""
    attr_type, digest, size = mac
    covered = _header(mtype, len(body) + 4 + size, msg.transaction_id, msg.classic) + body
    return body + _HH.pack(attr_type, size) + hmac.new(key, covered, digest).digest()


def _check_encodable(msg: Message, pad: bytes) -> None:
    """Raise ValueError for what no decoder would read back as ``msg``."""
    txid = msg.transaction_id
    want = 16 if msg.classic else 12
    if len(txid) != want:
        raise ValueError("transaction id of %d bytes, want %d" % (len(txid), want))
    if msg.classic and txid[:4] == MAGIC_COOKIE_BYTES:
        # decode() would take it for an RFC 5389 message with another txid
        raise ValueError("classic transaction id starts with the magic cookie")
    if not 0 <= msg.method <= 0xFFF or not 0 <= msg.cls <= 3:
        raise ValueError("method 0x%x / class %r out of range" % (msg.method, msg.cls))
    if len(pad) != 1:
        raise ValueError("pad must be a single byte, not %r" % (pad,))


def _encode_attributes(msg: Message, pad: bytes) -> bytes:
    """The attributes but the computed ones, each with its header and padding."""
    txid = msg.transaction_id
    parts = []
    for attr_type, value in msg.attributes:
        if attr_type in _COMPUTED:
            continue
        codec = CODECS.get(attr_type)
        raw = codec[0](value, txid) if codec else bytes(value)
        if len(raw) > 0xFFFF:
            raise ValueError("attribute 0x%04x too long" % attr_type)
        parts.append(_HH.pack(attr_type, len(raw)) + raw + pad * (-len(raw) % 4))
    return b"".join(parts)


def _mac_input(raw: bytes, at: int, value_len: int) -> bytes:
    """The bytes an integrity attribute at offset ``at`` covers: everything
    before it, with the header length adjusted to end just after it."""
    return raw[:2] + struct.pack("!H", at + 4 + value_len - HEADER_LENGTH) + raw[4:at]


def verify_integrity(msg: Message, key: bytes) -> bool:
    """True if ``msg`` carries MESSAGE-INTEGRITY-SHA256 or MESSAGE-INTEGRITY
    and it matches ``key`` (the SHA256 one is checked when both are
    present).  False if it carries neither, or the check fails."""
    for at, (attr_type, digest, _) in ((msg._mi256_at, _SHA256_MAC), (msg._mi_at, _SHA1_MAC)):
        if at >= 0:
            got = msg.get(attr_type)  # MESSAGE-INTEGRITY-SHA256 may be truncated to 16 bytes
            mac = hmac.new(key, _mac_input(msg.raw, at, len(got)), digest).digest()
            return hmac.compare_digest(mac[: len(got)], got)
    return False


def long_term_key(username: str, realm: str, password: str) -> bytes:
    """RFC 8489 section 9.2.2 long-term key (MD5 algorithm).  Inputs are
    taken as already prepared (no SASLprep/OpaqueString processing)."""
    return hashlib.md5(("%s:%s:%s" % (username, realm, password)).encode("utf-8")).digest()
