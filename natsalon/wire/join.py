"""JOIN: client <-> introducer, built and parsed here; no sockets, no clock.

JOIN request (client -> salon)::

    NS_ROOM (16 bytes room id)   NS_NONCE (16 bytes, one per session)
    NS_CANDIDATES (our LAN endpoints)   [NS_COOKIE]
    MESSAGE-INTEGRITY-SHA256 keyed with k_join (checked by the peer, not the salon)

Salon answers::

    401 + NS_COOKIE              fetch the return-routability cookie, join again with it
    success, NS_STATUS=WAITING   registered; poll (join again) until introduced
    success, NS_STATUS=INTRODUCED + NS_PEER (the peer's JOIN request, verbatim)
        + NS_PEER_ADDRESS (its public endpoint) + XOR-MAPPED-ADDRESS (ours)
    409 room full, 429 too many waiting from this IP, 503 salon full, 400 bad join
    JOIN indication with the INTRODUCED attributes and NS_NONCE = the recipient's
        nonce: pushed to the waiting member when its peer arrives.
"""

from __future__ import annotations

import enum
from typing import NamedTuple, Optional, Sequence, Tuple

from natsalon.stun import Address, Attr, Class, ErrorCode, Message, Method, StunDecodeError, decode, encode, verify_integrity
from natsalon.stun.client import new_transaction_id
from natsalon.stun.constants import REASONS
from natsalon.wire.common import NONCE_SIZE, Status, WireError, pack_candidates, unpack_candidates


def join_request(room_id: bytes, nonce: bytes, candidates: Sequence[Address], k_join: bytes,
                 cookie: Optional[bytes] = None, txid: Optional[bytes] = None) -> Tuple[Message, bytes]:
    """``(message, bytes)`` of a JOIN request."""
    attrs = [(Attr.NS_ROOM, room_id), (Attr.NS_NONCE, nonce), (Attr.NS_CANDIDATES, pack_candidates(candidates))]
    if cookie:
        attrs.append((Attr.NS_COOKIE, cookie))
    msg = Message(Method.JOIN, Class.REQUEST, txid or new_transaction_id(), tuple(attrs))
    return msg, encode(msg, sha256_key=k_join)


class JoinRequest(NamedTuple):
    room_id: bytes
    nonce: bytes
    candidates: Tuple[Address, ...]
    cookie: Optional[bytes]


def parse_join_request(msg: Message) -> JoinRequest:
    """Check a JOIN request's shape (the salon cannot check its MAC)."""
    if msg.method != Method.JOIN or msg.cls != Class.REQUEST:
        raise WireError("not a JOIN request")
    if msg.classic:
        raise WireError("JOIN without the magic cookie")
    room = msg.get(Attr.NS_ROOM)
    nonce = msg.get(Attr.NS_NONCE)
    if room is None:
        raise WireError("JOIN without NS-ROOM")
    if nonce is None or len(nonce) != NONCE_SIZE:
        raise WireError("JOIN without a %d-byte NS-NONCE" % NONCE_SIZE)
    if not msg.has(Attr.MESSAGE_INTEGRITY_SHA256):
        raise WireError("JOIN without MESSAGE-INTEGRITY-SHA256")
    cands = unpack_candidates(msg.get(Attr.NS_CANDIDATES, b""))
    cookie = msg.get(Attr.NS_COOKIE)
    return JoinRequest(room, nonce, cands, cookie)


class PeerJoin(NamedTuple):
    nonce: bytes
    candidates: Tuple[Address, ...]  #: its LAN endpoints, as it reported them


def verify_peer_join(raw: bytes, k_join: bytes, room_id: bytes) -> PeerJoin:
    """Check the peer's JOIN request (handed over by the salon) end to end:
    it must carry a MESSAGE-INTEGRITY-SHA256 made with our k_join."""
    try:
        msg = decode(raw)
    except StunDecodeError as e:
        raise WireError("peer JOIN undecodable: %s" % e) from None
    req = parse_join_request(msg)
    if not verify_integrity(msg, k_join):
        raise WireError("peer JOIN fails its integrity check (the peer does not know the secret)")
    if req.room_id != room_id:
        raise WireError("peer JOIN is for another room")
    return PeerJoin(req.nonce, req.candidates)


