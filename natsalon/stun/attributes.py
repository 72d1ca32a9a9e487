"""STUN attribute values: one table of (type, name, encode, decode).

Each decoder takes the attribute's value bytes and the message's
transaction id (needed by the XOR-ed addresses) and returns a plain Python
value; each encoder does the reverse.  Decoders raise
:class:`AttributeValueError` with a precise reason; the message decoder turns
that into a :class:`~natsalon.stun.errors.StunDecodeError`.
"""

from __future__ import annotations

import socket
import struct
from typing import Callable, Dict, NamedTuple, Tuple

from natsalon.stun.constants import MAGIC_COOKIE_BYTES, Attr


class AttributeValueError(ValueError):
    """An attribute value that does not follow its RFC format."""


class Address(NamedTuple):
    """A transport address: an IPv4 or IPv6 host in text form and a port."""

    host: str
    port: int

    @property
    def family(self) -> int:
        return socket.AF_INET6 if ":" in self.host else socket.AF_INET

    def __str__(self) -> str:
        if ":" in self.host:
            return "[%s]:%d" % (self.host, self.port)
        return "%s:%d" % (self.host, self.port)


class ErrorCode(NamedTuple):
    code: int
    reason: str


_FAMILY_V4 = 0x01
_FAMILY_V6 = 0x02


def _pack_address(addr: Address, xor: bool, txid: bytes) -> bytes:
    host, port = addr
    if not 0 <= port <= 0xFFFF:
        raise AttributeValueError("port %r out of range" % (port,))
    if not isinstance(host, str) or "\x00" in host:
        # (PyPy's inet_pton stops at a NUL where CPython's refuses it)
        raise AttributeValueError("not an IP address: %r" % (host,))
    try:
        if ":" in host:
            family, raw = _FAMILY_V6, socket.inet_pton(socket.AF_INET6, host)
        else:
            family, raw = _FAMILY_V4, socket.inet_pton(socket.AF_INET, host)
    except (OSError, ValueError, TypeError):
        raise AttributeValueError("not an IP address: %r" % (host,)) from None
    if xor and family == _FAMILY_V6 and len(txid) != 12:
        raise AttributeValueError("XOR IPv6 address in a message without magic cookie")
    if xor:
        port ^= 0x2112
        mask = MAGIC_COOKIE_BYTES + txid if family == _FAMILY_V6 else MAGIC_COOKIE_BYTES
        raw = (int.from_bytes(raw, "big") ^ int.from_bytes(mask, "big")).to_bytes(len(raw), "big")
    return struct.pack("!BBH", 0, family, port) + raw


def _unpack_address(value: bytes, xor: bool, txid: bytes) -> Address:
    if len(value) < 4:
        raise AttributeValueError("address attribute of %d bytes" % len(value))
    _, family, port = struct.unpack_from("!BBH", value)
    raw = value[4:]
    if family == _FAMILY_V4:
        if len(raw) != 4:
            raise AttributeValueError("IPv4 address of %d bytes" % len(raw))
        af = socket.AF_INET
        mask = MAGIC_COOKIE_BYTES
    elif family == _FAMILY_V6:
        if len(raw) != 16:
            raise AttributeValueError("IPv6 address of %d bytes" % len(raw))
        af = socket.AF_INET6
        if xor and len(txid) != 12:
            raise AttributeValueError("XOR address in a message without magic cookie")
        mask = MAGIC_COOKIE_BYTES + txid
    else:
        raise AttributeValueError("unknown address family 0x%02x" % family)
    if xor:
        port ^= 0x2112
        raw = bytes(a ^ b for a, b in zip(raw, mask))
    return Address(socket.inet_ntop(af, raw), port)


def _address(xor: bool) -> Tuple[Callable, Callable]:
    return (
        lambda value, txid: _pack_address(value, xor, txid),
        lambda raw, txid: _unpack_address(raw, xor, txid),
    )


def _enc_text(limit: int) -> Callable:
    def enc(value, txid):
        if isinstance(value, str):
            raw = value.encode("utf-8")
        else:
            raw = bytes(value)
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                raise AttributeValueError("text attribute is not UTF-8") from None
        if len(raw) > limit:
            raise AttributeValueError("text attribute over %d bytes" % limit)
        return raw

    return enc


def _dec_text(limit: int) -> Callable:
    def dec(raw, txid):
        if len(raw) > limit:
            raise AttributeValueError("text attribute of %d bytes (limit %d)" % (len(raw), limit))
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise AttributeValueError("text attribute is not UTF-8") from None

    return dec


