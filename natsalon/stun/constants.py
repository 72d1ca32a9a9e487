"""STUN numbers: methods, classes and attribute types (RFC 8489, RFC 5780, RFC 3489)."""

from __future__ import annotations

import enum

MAGIC_COOKIE = 0x2112A442
MAGIC_COOKIE_BYTES = MAGIC_COOKIE.to_bytes(4, "big")
HEADER_LENGTH = 20
FINGERPRINT_XOR = 0x5354554E

#: Largest datagram we will try to decode.  RFC 5780 clients pad requests
#: to an MTU of 1500 bytes plus STUN overhead (turnutils_stunclient sends
#: 1532); anything larger is not a STUN request we answer.
MAX_MESSAGE_SIZE = 2048


class Method(enum.IntEnum):
    BINDING = 0x001
    # TURN (RFC 8656)
    ALLOCATE = 0x003
    REFRESH = 0x004
    SEND = 0x006
    DATA = 0x007
    CREATE_PERMISSION = 0x008
    CHANNEL_BIND = 0x009
    #: natsalon's introducer methods, from the unassigned 0x3xx range; they
    #: travel only between natsalon peers and the salon.
    JOIN = 0x3A1
    PUNCH = 0x3A2
    LEAVE = 0x3A3


class Class(enum.IntEnum):
    REQUEST = 0b00
    INDICATION = 0b01
    SUCCESS = 0b10
    ERROR = 0b11


class Attr(enum.IntEnum):
    # comprehension-required (0x0000-0x7FFF)
    MAPPED_ADDRESS = 0x0001
    RESPONSE_ADDRESS = 0x0002  # RFC 3489, never honoured (abuse vector)
    CHANGE_REQUEST = 0x0003
    SOURCE_ADDRESS = 0x0004  # RFC 3489
    CHANGED_ADDRESS = 0x0005  # RFC 3489
    USERNAME = 0x0006
    PASSWORD = 0x0007  # RFC 3489
    MESSAGE_INTEGRITY = 0x0008
    ERROR_CODE = 0x0009
    UNKNOWN_ATTRIBUTES = 0x000A
    REFLECTED_FROM = 0x000B  # RFC 3489
    CHANNEL_NUMBER = 0x000C  # RFC 8656 (TURN)
    LIFETIME = 0x000D  # TURN
    XOR_PEER_ADDRESS = 0x0012  # TURN
    DATA = 0x0013  # TURN
    REALM = 0x0014
    NONCE = 0x0015
    XOR_RELAYED_ADDRESS = 0x0016  # TURN
    REQUESTED_ADDRESS_FAMILY = 0x0017  # TURN
    EVEN_PORT = 0x0018  # TURN
    REQUESTED_TRANSPORT = 0x0019  # TURN
    DONT_FRAGMENT = 0x001A  # TURN
    MESSAGE_INTEGRITY_SHA256 = 0x001C
    XOR_MAPPED_ADDRESS = 0x0020
    PRIORITY = 0x0024  # RFC 8445 (ICE)
    USE_CANDIDATE = 0x0025  # RFC 8445 (ICE)
    PADDING = 0x0026
    RESPONSE_PORT = 0x0027
    RESERVATION_TOKEN = 0x0022  # TURN
    # comprehension-optional (0x8000-0xFFFF)
    ADDITIONAL_ADDRESS_FAMILY = 0x8000  # TURN
    ADDRESS_ERROR_CODE = 0x8001  # TURN
    ICMP = 0x8004  # TURN
    XOR_MAPPED_ADDRESS_DRAFT = 0x8020  # pre-RFC 5389 servers (e.g. old Vovida)
    SOFTWARE = 0x8022
    ALTERNATE_SERVER = 0x8023
    FINGERPRINT = 0x8028
    ICE_CONTROLLED = 0x8029  # RFC 8445
    ICE_CONTROLLING = 0x802A  # RFC 8445
    RESPONSE_ORIGIN = 0x802B
    OTHER_ADDRESS = 0x802C
    # natsalon private attributes (comprehension-optional private range)
    NS_ROOM = 0xC0A1
    NS_CANDIDATES = 0xC0A2
    NS_COOKIE = 0xC0A3
    NS_PEER = 0xC0A4
    NS_NONCE = 0xC0A5
    NS_ROLE = 0xC0A6
    NS_STATUS = 0xC0A7  #: u32: introducer status / punch flags (see natsalon.wire)
    NS_PEER_ADDRESS = 0xC0A8  #: XOR-encoded: the peer's public endpoint as the salon saw it
    NS_LEAVE = 0xC0A9  #: JOIN: SHA-256(leave token)[:16]; LEAVE: the token itself


CHANGE_IP = 0x04
CHANGE_PORT = 0x02

#: REQUESTED-TRANSPORT value for UDP (RFC 8656 section 18.11)
TRANSPORT_UDP = 17
#: address family values of REQUESTED-ADDRESS-FAMILY and
#: ADDITIONAL-ADDRESS-FAMILY (RFC 8656 section 18.7)
FAMILY_IPV4 = 0x01
FAMILY_IPV6 = 0x02
#: ChannelData channel numbers (RFC 8656 section 12)
CHANNEL_MIN = 0x4000
CHANNEL_MAX = 0x4FFF
#: RFC 5766's upper bound, still used by coturn's clients (turnutils_uclient
#: binds up to 0x7FFF) and accepted by coturn and pion
CHANNEL_MAX_RFC5766 = 0x7FFF


def message_type(method: int, cls: int) -> int:
    """Interleave a 12-bit method and a 2-bit class into the 14-bit type."""
    return (
        (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((cls & 0b01) << 4)
        | ((cls & 0b10) << 7)
    )


def split_type(msg_type: int) -> tuple:
    """The inverse of :func:`message_type`: ``(method, cls)``."""
    method = (msg_type & 0x000F) | ((msg_type & 0x00E0) >> 1) | ((msg_type & 0x3E00) >> 2)
    cls = ((msg_type & 0x0010) >> 4) | ((msg_type & 0x0100) >> 7)
    return method, cls


REASONS = {
    300: "Try Alternate",
    400: "Bad Request",
    401: "Unauthenticated",
    403: "Forbidden",
    420: "Unknown Attribute",
    438: "Stale Nonce",
    # TURN (RFC 8656)
    437: "Allocation Mismatch",
    440: "Address Family not Supported",
    441: "Wrong Credentials",
    442: "Unsupported Transport Protocol",
    443: "Peer Address Family Mismatch",
    486: "Allocation Quota Reached",
    508: "Insufficient Capacity",
    500: "Server Error",
    # natsalon introducer
    409: "Room Full",
    429: "Too Many Requests",
    503: "Server Busy",
}
