"""A sans-IO STUN codec (RFC 8489, RFC 5780, RFC 3489 classic messages)."""

from .attributes import Address, ErrorCode
from .constants import (
    CHANGE_IP,
    CHANGE_PORT,
    MAGIC_COOKIE,
    Attr,
    Class,
    Method,
    message_type,
    split_type,
)
from .errors import StunDecodeError
from .message import Message, decode, encode, long_term_key, verify_integrity

__all__ = [
    "Address", "ErrorCode", "CHANGE_IP", "CHANGE_PORT", "MAGIC_COOKIE", "Attr", "Class",
    "Method", "message_type", "split_type", "StunDecodeError", "Message", "decode",
    "encode", "long_term_key", "verify_integrity",
]
