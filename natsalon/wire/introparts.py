"""Introductions put together from prepared attributes.

The salon sends two introductions per pairing (the answer to the newcomer,
the indication pushed to the member waiting) and they share most of their
bytes: the room, the TURN credentials, each listed member's JOIN.  These
functions build each attribute once, as bytes, and join them; the result
is byte for byte what :func:`natsalon.wire.join.introduction` encodes with
the generic STUN encoder (the unit tests compare the two), so the wire
format is that one.  An introduction carries no integrity attribute of the
salon's: each listed JOIN carries its member's MESSAGE-INTEGRITY-SHA256,
verbatim.

An IPv4 address attribute does not depend on the transaction id, so it is
cached per address and a listed member's :func:`peer_entry` serves every
recipient; an IPv6 one is XOR-ed with the transaction id and built per
message.
"""

from __future__ import annotations

import socket
import struct
from typing import Iterable, Optional, Tuple

from natsalon.stun import Address, Attr, Class, Method
from natsalon.stun.constants import MAGIC_COOKIE, MAGIC_COOKIE_BYTES, message_type
from natsalon.wire.common import ROOM_ID_SIZE, Status
from natsalon.wire.join import NS_TURN, pack_turn

_H = struct.Struct("!H")
_HH = struct.Struct("!HH")
_ADDRESS_HEAD = struct.Struct("!HHBBH")  # type, length, 0, family, X-Port
_SUCCESS = message_type(Method.JOIN, Class.SUCCESS)
_INDICATION = message_type(Method.JOIN, Class.INDICATION)
#: NS-STATUS = INTRODUCED, the same in every introduction
STATUS_INTRODUCED = _HH.pack(Attr.NS_STATUS, 4) + struct.pack("!I", Status.INTRODUCED)
_PADS = (b"", b"\0\0\0", b"\0\0", b"\0")


def attribute(attr_type: int, value: bytes) -> bytes:
    """One attribute: its header, ``value`` and the zero padding to 4 bytes."""
    return _HH.pack(attr_type, len(value)) + value + _PADS[len(value) & 3]


def xor_address(attr_type: int, address: Address, txid: bytes) -> bytes:
    """An XOR-address attribute (XOR-MAPPED-ADDRESS, NS-PEER-ADDRESS) of
    ``address`` in a message with transaction id ``txid`` (IPv4 does not
    use it)."""
    host, port = address
    if not 0 <= port <= 0xFFFF:
        raise ValueError("port %r out of range" % (port,))
    try:
        if ":" in host:
            raw = socket.inet_pton(socket.AF_INET6, host)
            x = int.from_bytes(raw, "big") ^ int.from_bytes(MAGIC_COOKIE_BYTES + txid, "big")
            return _ADDRESS_HEAD.pack(attr_type, 20, 0, 2, port ^ 0x2112) + x.to_bytes(16, "big")
        raw = socket.inet_pton(socket.AF_INET, host)
    except (OSError, ValueError, TypeError):
        raise ValueError("not an IP address: %r" % (host,)) from None
    x = int.from_bytes(raw, "big") ^ MAGIC_COOKIE
    return _ADDRESS_HEAD.pack(attr_type, 8, 0, 1, port ^ 0x2112) + x.to_bytes(4, "big")


def room_attribute(room_id: bytes) -> bytes:
    """NS-ROOM (a room id is 16 bytes, as the encoder checks)."""
    if len(room_id) != ROOM_ID_SIZE:
        raise ValueError("NS-ROOM of %d bytes, want %d" % (len(room_id), ROOM_ID_SIZE))
    return attribute(Attr.NS_ROOM, room_id)


def turn_attribute(turn: Optional[Tuple[str, str]]) -> bytes:
    """NS-TURN of ``(username, password)``; empty when None."""
    return b"" if turn is None else attribute(NS_TURN, pack_turn(turn))


def renamed(attr: bytes, attr_type: int) -> bytes:
    """An address attribute with another type: an IPv4 XOR-MAPPED-ADDRESS
    (cached per source, :func:`natsalon.server.binding.xor_mapped_tail`) as
    the NS-PEER-ADDRESS of the same address."""
    return _H.pack(attr_type) + attr[2:]


def peer_entry(address: bytes, raw: bytes) -> bytes:
    """One listed member: its NS-PEER-ADDRESS attribute (``address``,
    :func:`xor_address`) then NS-PEER (its JOIN, verbatim)."""
    return address + _HH.pack(Attr.NS_PEER, len(raw)) + raw + _PADS[len(raw) & 3]


def head(mapped: bytes, room: bytes, my_nonce: bytes) -> bytes:
    """Everything before the listed members: XOR-MAPPED-ADDRESS (``mapped``,
    the recipient's address as seen, :func:`xor_address`), NS-STATUS,
    ``room`` (:func:`room_attribute`) and the recipient's NS-NONCE."""
    return mapped + STATUS_INTRODUCED + room + _HH.pack(Attr.NS_NONCE, len(my_nonce)) + my_nonce + _PADS[
        len(my_nonce) & 3]


def assemble(txid: bytes, head_bytes: bytes, entries: Iterable[bytes], turn: bytes = b"",
             indication: bool = False) -> bytes:
    """The introduction: the 20-byte STUN header, ``head_bytes``
    (:func:`head`), the ``entries`` (:func:`peer_entry`, newest first) and
    ``turn`` (:func:`turn_attribute`); equal to
    :func:`natsalon.wire.join.introduction` of the same values."""
    if len(txid) != 12:
        raise ValueError("transaction id of %d bytes, want 12" % len(txid))
    body = b"".join((head_bytes, *entries, turn))
    if len(body) > 0xFFFF:
        raise ValueError("message body of %d bytes is too long" % len(body))
    return _HH.pack(_INDICATION if indication else _SUCCESS, len(body)) + MAGIC_COOKIE_BYTES + txid + body
