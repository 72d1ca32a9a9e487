"""JOIN: client <-> introducer, built and parsed here; no sockets, no clock.

JOIN request (client -> salon)::

    NS_ROOM (16 bytes room id)   NS_NONCE (16 bytes, one per session)
    NS_CANDIDATES (our LAN endpoints)   [NS_LEAVE] [NS_STATUS flags]
    [NS_NAT: our NAT as our probe saw it (natsalon.wire.nat)]   [NS_COOKIE]
    [NS_RELAY: our relayed address (a TURN allocation), once we have one]
    [NS_SALON_RTT: our smoothed round trip to the salon (natsalon.wire.nat)]
    MESSAGE-INTEGRITY-SHA256 keyed with k_join (checked by the peer, not the salon)

Salon answers::

    401 + NS_COOKIE              fetch the return-routability cookie, join again with it
    success, NS_STATUS=WAITING   registered; poll (join again) until introduced
    success, NS_STATUS=INTRODUCED + NS_PEER (the peer's JOIN request, verbatim)
        + NS_PEER_ADDRESS (its public endpoint) + XOR-MAPPED-ADDRESS (ours)
        [+ NS_TURN: TURN credentials for the salon's relay, scoped to the room]
    409 room full, 429 too many waiting from this IP, 400 bad join
    503 retry later: the salon is full, or its room registry (Redis) is
        unreachable; the client tries another salon or joins again later
    JOIN indication with the INTRODUCED attributes and NS_NONCE = the recipient's
        nonce: pushed to the waiting member when its peer arrives.
"""

from __future__ import annotations

import enum
import hashlib
import os
from typing import NamedTuple, Optional, Sequence, Tuple

from natsalon.stun import Address, Attr, Class, ErrorCode, Message, Method, StunDecodeError, decode, encode, verify_integrity
from natsalon.stun.client import new_transaction_id
from natsalon.stun.constants import REASONS
from natsalon.wire.common import (
    LEAVE_HASH_SIZE, LEAVE_TOKEN_SIZE, NONCE_SIZE, Status, WireError, check_candidates, pack_candidates,
    unpack_candidates,
)
from natsalon.wire.nat import NS_NAT, NS_SALON_RTT, UNKNOWN_NAT, NatSummary, pack_nat, pack_rtt, unpack_nat, unpack_rtt

#: introduction: TURN credentials for the salon's own relay, ``username
#: NUL password`` in UTF-8 (comprehension-optional: an older client ignores
#: it).  Only in answers to a JOIN that passed the cookie check.
NS_TURN = 0xC0AB
#: JOIN: the member's relayed address (a TURN allocation), packed like
#: NS-CANDIDATES (one address); covered by the JOIN's integrity like the rest
NS_RELAY = 0xC0AC
#: JOIN flag (NS-STATUS): this JOIN updates what the member told its room
#: (its NAT summary, measured after it registered): the salon pushes it to
#: the room's other members at once, as it does a newcomer's JOIN
JOIN_FLAG_UPDATE = 0x2


def pack_turn(credentials: Tuple[str, str]) -> bytes:
    username, password = credentials
    if "\0" in username or "\0" in password:
        raise WireError("TURN credentials with a NUL")
    return username.encode("utf-8") + b"\0" + password.encode("utf-8")


def unpack_turn(value: Optional[bytes]) -> Optional[Tuple[str, str]]:
    """``(username, password)`` of an NS-TURN value; None when absent or malformed."""
    if value is None:
        return None
    username, sep, password = value.partition(b"\0")
    if not sep or not username:
        return None
    try:
        return username.decode("utf-8"), password.decode("utf-8")
    except UnicodeDecodeError:
        return None


