"""Answers to Binding requests: sans-IO, bytes and addresses in, a reply out.

:func:`fast_response` serves the common case (a 20-byte RFC 5389 Binding
request with no attributes) with a precomputed header and nothing but
XOR-MAPPED-ADDRESS: from an IPv4 client a 32-byte answer to a 20-byte
request, a 1.6 byte ratio; from an IPv6 client (:func:`fast_response6`, the
address XOR-ed with the transaction id too) 44 bytes, 2.2.  :func:`answer` serves every other request: RFC 5780
CHANGE-REQUEST, RESPONSE-PORT and PADDING, RESPONSE-ORIGIN and OTHER-ADDRESS,
RFC 3489 classic requests, and the error answers.
"""

from __future__ import annotations

import socket
import struct
from typing import NamedTuple, Optional

from natsalon.server.layout import Key, Layout
from natsalon.stun import (
    CHANGE_IP,
    CHANGE_PORT,
    Address,
    Attr,
    Class,
    ErrorCode,
    Message,
    Method,
    encode,
)
from natsalon.stun.constants import MAGIC_COOKIE, MAGIC_COOKIE_BYTES, REASONS

#: the first 8 bytes of an attribute-less RFC 5389 Binding request
PLAIN_REQUEST_PREFIX = b"\x00\x01\x00\x00" + MAGIC_COOKIE_BYTES
#: the first 8 bytes of its success response (length 12: one attribute)
RESPONSE_HEAD = b"\x01\x01\x00\x0c" + MAGIC_COOKIE_BYTES
_XMA_HEAD = b"\x00\x20\x00\x08\x00\x01"
#: the same for an IPv6 source (length 24: one 20-byte attribute)
RESPONSE_HEAD6 = b"\x01\x01\x00\x18" + MAGIC_COOKIE_BYTES
_XMA6_HEAD = b"\x00\x20\x00\x14\x00\x02"


class Reply(NamedTuple):
    via: Key  #: the socket to send from
    to: tuple  #: (host, port) destination; always the request's source IP
    data: bytes


def xor_mapped_tail(host: str, port: int) -> bytes:
    """The 12-byte XOR-MAPPED-ADDRESS attribute for an IPv4 source; it does
    not depend on the transaction id, so it can be cached per source.  For
    an IPv6 source, the 24 bytes :func:`fast_response6` completes with the
    transaction id (the attribute with the address not yet XOR-ed)."""
    if ":" in host:
        raw = socket.inet_pton(socket.AF_INET6, host.split("%", 1)[0])
        return _XMA6_HEAD + struct.pack("!H", port ^ 0x2112) + raw
    xhost = (int.from_bytes(socket.inet_aton(host), "big") ^ MAGIC_COOKIE).to_bytes(4, "big")
    return _XMA_HEAD + struct.pack("!H", port ^ 0x2112) + xhost


def fast_response(request: bytes, tail: bytes) -> bytes:
    """The success response to a plain 20-byte Binding ``request`` from the
    source whose :func:`xor_mapped_tail` is ``tail``."""
    if len(tail) != 12:
        return fast_response6(request, tail)
    return RESPONSE_HEAD + request[8:20] + tail


def fast_response6(request: bytes, tail: bytes) -> bytes:
    """:func:`fast_response` for an IPv6 source: the address XOR-ed with
    the magic cookie and the transaction id (RFC 8489 section 14.2)."""
    xaddr = (int.from_bytes(tail[8:24], "big") ^ int.from_bytes(request[4:20], "big")).to_bytes(16, "big")
    return RESPONSE_HEAD6 + request[8:20] + tail[:8] + xaddr


#: an error answer is at most this many times the size of its request: the
#: sender has not proved it owns its source address, so the answer must not
#: amplify (the same ratio as the plain Binding answer's 32/20)
MAX_ERROR_RATIO = 1.6


