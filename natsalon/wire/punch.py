"""PUNCH: peer <-> peer probes, built and parsed here; no sockets, no clock.

PUNCH request (peer -> peer)::

    NS_NONCE (sender's session nonce)  NS_STATUS (bit 0: sender has a verified path)
    MESSAGE-INTEGRITY-SHA256 keyed with the session's k_punch

PUNCH success response: XOR-MAPPED-ADDRESS (where the request came from),
NS_NONCE (responder's nonce), NS_STATUS, MESSAGE-INTEGRITY-SHA256.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

from natsalon.stun import Address, Attr, Class, Message, Method, StunDecodeError, decode, encode, verify_integrity
from natsalon.stun.client import new_transaction_id
from natsalon.wire.common import WireError

def punch_request(nonce: bytes, k_punch: bytes, flags: int = 0, txid: Optional[bytes] = None) -> Tuple[bytes, bytes]:
    """``(txid, bytes)`` of a probe."""
    txid = txid or new_transaction_id()
    msg = Message(Method.PUNCH, Class.REQUEST, txid, ((Attr.NS_NONCE, nonce), (Attr.NS_STATUS, flags)))
    return txid, encode(msg, sha256_key=k_punch)


def punch_response(txid: bytes, nonce: bytes, observed: Address, k_punch: bytes, flags: int = 0) -> bytes:
    msg = Message(Method.PUNCH, Class.SUCCESS, txid, (
        (Attr.XOR_MAPPED_ADDRESS, observed), (Attr.NS_NONCE, nonce), (Attr.NS_STATUS, flags)))
    return encode(msg, sha256_key=k_punch)


class Punch(NamedTuple):
    is_request: bool
    txid: bytes
    nonce: bytes
    flags: int
    observed: Optional[Address]


def parse_punch(data: bytes, k_punch: bytes, peer_nonce: bytes) -> Punch:
    """A verified probe or probe response from the peer, else WireError."""
    try:
        msg = decode(data)
    except StunDecodeError as e:
        raise WireError("undecodable: %s" % e) from None
    if msg.method != Method.PUNCH or msg.cls not in (Class.REQUEST, Class.SUCCESS):
        raise WireError("not a PUNCH request or response")
    if not verify_integrity(msg, k_punch):
        raise WireError("PUNCH fails its integrity check")
    nonce = msg.get(Attr.NS_NONCE)
    if nonce != peer_nonce:
        raise WireError("PUNCH from another session")
    return Punch(msg.cls == Class.REQUEST, msg.transaction_id, nonce, msg.get(Attr.NS_STATUS, 0),
                 msg.get(Attr.XOR_MAPPED_ADDRESS))