def _error(method: int, txid: bytes, code: int, extra=()) -> bytes:
    attrs = ((Attr.ERROR_CODE, ErrorCode(code, REASONS.get(code, "Error"))),) + tuple(extra)
    return encode(Message(method, Class.ERROR, txid, attrs))


def cookie_response(txid: bytes, cookie: bytes) -> bytes:
    return _error(Method.JOIN, txid, 401, ((Attr.NS_COOKIE, cookie),))


def join_error(txid: bytes, code: int) -> bytes:
    return _error(Method.JOIN, txid, code)


def waiting_response(txid: bytes, observed: Address) -> bytes:
    return encode(Message(Method.JOIN, Class.SUCCESS, txid, (
        (Attr.XOR_MAPPED_ADDRESS, observed), (Attr.NS_STATUS, Status.WAITING))))


def introduction(txid: bytes, observed: Address, my_nonce: bytes, room_id: bytes,
                 peer_raw: bytes, peer_address: Address, indication: bool = False) -> bytes:
    attrs = (
        (Attr.XOR_MAPPED_ADDRESS, observed),
        (Attr.NS_STATUS, Status.INTRODUCED),
        (Attr.NS_ROOM, room_id),
        (Attr.NS_NONCE, my_nonce),
        (Attr.NS_PEER_ADDRESS, peer_address),
        (Attr.NS_PEER, peer_raw),
    )
    cls = Class.INDICATION if indication else Class.SUCCESS
    return encode(Message(Method.JOIN, cls, txid, attrs))


class Answer(enum.Enum):
    """The kinds of answer a client gets to its JOIN."""

    COOKIE = "cookie"  #: 401 with a cookie: join again with it
    WAITING = "waiting"  #: registered; poll until introduced
    INTRODUCED = "introduced"  #: the peer's JOIN and endpoint
    REFUSED = "refused"  #: an error answer (409, 429, 503, 400, ...)


class JoinAnswer(NamedTuple):
    """What the salon said, parsed on the client."""

    kind: Answer
    cookie: Optional[bytes] = None
    observed: Optional[Address] = None
    peer_raw: Optional[bytes] = None
    peer_address: Optional[Address] = None
    nonce: Optional[bytes] = None
    room_id: Optional[bytes] = None
    error: Optional[ErrorCode] = None


def parse_join_answer(msg: Message) -> JoinAnswer:
    if msg.method != Method.JOIN or msg.cls == Class.REQUEST:
        raise WireError("not a JOIN answer")
    if msg.cls == Class.ERROR:
        err = msg.get(Attr.ERROR_CODE)
        if err is None:
            raise WireError("JOIN error without ERROR-CODE")
        if err.code == 401 and msg.get(Attr.NS_COOKIE):
            return JoinAnswer(Answer.COOKIE, cookie=msg.get(Attr.NS_COOKIE))
        return JoinAnswer(Answer.REFUSED, error=err)
    status = msg.get(Attr.NS_STATUS)
    observed = msg.get(Attr.XOR_MAPPED_ADDRESS)
    if status == Status.WAITING:
        return JoinAnswer(Answer.WAITING, observed=observed)
    if status == Status.INTRODUCED:
        peer_raw = msg.get(Attr.NS_PEER)
        peer_address = msg.get(Attr.NS_PEER_ADDRESS)
        if peer_raw is None or peer_address is None:
            raise WireError("introduction without NS-PEER / NS-PEER-ADDRESS")
        return JoinAnswer(Answer.INTRODUCED, observed=observed, peer_raw=peer_raw, peer_address=peer_address,
                          nonce=msg.get(Attr.NS_NONCE), room_id=msg.get(Attr.NS_ROOM))
    raise WireError("JOIN answer with unknown status %r" % (status,))
