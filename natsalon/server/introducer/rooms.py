"""The room registry: who is in which room, and for how long.

Pure: every call takes ``now`` (seconds); no clock, no sockets, so it is
tested with plain numbers.  :class:`IRoomRegistry` is the interface the
introducer uses (a shared store such as Redis can implement it later);
:class:`MemoryRooms` is the in-memory default.

A room is a set of up to ``max_members`` members, each known by its join
nonce and the address it joins from.  The salon cannot tell the genuine
peer from someone who copied the room id (it cannot check the JOIN's
MAC), so it does not pick: every member is introduced to every other, and
the clients keep the first one whose JOIN verifies.  There is no second place to squat and no "paired"
state to linger:

- a JOIN with the nonce and from the address of a member refreshes it (its
  JOIN, socket and last-seen time); any other adds a member, replacing
  the one at that address if there is one (one socket is one client: it
  joined again and its LEAVE was lost).  A nonce from a new address is a
  new member, not a move: whoever copied a member's nonce from the path
  cannot take its place (it has no cookie for the member's address), and
  after a NAT rebinding the old entry goes quiet and expires;
- a member not seen for ``member_timeout`` seconds is gone (clients poll
  every second while they wait, and stop once introduced, so both ends of
  a pairing leave the room on their own a few seconds later);
- a LEAVE revealing the token whose hash the member's JOIN carried removes
  it at once;
- a room full of members answers :attr:`Outcome.FULL`; one source IP (an
  IPv6 /64) may hold ``max_per_source`` members in all rooms, the registry
  ``max_rooms`` rooms.
"""

from __future__ import annotations

import enum
import hmac
import ipaddress
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

from zope.interface import Interface, implementer

from natsalon.stun import Address

#: a member not seen for this long is dropped: three missed 1 s polls
MEMBER_TIMEOUT = 3.5
MAX_MEMBERS = 6


class Outcome(enum.Enum):
    WAITING = "waiting"  #: alone in the room (added or refreshed); poll on
    INTRODUCED = "introduced"  #: ``JoinResult.others`` are the room's other members
    FULL = "full"  #: the room holds ``max_members`` other members
    TOO_MANY_ROOMS = "too_many_rooms"  #: the registry is at its room cap
    TOO_MANY_FROM_SOURCE = "too_many_from_source"  #: this IP already holds too many members


class Member:
    """One member of a room; a member is itself (compared and hashed by
    identity: the registry keeps it in its expiry order).  Slotted by hand,
    not ``@dataclass(slots=True)``: that needs Python 3.10, and the salon
    runs on PyPy 3.9 too."""

    __slots__ = ("nonce", "address", "blob", "via", "leave_hash", "seen")

    def __init__(self, nonce: bytes, address: Address, blob: bytes, via: Any = None,
                 leave_hash: Optional[bytes] = None, seen: float = 0.0) -> None:
        self.nonce = nonce
        self.address = address  #: public endpoint, as the salon saw it
        self.blob = blob  #: the member's JOIN request, handed to the others verbatim
        self.via = via  #: the salon socket it joined on (where pushes leave from)
        self.leave_hash = leave_hash  #: :func:`natsalon.wire.leave_hash` of its LEAVE token
        self.seen = seen  #: when its latest JOIN came (set by the registry)

    def __repr__(self) -> str:
        return "Member(nonce=%r, seen=%r)" % (self.nonce, self.seen)


@dataclass
class JoinResult:
    outcome: Outcome
    #: the joiner as the room holds it (WAITING, INTRODUCED)
    member: Optional[Member] = field(default=None, repr=False)
    #: the room's other members, most recently seen first (INTRODUCED)
    others: Tuple[Member, ...] = ()
    #: the joiner is new to the room: tell ``others`` about it now
    newcomer: bool = False


class IRoomRegistry(Interface):
    """Where the introducer keeps its rooms: exactly the calls
    :class:`natsalon.server.introducer.handler.Introducer` makes.

    Every call may answer at once or later: it returns its result, or a
    :class:`twisted.internet.defer.Deferred` that fires with that result (a
    registry shared through Redis answers over the network).  A failed call
    raises, or its Deferred fails; the introducer counts the failure and
    leaves the request unanswered, so the client's retransmission retries
    it.

    Time is an argument (seconds, from the salon's clock), never read from
    a clock of the registry's own, so a registry is tested with plain
    numbers.
    """

    def join(room_id: bytes, member: Member, now: float):
        """Add ``member`` to ``room_id``, or refresh it (same nonce, same
        address).

        :return: a :class:`JoinResult`, or a Deferred firing with one.
        """

    def leave(room_id: bytes, nonce: bytes, leave_hash: bytes, now: float):
        """Remove the member ``nonce`` (at every address) if its JOIN
        carried ``leave_hash``.

        :return: True if it was removed (a ``bool``), or a Deferred firing
            with it.
        """

    def prune(now: float):
        """Forget the members not seen for the member timeout at ``now``.

        :return: how many went (an ``int``), or a Deferred firing with it.
        """


def source_key(host: str) -> str:
    """What the per-source limit counts: an IPv4 address, or an IPv6
    address's /64 (one host usually holds a whole /64)."""
    if ":" not in host:
        return host
    net = ipaddress.IPv6Network((host.split("%", 1)[0], 64), strict=False)
    return str(net.network_address) + "/64"


def newest_first(members) -> Tuple[Member, ...]:
    """Most recently seen first; among equals, the latest arrival first
    (``members`` in arrival order)."""
    return tuple(sorted(reversed(list(members)), key=lambda m: m.seen, reverse=True))


#: a room's members by (nonce, address), in arrival order
_Room = Dict[Tuple[bytes, Address], Member]


