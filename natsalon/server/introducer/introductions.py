"""The introductions of one JOIN: the answer to the member who joined and
the indications pushed to the room's others, sans-IO.

What they share is built once per JOIN (:class:`Introductions`): the
NS-ROOM and NS-TURN attributes, and each listed member's NS-PEER-ADDRESS
and NS-PEER (an IPv4 member's entry serves every recipient; an IPv6 one
is XOR-ed with each message's transaction id).  The messages are
assembled from those bytes (:mod:`natsalon.wire.introparts`), byte for
byte what :func:`natsalon.wire.introduction` encodes.

An introduction stays within :data:`MAX_INTRODUCTION` bytes: members that
do not fit are left out, and when some are, the list starts at another
member every second (``turn``), so none is left out of every answer.
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Tuple

from natsalon.server.introducer.rooms import Member
from natsalon.server.binding import xor_mapped_tail
from natsalon.stun import Address, Attr
from natsalon.wire import introparts

#: the largest introduction sent: IPv6's minimum MTU (1280) leaves 1232
#: bytes of UDP payload; this keeps clear of it.  It lists two members with
#: eight IPv6 candidates each, or four with two IPv4 candidates.
MAX_INTRODUCTION = 1024
_HEADER = 20
_PEER_ADDRESS = Attr.NS_PEER_ADDRESS


def fitting(size: int, costs: Sequence[Tuple[object, int]], turn: int = 0) -> list:
    """The items of ``costs`` (``(item, bytes it adds)``, in order) that an
    introduction of ``size`` bytes so far can list within
    :data:`MAX_INTRODUCTION`, leaving out those that do not fit.  When not
    all fit, the order is first rotated by ``turn`` (the clock's second:
    each poll starts at another member)."""
    order = list(costs)
    if order and size + sum(c for _, c in order) > MAX_INTRODUCTION:
        k = turn % len(order)
        order = order[k:] + order[:k]
    out = []
    for item, cost in order:
        if size + cost <= MAX_INTRODUCTION:
            out.append(item)
            size += cost
    return out


class TransactionIds:
    """Random 12-byte transaction ids for the pushed indications, cut from
    one ``os.urandom`` read of ``batch`` ids at a time (one system call
    per ``batch`` pushes, not one per push)."""

    def __init__(self, batch: int = 256) -> None:
        self._size = 12 * batch
        self._pool = b""
        self._at = 0

    def __call__(self) -> bytes:
        at = self._at
        if at >= len(self._pool):
            self._pool, at = os.urandom(self._size), 0
        self._at = at + 12
        return self._pool[at:at + 12]


#: cached XOR-MAPPED-ADDRESS attributes at most (then the cache starts over)
TAILS = 65536


def mapped_attribute(address: Address, txid: bytes, tails: Dict[tuple, bytes], limit: int = TAILS) -> bytes:
    """The XOR-MAPPED-ADDRESS attribute of ``address`` in a message
    ``txid``; for IPv4 (where it does not depend on ``txid``) from
    ``tails`` (``(host, port)`` -> the attribute, at most ``limit`` of
    them), which it fills."""
    host = address[0]
    tail = tails.get(address)
    if tail is None:
        if ":" in host:
            return introparts.xor_address(Attr.XOR_MAPPED_ADDRESS, address, txid)
        if len(tails) >= limit:
            tails.clear()
        tail = tails[(host, address[1])] = xor_mapped_tail(host, address[1])
    return tail


class Introductions:
    """The introductions of one JOIN into ``room_id``, with ``turn``
    credentials (None: no relay); IPv4 address attributes come from, and
    go to, ``tails`` (see :func:`mapped_attribute`)."""

    __slots__ = ("room", "turn", "_tails", "_entries")

    def __init__(self, room_id: bytes, turn: Optional[tuple], tails: Optional[Dict[tuple, bytes]] = None) -> None:
        self.room = introparts.room_attribute(room_id)
        self.turn = introparts.turn_attribute(turn)
        self._tails = {} if tails is None else tails
        self._entries: Dict[int, bytes] = {}  #: id(member) -> its entry (IPv4 members)

    def entry(self, member: Member, txid: bytes) -> bytes:
        """``member``'s NS-PEER-ADDRESS and NS-PEER in a message ``txid``."""
        got = self._entries.get(id(member))
        if got is None:
            address = member.address
            if ":" in address.host:  # XOR-ed with each message's txid: not kept
                return introparts.peer_entry(introparts.xor_address(_PEER_ADDRESS, address, txid), member.blob)
            got = self._entries[id(member)] = introparts.peer_entry(
                introparts.renamed(mapped_attribute(address, txid, self._tails), _PEER_ADDRESS), member.blob)
        return got

    def message(self, txid: bytes, to: Address, nonce: bytes, first: Optional[Member],
                others: Sequence[Member], now: int, indication: bool = False) -> Optional[bytes]:
        """The introduction for the member at ``to`` (its ``nonce``):
        ``first`` always (None: none), then as many of ``others`` as fit; None when
        nothing would be listed or ``first`` does not fit."""
        head = introparts.head(mapped_attribute(to, txid, self._tails), self.room, nonce)
        size = _HEADER + len(head) + len(self.turn)
        listed: List[bytes] = []
        if first is not None:
            listed.append(self.entry(first, txid))
            size += len(listed[0])
            if size > MAX_INTRODUCTION:
                return None
        if others:
            entries = [self.entry(m, txid) for m in others]
            if size + sum(map(len, entries)) <= MAX_INTRODUCTION:
                listed += entries
            else:
                listed += fitting(size, [(e, len(e)) for e in entries], now)
        if not listed:
            return None
        return introparts.assemble(txid, head, listed, self.turn, indication)
