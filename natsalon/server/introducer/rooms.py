"""The room registry: who waits in which room, pairing, expiry.

Pure: every call takes ``now`` (seconds); no clock, no sockets, so it is
tested with plain numbers.  :class:`IRoomRegistry` is the interface the
introducer uses (a shared store such as Redis can implement it later);
:class:`MemoryRooms` is the in-memory default.

A room holds one waiting member, or two paired members.  Members are told
apart by their join nonce, never by address: a retransmitted or repeated
join with the waiting member's nonce refreshes it and is never paired with
itself.  A paired room lingers ``linger`` seconds, so both members' polls
get their introduction again; any third nonce meanwhile is refused
(:attr:`Outcome.FULL`).  A waiting member expires ``timeout`` seconds after
its last join.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from zope.interface import Interface, implementer

from natsalon.stun import Address


class Outcome(enum.Enum):
    WAITING = "waiting"  #: registered (or refreshed); wait for a peer
    INTRODUCED = "introduced"  #: paired; ``JoinResult.peer`` is the other member
    FULL = "full"  #: the room already has two other members
    TOO_MANY_ROOMS = "too_many_rooms"  #: the registry is at its room cap
    TOO_MANY_FROM_SOURCE = "too_many_from_source"  #: this IP already waits in too many rooms


@dataclass
class Member:
    nonce: bytes
    address: Address  #: public endpoint, as the salon saw it
    blob: bytes  #: the member's JOIN request, handed to the peer verbatim
    via: Any = None  #: the salon socket it joined on (where pushes leave from)


@dataclass
class Room:
    first: Member
    expires: float
    second: Optional[Member] = None


@dataclass
class JoinResult:
    outcome: Outcome
    peer: Optional[Member] = None
    #: True on the join that paired the room: the waiting peer should be told now
    newly_paired: bool = False
    member: Optional[Member] = field(default=None, repr=False)


class IRoomRegistry(Interface):
    """Where the introducer keeps its rooms: exactly the calls
    :class:`natsalon.server.introducer.handler.Introducer` makes.

    Every call may answer at once or later: it returns its result, or a
    :class:`twisted.internet.defer.Deferred` that fires with that result (a
    registry shared through Redis answers over the network).  A failed call
    raises, or its Deferred fails; the introducer counts the failure and
    leaves the JOIN unanswered, so the client's retransmission retries it.

    Time is an argument (seconds, from the salon's clock), never read from
    a clock of the registry's own, so a registry is tested with plain
    numbers.
    """

    def join(room_id: bytes, member: Member, now: float):
        """Register ``member`` in ``room_id``, refresh it, or pair it.

        :return: a :class:`JoinResult`, or a Deferred firing with one.
        """

    def prune(now: float):
        """Forget the rooms expired at ``now``.

        :return: how many went (an ``int``), or a Deferred firing with it.
        """


def source_key(host: str) -> str:
    """What the per-source limit counts: an IPv4 address, or an IPv6
    address's /64 (one host usually holds a whole /64)."""
    if ":" not in host:
        return host
    net = ipaddress.IPv6Network((host.split("%", 1)[0], 64), strict=False)
    return str(net.network_address) + "/64"


@implementer(IRoomRegistry)
class MemoryRooms:
    """The in-memory registry: answers every call at once."""

    def __init__(self, max_rooms: int = 10000, timeout: float = 60.0, linger: float = 15.0,
                 max_per_source: int = 16) -> None:
        self.max_rooms = max_rooms
        self.timeout = timeout
        self.linger = linger
        self.max_per_source = max_per_source
        self._rooms: Dict[bytes, Room] = {}
        self._waiting_per_ip: Dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._rooms)

    def waiting(self) -> int:
        return sum(1 for r in self._rooms.values() if r.second is None)

    def _unwait(self, host: str) -> None:
        ip = source_key(host)
        n = self._waiting_per_ip.get(ip, 0) - 1
        if n > 0:
            self._waiting_per_ip[ip] = n
        else:
            self._waiting_per_ip.pop(ip, None)

    def join(self, room_id: bytes, member: Member, now: float) -> JoinResult:
        room = self._rooms.get(room_id)
        if room is not None and room.expires <= now:
            self._drop(room_id, room)
            room = None
        if room is None:
            if len(self._rooms) >= self.max_rooms:
                return JoinResult(Outcome.TOO_MANY_ROOMS)
            ip = source_key(member.address.host)
            if self._waiting_per_ip.get(ip, 0) >= self.max_per_source:
                return JoinResult(Outcome.TOO_MANY_FROM_SOURCE)
            self._waiting_per_ip[ip] = self._waiting_per_ip.get(ip, 0) + 1
            self._rooms[room_id] = Room(member, now + self.timeout)
            return JoinResult(Outcome.WAITING, member=member)
        first, second = room.first, room.second
        if second is None:
            if member.nonce == first.nonce:
                # the same member again (retransmission or poll): refresh only
                if first.address != member.address:
                    self._unwait(first.address.host)
                    key = source_key(member.address.host)
                    self._waiting_per_ip[key] = self._waiting_per_ip.get(key, 0) + 1
                first.address, first.via = member.address, member.via
                room.expires = now + self.timeout
                return JoinResult(Outcome.WAITING, member=first)
            room.second = member
            room.expires = now + self.linger
            self._unwait(first.address.host)
            return JoinResult(Outcome.INTRODUCED, peer=first, newly_paired=True, member=member)
        if member.nonce == first.nonce:
            first.address, first.via = member.address, member.via
            return JoinResult(Outcome.INTRODUCED, peer=second, member=first)
        if member.nonce == second.nonce:
            second.address, second.via = member.address, member.via
            return JoinResult(Outcome.INTRODUCED, peer=first, member=second)
        return JoinResult(Outcome.FULL)

    def _drop(self, room_id: bytes, room: Room) -> None:
        del self._rooms[room_id]
        if room.second is None:
            self._unwait(room.first.address.host)

    def prune(self, now: float) -> int:
        gone = [(rid, r) for rid, r in self._rooms.items() if r.expires <= now]
        for rid, r in gone:
            self._drop(rid, r)
        return len(gone)