def join_request(room_id: bytes, nonce: bytes, candidates: Sequence[Address], k_join: bytes,
                 cookie: Optional[bytes] = None, txid: Optional[bytes] = None, leave_hash: Optional[bytes] = None,
                 flags: int = 0, nat: Optional[NatSummary] = None,
                 relay: Optional[Address] = None, salon_rtt: Optional[float] = None) -> Tuple[Message, bytes]:
    """``(message, bytes)`` of a JOIN request.  ``leave_hash`` is
    :func:`leave_hash` of the token a later LEAVE reveals; ``flags`` are
    JOIN flags (:data:`~natsalon.wire.common.JOIN_FLAG_PLAIN`); ``nat`` the
    summary of our NAT (left out when None); ``relay`` our relayed address
    (left out when None); ``salon_rtt`` our round trip to the salon in
    seconds (left out when None)."""
    attrs = [(Attr.NS_ROOM, room_id), (Attr.NS_NONCE, nonce), (Attr.NS_CANDIDATES, pack_candidates(candidates))]
    if leave_hash:
        attrs.append((Attr.NS_LEAVE, leave_hash))
    if flags:
        attrs.append((Attr.NS_STATUS, flags))
    if nat is not None:
        attrs.append((NS_NAT, pack_nat(nat)))
    if relay is not None:
        attrs.append((NS_RELAY, pack_candidates([relay])))
    if salon_rtt is not None:
        attrs.append((NS_SALON_RTT, pack_rtt(salon_rtt)))
    if cookie:
        attrs.append((Attr.NS_COOKIE, cookie))
    msg = Message(Method.JOIN, Class.REQUEST, txid or new_transaction_id(), tuple(attrs))
    return msg, encode(msg, sha256_key=k_join)


class JoinRequest(NamedTuple):
    room_id: bytes
    nonce: bytes
    candidates: Tuple[Address, ...]
    cookie: Optional[bytes]
    leave_hash: Optional[bytes] = None  #: SHA-256 of the member's leave token, first 16 bytes
    flags: int = 0
    nat: NatSummary = UNKNOWN_NAT  #: the member's NAT summary (unknown when absent)
    relay: Optional[Address] = None  #: the member's relayed address (a TURN allocation)
    salon_rtt: Optional[float] = None  #: the member's round trip to the salon, seconds (None: unknown)


def _relay(value: Optional[bytes]) -> Optional[Address]:
    if value is None:
        return None
    addresses = unpack_candidates(value)
    if len(addresses) != 1:
        raise WireError("NS-RELAY with %d addresses (want 1)" % len(addresses))
    return addresses[0]


def _join_attributes(msg: Message) -> dict:
    """A JOIN request's attributes by type (the first of a repeated one
    wins, as ``msg.get``), after the checks of its shape that come before
    its candidates."""
    if msg.method != Method.JOIN or msg.cls != Class.REQUEST:
        raise WireError("not a JOIN request")
    if msg.classic:
        raise WireError("JOIN without the magic cookie")
    attrs = dict(reversed(msg.attributes))  # one pass
    nonce = attrs.get(Attr.NS_NONCE)
    if Attr.NS_ROOM not in attrs:
        raise WireError("JOIN without NS-ROOM")
    if nonce is None or len(nonce) != NONCE_SIZE:
        raise WireError("JOIN without a %d-byte NS-NONCE" % NONCE_SIZE)
    if Attr.MESSAGE_INTEGRITY_SHA256 not in attrs:
        raise WireError("JOIN without MESSAGE-INTEGRITY-SHA256")
    return attrs


def _leave_hash(attrs: dict) -> Optional[bytes]:
    leave = attrs.get(Attr.NS_LEAVE)
    if leave is not None and len(leave) != LEAVE_HASH_SIZE:
        raise WireError("JOIN with a %d-byte NS-LEAVE (want %d)" % (len(leave), LEAVE_HASH_SIZE))
    return leave


def parse_join_request(msg: Message) -> JoinRequest:
    """Check a JOIN request's shape (the salon cannot check its MAC)."""
    attrs = _join_attributes(msg)
    cands = unpack_candidates(attrs.get(Attr.NS_CANDIDATES, b""))
    leave = _leave_hash(attrs)
    return JoinRequest(attrs[Attr.NS_ROOM], attrs[Attr.NS_NONCE], cands, attrs.get(Attr.NS_COOKIE), leave,
                       attrs.get(Attr.NS_STATUS, 0), unpack_nat(attrs.get(NS_NAT)), _relay(attrs.get(NS_RELAY)),
                       unpack_rtt(attrs.get(NS_SALON_RTT)))