@implementer(IRoomRegistry)
class MemoryRooms:
    """The in-memory registry: answers every call at once.

    Besides the rooms it keeps every member in the order of its latest
    JOIN, which is the order in which members expire while the clock only
    moves on: a prune takes the expired ones off the front, at a cost in
    the members it removes, not in all it holds.  Should a JOIN come with
    an earlier time than one before it (the clock was set back), the next
    prune looks at every member, as a prune of no order would, and puts
    the order right."""

    def __init__(self, max_rooms: int = 10000, member_timeout: float = MEMBER_TIMEOUT,
                 max_members: int = MAX_MEMBERS, max_per_source: int = 16) -> None:
        self.max_rooms = max_rooms
        self.member_timeout = member_timeout
        self.max_members = max_members
        self.max_per_source = max_per_source
        self._rooms: Dict[bytes, _Room] = {}
        self._per_source: Dict[str, int] = {}
        #: every member -> its room id, in the order of the members' latest JOINs
        self._order: Dict[Member, bytes] = {}
        self._latest = float("-inf")  #: the latest time a member was seen at
        self._ordered = True  #: ``_order`` is by ``seen`` (no JOIN came with an earlier time)

    def __len__(self) -> int:
        return len(self._rooms)

    def members(self) -> int:
        return len(self._order)

    def _count(self, host: str, n: int) -> None:
        key = source_key(host)
        total = self._per_source.get(key, 0) + n
        if total > 0:
            self._per_source[key] = total
        else:
            self._per_source.pop(key, None)

    def _remove(self, room_id: bytes, key: Tuple[bytes, Address]) -> None:
        room = self._rooms[room_id]
        member = room.pop(key)
        del self._order[member]
        self._count(member.address.host, -1)
        if not room:
            del self._rooms[room_id]

    def _seen(self, member: Member, room_id: bytes, now: float) -> None:
        """``member`` (in ``room_id``) is seen at ``now``: last in the order."""
        order = self._order
        order.pop(member, None)
        order[member] = room_id
        member.seen = now
        if now >= self._latest:
            self._latest = now
        else:
            self._ordered = False

    def _expire(self, room_id: bytes, now: float) -> int:
        room = self._rooms.get(room_id)
        if room is None:
            return 0
        timeout = self.member_timeout
        old = [k for k, m in room.items() if m.seen + timeout <= now]
        for key in old:
            self._remove(room_id, key)
        return len(old)

    def join(self, room_id: bytes, member: Member, now: float) -> JoinResult:
        room = self._rooms.get(room_id)
        if room is not None:
            if self._expire(room_id, now):
                room = self._rooms.get(room_id)
        if room is not None:
            held = room.get((member.nonce, member.address))
            if held is not None:
                return self._refresh(room_id, room, held, member, now)
            for key in [k for k, m in room.items() if m.address == member.address]:
                self._remove(room_id, key)  # that socket joined again
            room = self._rooms.get(room_id)
        refused = self._refuse(room, member)
        if refused is not None:
            return JoinResult(refused)
        if room is None:
            room = self._rooms[room_id] = {}
        self._count(member.address.host, 1)
        room[member.nonce, member.address] = member
        self._seen(member, room_id, now)
        return self._result(room, member, newcomer=True)

    def _refuse(self, room: Optional[_Room], member: Member) -> Optional[Outcome]:
        """Why a new member cannot come in; None: it can."""
        if room is not None and len(room) >= self.max_members:
            return Outcome.FULL
        if room is None and len(self._rooms) >= self.max_rooms:
            return Outcome.TOO_MANY_ROOMS
        if self._per_source.get(source_key(member.address.host), 0) >= self.max_per_source:
            return Outcome.TOO_MANY_FROM_SOURCE
        return None

    def _refresh(self, room_id: bytes, room: _Room, held: Member, member: Member, now: float) -> JoinResult:
        """The same member again (a poll or a retransmission)."""
        held.via, held.blob = member.via, member.blob
        self._seen(held, room_id, now)
        if held.leave_hash is None:
            held.leave_hash = member.leave_hash
        return self._result(room, held, newcomer=False)

    @staticmethod
    def _result(room: _Room, member: Member, newcomer: bool) -> JoinResult:
        """``member``'s outcome in ``room`` (which holds it); the common
        rooms of one and two members without sorting."""
        if len(room) == 1:
            return JoinResult(Outcome.WAITING, member)
        if len(room) == 2:
            a, b = room.values()
            other = b if a is member else a
            others: Tuple[Member, ...] = (other,) if other.nonce != member.nonce else ()
        else:
            others = newest_first(m for m in room.values() if m.nonce != member.nonce)
        if not others:
            return JoinResult(Outcome.WAITING, member)
        return JoinResult(Outcome.INTRODUCED, member, others, newcomer)

    def leave(self, room_id: bytes, nonce: bytes, leave_hash: bytes, now: float) -> bool:
        room = self._rooms.get(room_id, {})
        proven = [k for k, m in room.items() if m.nonce == nonce and m.leave_hash is not None
                  and hmac.compare_digest(m.leave_hash, leave_hash)]
        for key in proven:
            self._remove(room_id, key)
        return bool(proven)

    def prune(self, now: float) -> int:
        if not self._ordered:
            return self._prune_all(now)
        timeout = self.member_timeout
        expired = []
        for member in self._order:  # the front of the order, up to the first still current
            if member.seen + timeout > now:
                break
            expired.append(member)
        for member in expired:
            self._remove(self._order[member], (member.nonce, member.address))
        return len(expired)

    def _prune_all(self, now: float) -> int:
        """Prune every room, then order the members by ``seen`` again."""
        n = sum(self._expire(room_id, now) for room_id in list(self._rooms))
        self._order = dict(sorted(self._order.items(), key=lambda item: item[0].seen))
        self._ordered = True
        return n