def error_response(method: int, txid: bytes, classic: bool, code: int, unknown=(),
                   request_size: Optional[int] = None) -> Optional[bytes]:
    """An error answer; with ``request_size``, the reason phrase is dropped
    when needed to stay within :data:`MAX_ERROR_RATIO`, and None is
    returned when even that is too large (the request then gets no
    answer)."""
    for reason in (REASONS.get(code, "Error"), ""):
        attrs = [(Attr.ERROR_CODE, ErrorCode(code, reason))]
        if unknown:
            attrs.append((Attr.UNKNOWN_ATTRIBUTES, tuple(unknown)))
        data = encode(Message(method, Class.ERROR, txid, tuple(attrs), classic))
        if request_size is None or len(data) <= request_size * MAX_ERROR_RATIO:
            return data
    return None


def _error_reply(msg: Message, via: Key, to: tuple, code: int, unknown=()) -> Optional[Reply]:
    data = error_response(msg.method, msg.transaction_id, msg.classic, code, unknown, len(msg.raw) or None)
    return Reply(via, to, data) if data is not None else None


#: a success answer's address attributes: the source as seen, the socket
#: answering, the socket differing in IP and port (RFC 5389 / RFC 5780)
_ADDRESSES = (Attr.XOR_MAPPED_ADDRESS, Attr.RESPONSE_ORIGIN, Attr.OTHER_ADDRESS)
#: the same in an RFC 3489 (classic) answer
_CLASSIC_ADDRESSES = (Attr.MAPPED_ADDRESS, Attr.SOURCE_ADDRESS, Attr.CHANGED_ADDRESS)


def _address_attrs(names, source: Address, via: Key, layout: Layout) -> list:
    mapped, origin, other = names
    attrs = [(mapped, source)]
    for name, address in ((origin, layout.address(via)), (other, layout.other(via))):
        if address is not None:
            attrs.append((name, address))
    return attrs


def answer(msg: Message, source: Address, received_on: Key, layout: Layout) -> Optional[Reply]:
    """The reply to a decoded Binding message, or None when it gets none
    (indications and responses are never answered)."""
    if msg.cls != Class.REQUEST:
        return None
    src = (source.host, source.port)
    if msg.unknown_required:
        return _error_reply(msg, received_on, src, 420, msg.unknown_required)
    if msg.method != Method.BINDING:
        return _error_reply(msg, received_on, src, 400)

    flags = msg.get(Attr.CHANGE_REQUEST, 0)
    change_ip = bool(flags & CHANGE_IP)
    change_port = bool(flags & CHANGE_PORT)
    if change_ip and not layout.has_alt(received_on):
        # RFC 5780 section 6.1: no alternate address, so CHANGE-REQUEST with
        # change-IP cannot be honoured.
        return _error_reply(msg, received_on, src, 420, (Attr.CHANGE_REQUEST,))
    # (a third element, the second family's socket, stays: same family)
    via = (received_on[0] ^ change_ip, received_on[1] ^ change_port) + tuple(received_on[2:])
    response_port = msg.get(Attr.RESPONSE_PORT)
    to = (source.host, response_port if response_port else source.port)

    if msg.classic:
        attrs = _address_attrs(_CLASSIC_ADDRESSES, source, via, layout)
        return Reply(via, to, _success(msg, attrs))
    attrs = _address_attrs(_ADDRESSES, source, via, layout)
    fingerprint = msg.has(Attr.FINGERPRINT)
    if msg.get(Attr.PADDING) is not None:
        # RFC 5780 section 7.6: pad the response to the size of the
        # request, never beyond it (no amplification).
        room = len(msg.raw) - len(_success(msg, attrs, fingerprint)) - 4
        if room > 0:
            attrs.append((Attr.PADDING, b"\x00" * (room & ~3)))
    return Reply(via, to, _success(msg, attrs, fingerprint))


def _success(msg: Message, attrs: list, fingerprint: bool = False) -> bytes:
    return encode(Message(msg.method, Class.SUCCESS, msg.transaction_id, tuple(attrs), msg.classic),
                  fingerprint=fingerprint)