class SalonJoin(NamedTuple):
    """What the salon reads of a JOIN request: it hands the rest on verbatim."""

    room_id: bytes
    nonce: bytes
    cookie: Optional[bytes]
    leave_hash: Optional[bytes] = None
    flags: int = 0


def check_join_request(msg: Message) -> SalonJoin:
    """The salon's :func:`parse_join_request`: the same checks in the same
    order (a :class:`WireError` with the same reason for exactly the same
    requests), without making objects of what it only hands on (the
    candidates)."""
    attrs = _join_attributes(msg)
    check_candidates(attrs.get(Attr.NS_CANDIDATES, b""))
    leave = _leave_hash(attrs)
    for attr_type, check in _OPTIONAL_CHECKS:
        value = attrs.get(attr_type)
        if value is not None:
            check(value)
    return SalonJoin(attrs[Attr.NS_ROOM], attrs[Attr.NS_NONCE], attrs.get(Attr.NS_COOKIE), leave,
                     attrs.get(Attr.NS_STATUS, 0))


#: the optional attributes a JOIN's parse checks, in its order
_OPTIONAL_CHECKS = ((NS_NAT, unpack_nat), (NS_RELAY, _relay), (NS_SALON_RTT, unpack_rtt))


class PeerJoin(NamedTuple):
    nonce: bytes
    candidates: Tuple[Address, ...]  #: its LAN endpoints, as it reported them
    flags: int = 0  #: its JOIN flags (JOIN_FLAG_PLAIN: it does not encrypt)
    nat: NatSummary = UNKNOWN_NAT  #: its NAT summary, authenticated with the rest of its JOIN
    relay: Optional[Address] = None  #: its relayed address (TURN), authenticated likewise
    salon_rtt: Optional[float] = None  #: its round trip to the salon, seconds, authenticated likewise


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
    return PeerJoin(req.nonce, req.candidates, req.flags, req.nat, req.relay, req.salon_rtt)


def _error(method: int, txid: bytes, code: int, extra=()) -> bytes:
    attrs = ((Attr.ERROR_CODE, ErrorCode(code, REASONS.get(code, "Error"))),) + tuple(extra)
    return encode(Message(method, Class.ERROR, txid, attrs))


def cookie_response(txid: bytes, cookie: bytes) -> bytes:
    return _error(Method.JOIN, txid, 401, ((Attr.NS_COOKIE, cookie),))


def join_error(txid: bytes, code: int) -> bytes:
    return _error(Method.JOIN, txid, code)


#: the error code of "retry later" (RFC 8489's 503 Server Busy): a client
#: tries another salon, or the same one again after a while; never fatal
RETRY_LATER = 503


def retry_later(txid: bytes) -> bytes:
    """503: the salon cannot place members now (its rooms are full, or its
    room registry is unreachable); 48 bytes, less than any JOIN that
    reaches the registry (it carries a cookie)."""
    return _error(Method.JOIN, txid, RETRY_LATER)


def waiting_response(txid: bytes, observed: Address) -> bytes:
    return encode(Message(Method.JOIN, Class.SUCCESS, txid, (
        (Attr.XOR_MAPPED_ADDRESS, observed), (Attr.NS_STATUS, Status.WAITING))))


