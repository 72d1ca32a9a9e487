"""A sans-IO STUN codec (RFC 8489, RFC 5780, RFC 3489 classic messages)."""

from natsalon.stun.attributes import Address, ErrorCode
from natsalon.stun.constants import (
    CHANGE_IP,
    CHANGE_PORT,
    MAGIC_COOKIE,
    Attr,
    Class,
    Method,
    message_type,
    split_type,
)
from natsalon.stun.errors import StunDecodeError
from natsalon.stun.message import Message, decode, encode, long_term_key, verify_integrity

__all__ = [
    "Address", "ErrorCode", "CHANGE_IP", "CHANGE_PORT", "MAGIC_COOKIE", "Attr", "Class",
    "Method", "message_type", "split_type", "StunDecodeError", "Message", "decode",
    "encode", "long_term_key", "verify_integrity",
]