def _enc_error(value, txid):
    code, reason = value
    if not 300 <= code <= 699:
        raise AttributeValueError("error code %r out of range" % (code,))
    return struct.pack("!HBB", 0, code // 100, code % 100) + reason.encode("utf-8")


def _dec_error(raw, txid):
    if len(raw) < 4:
        raise AttributeValueError("ERROR-CODE of %d bytes" % len(raw))
    _, klass, number = struct.unpack_from("!HBB", raw)
    klass &= 0x07
    if not 3 <= klass <= 6 or number > 99:
        raise AttributeValueError("ERROR-CODE %d.%02d out of range" % (klass, number))
    try:
        reason = raw[4:].decode("utf-8")
    except UnicodeDecodeError:
        raise AttributeValueError("ERROR-CODE reason is not UTF-8") from None
    return ErrorCode(klass * 100 + number, reason)


def _enc_unknown(value, txid):
    if not all(0 <= t <= 0xFFFF for t in value):
        raise AttributeValueError("UNKNOWN-ATTRIBUTES type out of range in %r" % (value,))
    return b"".join(struct.pack("!H", t) for t in value)


def _dec_unknown(raw, txid):
    if len(raw) % 2:
        raise AttributeValueError("UNKNOWN-ATTRIBUTES of odd length")
    return tuple(struct.unpack("!%dH" % (len(raw) // 2), raw))


def _enc_u32(value, txid):
    if not 0 <= value <= 0xFFFFFFFF:
        raise AttributeValueError("32-bit attribute value %r out of range" % (value,))
    return struct.pack("!I", value)


def _dec_u32(raw, txid):
    if len(raw) != 4:
        raise AttributeValueError("32-bit attribute of %d bytes" % len(raw))
    return struct.unpack("!I", raw)[0]


def _enc_port(value, txid):
    if not 0 <= value <= 0xFFFF:
        raise AttributeValueError("RESPONSE-PORT %r out of range" % (value,))
    return struct.pack("!HH", value, 0)


def _dec_port(raw, txid):
    if len(raw) != 4:
        raise AttributeValueError("RESPONSE-PORT of %d bytes" % len(raw))
    return struct.unpack_from("!H", raw)[0]


def _enc_bytes(value, txid):
    return bytes(value)


def _dec_bytes(raw, txid):
    return bytes(raw)


def _fixed_bytes(size: int) -> Tuple[Callable, Callable]:
    def enc(value, txid):
        raw = bytes(value)
        if len(raw) != size:
            raise AttributeValueError("attribute of %d bytes, want %d" % (len(raw), size))
        return raw

    def dec(raw, txid):
        if len(raw) != size:
            raise AttributeValueError("attribute of %d bytes, want %d" % (len(raw), size))
        return bytes(raw)

    return enc, dec


def _dec_sha256_mac(raw, txid):
    if not 16 <= len(raw) <= 32 or len(raw) % 4:
        raise AttributeValueError("MESSAGE-INTEGRITY-SHA256 of %d bytes" % len(raw))
    return bytes(raw)


class AddressErrorCode(NamedTuple):
    """RFC 8656 ADDRESS-ERROR-CODE: why one address family was not allocated."""

    family: int
    code: int
    reason: str


class Icmp(NamedTuple):
    """RFC 8656 ICMP attribute: the ICMP type and code a peer's packet caused."""

    type: int
    code: int
    data: int


def _enc_channel(value, txid):
    if not 0 <= value <= 0xFFFF:
        raise AttributeValueError("CHANNEL-NUMBER %r out of range" % (value,))
    return struct.pack("!HH", value, 0)


def _dec_channel(raw, txid):
    if len(raw) != 4:
        raise AttributeValueError("CHANNEL-NUMBER of %d bytes" % len(raw))
    return struct.unpack_from("!H", raw)[0]


def _enc_byte_rffu(value, txid):
    """One byte followed by three reserved bytes (REQUESTED-TRANSPORT, the
    address family attributes)."""
    if not 0 <= value <= 0xFF:
        raise AttributeValueError("one-byte attribute value %r out of range" % (value,))
    return struct.pack("!B3x", value)


def _dec_byte_rffu(raw, txid):
    if len(raw) != 4:
        raise AttributeValueError("attribute of %d bytes, want 4" % len(raw))
    return raw[0]


def _enc_even_port(value, txid):
    return b"\x80" if value else b"\x00"


def _dec_even_port(raw, txid):
    if len(raw) != 1:
        raise AttributeValueError("EVEN-PORT of %d bytes" % len(raw))
    return bool(raw[0] & 0x80)


def _enc_address_error(value, txid):
    family, code, reason = value
    if not 0 <= family <= 0xFF:
        raise AttributeValueError("address family %r out of range" % (family,))
    return struct.pack("!B", family) + _enc_error((code, reason), txid)[1:]


def _dec_address_error(raw, txid):
    if len(raw) < 4:
        raise AttributeValueError("ADDRESS-ERROR-CODE of %d bytes" % len(raw))
    err = _dec_error(b"\x00" + raw[1:], txid)
    return AddressErrorCode(raw[0], err.code, err.reason)


def _enc_icmp(value, txid):
    icmp_type, code, data = value
    if not (0 <= icmp_type <= 0xFF and 0 <= code <= 0xFF and 0 <= data <= 0xFFFFFFFF):
        raise AttributeValueError("ICMP value %r out of range" % (value,))
    return struct.pack("!HBBI", 0, icmp_type, code, data)


def _dec_icmp(raw, txid):
    if len(raw) != 8:
        raise AttributeValueError("ICMP of %d bytes" % len(raw))
    _, icmp_type, code, data = struct.unpack("!HBBI", raw)
    return Icmp(icmp_type, code, data)


_ADDR = _address(False)
_XADDR = _address(True)

#: attribute type -> (encode(value, txid) -> bytes, decode(raw, txid) -> value)
CODECS: Dict[int, Tuple[Callable, Callable]] = {
    Attr.MAPPED_ADDRESS: _ADDR,
    Attr.RESPONSE_ADDRESS: _ADDR,
    Attr.CHANGE_REQUEST: (_enc_u32, _dec_u32),
    Attr.SOURCE_ADDRESS: _ADDR,
    Attr.CHANGED_ADDRESS: _ADDR,
    Attr.USERNAME: (_enc_text(513), _dec_text(513)),
    Attr.PASSWORD: (_enc_bytes, _dec_bytes),
    Attr.MESSAGE_INTEGRITY: _fixed_bytes(20),
    Attr.ERROR_CODE: (_enc_error, _dec_error),
    Attr.UNKNOWN_ATTRIBUTES: (_enc_unknown, _dec_unknown),
    Attr.REFLECTED_FROM: _ADDR,
    Attr.REALM: (_enc_text(763), _dec_text(763)),
    Attr.NONCE: (_enc_text(763), _dec_text(763)),
    Attr.MESSAGE_INTEGRITY_SHA256: (_enc_bytes, _dec_sha256_mac),
    Attr.XOR_MAPPED_ADDRESS: _XADDR,
    Attr.PRIORITY: (_enc_u32, _dec_u32),
    Attr.USE_CANDIDATE: _fixed_bytes(0),
    Attr.PADDING: (_enc_bytes, _dec_bytes),
    Attr.RESPONSE_PORT: (_enc_port, _dec_port),
    Attr.XOR_MAPPED_ADDRESS_DRAFT: _XADDR,
    Attr.SOFTWARE: (_enc_text(763), _dec_text(763)),
    Attr.ALTERNATE_SERVER: _ADDR,
    Attr.FINGERPRINT: (_enc_u32, _dec_u32),
    Attr.ICE_CONTROLLED: _fixed_bytes(8),
    Attr.ICE_CONTROLLING: _fixed_bytes(8),
    Attr.RESPONSE_ORIGIN: _ADDR,
    Attr.OTHER_ADDRESS: _ADDR,
    Attr.NS_ROOM: _fixed_bytes(16),
    Attr.NS_CANDIDATES: (_enc_bytes, _dec_bytes),
    Attr.NS_COOKIE: (_enc_bytes, _dec_bytes),
    Attr.NS_PEER: (_enc_bytes, _dec_bytes),
    Attr.NS_NONCE: (_enc_bytes, _dec_bytes),
    Attr.NS_ROLE: (_enc_u32, _dec_u32),
    Attr.NS_STATUS: (_enc_u32, _dec_u32),
    Attr.NS_PEER_ADDRESS: _XADDR,
    Attr.NS_LEAVE: (_enc_bytes, _dec_bytes),
    # TURN (RFC 8656)
    Attr.CHANNEL_NUMBER: (_enc_channel, _dec_channel),
    Attr.LIFETIME: (_enc_u32, _dec_u32),
    Attr.XOR_PEER_ADDRESS: _XADDR,
    Attr.DATA: (_enc_bytes, _dec_bytes),
    Attr.XOR_RELAYED_ADDRESS: _XADDR,
    Attr.REQUESTED_ADDRESS_FAMILY: (_enc_byte_rffu, _dec_byte_rffu),
    Attr.EVEN_PORT: (_enc_even_port, _dec_even_port),
    Attr.REQUESTED_TRANSPORT: (_enc_byte_rffu, _dec_byte_rffu),
    Attr.DONT_FRAGMENT: _fixed_bytes(0),
    Attr.RESERVATION_TOKEN: _fixed_bytes(8),
    Attr.ADDITIONAL_ADDRESS_FAMILY: (_enc_byte_rffu, _dec_byte_rffu),
    Attr.ADDRESS_ERROR_CODE: (_enc_address_error, _dec_address_error),
    Attr.ICMP: (_enc_icmp, _dec_icmp),
}


def is_comprehension_required(attr_type: int) -> bool:
    return attr_type < 0x8000