def introduction(txid: bytes, observed: Address, my_nonce: bytes, room_id: bytes,
                 peer_raw: bytes, peer_address: Address, indication: bool = False,
                 others: Sequence[Tuple[bytes, Address]] = (),
                 turn: Optional[Tuple[str, str]] = None) -> bytes:
    """An introduction: the peer's JOIN and endpoint, then ``others``
    (more members of the room, newest first: the client keeps the first
    whose JOIN verifies with its k_join), then ``turn`` credentials
    (username, password) for the salon's relay, if any."""
    attrs = (
        (Attr.XOR_MAPPED_ADDRESS, observed),
        (Attr.NS_STATUS, Status.INTRODUCED),
        (Attr.NS_ROOM, room_id),
        (Attr.NS_NONCE, my_nonce),
        (Attr.NS_PEER_ADDRESS, peer_address),
        (Attr.NS_PEER, peer_raw),
    )
    for raw, address in others:
        attrs += ((Attr.NS_PEER_ADDRESS, address), (Attr.NS_PEER, raw))
    if turn is not None:
        attrs += ((NS_TURN, pack_turn(turn)),)
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
    #: the members introduced, newest first: ``(their JOIN verbatim, their endpoint)``
    peers: Tuple[Tuple[bytes, Address], ...] = ()
    nonce: Optional[bytes] = None
    room_id: Optional[bytes] = None
    error: Optional[ErrorCode] = None
    #: (username, password) for the salon's TURN relay, when it runs one
    turn: Optional[Tuple[str, str]] = None

    @property
    def retry_later(self) -> bool:
        """A 503: try another salon, or this one again later."""
        return self.kind is Answer.REFUSED and self.error is not None and self.error.code == RETRY_LATER

    @property
    def peer_raw(self) -> Optional[bytes]:
        return self.peers[0][0] if self.peers else None

    @property
    def peer_address(self) -> Optional[Address]:
        return self.peers[0][1] if self.peers else None


def _peers(msg: Message) -> Tuple[Tuple[bytes, Address], ...]:
    """The (NS-PEER-ADDRESS, NS-PEER) pairs of an introduction, in order."""
    out, address = [], None
    for t, v in msg.attributes:
        if t == Attr.NS_PEER_ADDRESS:
            address = v
        elif t == Attr.NS_PEER:
            if address is None:
                raise WireError("NS-PEER without its NS-PEER-ADDRESS")
            out.append((v, address))
            address = None
    return tuple(out)


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
        peers = _peers(msg)
        if not peers:
            raise WireError("introduction without NS-PEER / NS-PEER-ADDRESS")
        return JoinAnswer(Answer.INTRODUCED, observed=observed, peers=peers, nonce=msg.get(Attr.NS_NONCE),
                          room_id=msg.get(Attr.NS_ROOM), turn=unpack_turn(msg.get(NS_TURN)))
    raise WireError("JOIN answer with unknown status %r" % (status,))


# -- LEAVE -------------------------------------------------------------------
# A clean exit frees the member at once.  The salon cannot check k_join, so
# a LEAVE proves itself differently: the JOIN carried SHA-256(token)[:16]
# and the LEAVE reveals the token, which only the member knew until now.

def new_leave_token() -> bytes:
    return os.urandom(LEAVE_TOKEN_SIZE)


def leave_hash(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()[:LEAVE_HASH_SIZE]


def leave_request(room_id: bytes, nonce: bytes, token: bytes) -> bytes:
    msg = Message(Method.LEAVE, Class.REQUEST, new_transaction_id(),
                  ((Attr.NS_ROOM, room_id), (Attr.NS_NONCE, nonce), (Attr.NS_LEAVE, token)))
    return encode(msg)


class LeaveRequest(NamedTuple):
    room_id: bytes
    nonce: bytes
    token: bytes


def parse_leave_request(msg: Message) -> LeaveRequest:
    if msg.method != Method.LEAVE or msg.cls != Class.REQUEST or msg.classic:
        raise WireError("not a LEAVE request")
    room, nonce, token = msg.get(Attr.NS_ROOM), msg.get(Attr.NS_NONCE), msg.get(Attr.NS_LEAVE)
    if room is None or nonce is None or len(nonce) != NONCE_SIZE:
        raise WireError("LEAVE without NS-ROOM or a %d-byte NS-NONCE" % NONCE_SIZE)
    if token is None or len(token) != LEAVE_TOKEN_SIZE:
        raise WireError("LEAVE without a %d-byte NS-LEAVE token" % LEAVE_TOKEN_SIZE)
    return LeaveRequest(room, nonce, token)


def leave_response(txid: bytes) -> bytes:
    """The salon's answer to a LEAVE: 20 bytes, smaller than the request."""
    return encode(Message(Method.LEAVE, Class.SUCCESS, txid))
