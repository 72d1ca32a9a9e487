"""The room registry's contract: what every ``IRoomRegistry`` must do.

:class:`RoomRegistryContract` is a mixin of tests; a concrete test class
mixes it in and implements two hooks:

- ``make_registry(**settings)``: a fresh, empty registry with the given
  settings (``max_rooms``, ``member_timeout``, ``max_members``,
  ``max_per_source``; the defaults otherwise);
- ``resolve(result)``: the value of a registry call's result, which may be
  a Deferred (a registry across the network answers later).

Time is passed in as plain numbers (the registry has no clock of its own),
so the same tests run against a registry whose keys expire in Redis by the
``now`` it is given.  Only the interface is used: nothing here looks
inside a registry.
"""

from __future__ import annotations

from zope.interface.verify import verifyObject

from natsalon import wire
from natsalon.server.introducer.rooms import IRoomRegistry, Member, Outcome
from natsalon.stun import Address

ROOM = b"r" * 16
A = Address("192.0.2.1", 1000)
B = Address("192.0.2.2", 2000)
C = Address("192.0.2.3", 3000)
S = Address("203.0.113.66", 6666)  # a squatter


def token(name: bytes) -> bytes:
    return (name * 16)[:16]


def member(name: bytes, address: Address, via=(0, 0)) -> Member:
    """A member whose nonce, JOIN and leave token derive from ``name``."""
    return Member((name * 16)[:16], address, b"join-" + name, via, wire.leave_hash(token(name)))


class RoomRegistryContract:
    def make_registry(self, **settings):
        raise NotImplementedError

    def resolve(self, result):
        raise NotImplementedError

    # -- helpers -------------------------------------------------------

    def setup_method(self, method) -> None:
        self.rooms = self.make_registry()

    def join(self, name: bytes, address: Address, now: float, room: bytes = ROOM, via=(0, 0)):
        return self.resolve(self.rooms.join(room, member(name, address, via), now))

    def leave(self, name: bytes, now: float, revealed: bytes = None, room: bytes = ROOM) -> bool:
        nonce = (name * 16)[:16]
        return self.resolve(self.rooms.leave(room, nonce, wire.leave_hash(revealed or token(name)), now))

    def prune(self, now: float) -> int:
        return self.resolve(self.rooms.prune(now))

    @staticmethod
    def listed(result):
        return [m.blob for m in result.others]

    # -- the interface -------------------------------------------------

    def test_provides_the_registry_interface(self):
        verifyObject(IRoomRegistry, self.rooms)
        # the interface is what the introducer calls, nothing more
        assert sorted(IRoomRegistry.names()) == ["join", "leave", "prune"]

    # -- joining -------------------------------------------------------

    def test_alone_waits_then_each_is_introduced_to_the_other(self):
        r = self.join(b"a", A, 0)
        assert r.outcome is Outcome.WAITING and r.member.address == A and not r.others
        r = self.join(b"b", B, 1)
        assert r.outcome is Outcome.INTRODUCED and r.newcomer
        assert self.listed(r) == [b"join-a"] and r.others[0].address == A
        # the first member's next poll lists the second; it is no newcomer
        r = self.join(b"a", A, 1.5)
        assert r.outcome is Outcome.INTRODUCED and not r.newcomer
        assert self.listed(r) == [b"join-b"] and r.others[0].address == B

    def test_a_repeated_join_refreshes_and_never_lists_itself(self):
        for t in range(5):
            r = self.join(b"a", A, t)
            assert r.outcome is Outcome.WAITING and not r.others
        assert self.prune(5) == 0  # seen at 4

    def test_members_are_listed_most_recently_seen_first(self):
        self.join(b"a", A, 0)
        self.join(b"s", S, 0.2)
        self.join(b"a", A, 1)  # a polls: seen after s
        r = self.join(b"b", B, 1.1)
        assert self.listed(r) == [b"join-a", b"join-s"]
        r = self.join(b"s", S, 1.2)
        assert self.listed(r) == [b"join-b", b"join-a"]
        # seen at the same time: the later arrival first
        r = self.join(b"c", C, 2)
        self.join(b"a", A, 3)
        self.join(b"b", B, 3)
        r = self.join(b"c", C, 3)
        assert self.listed(r) == [b"join-b", b"join-a", b"join-s"]

    def test_a_nonce_from_another_address_is_another_member_never_a_move(self):
        # whoever copied a's nonce off the path joins from its own address:
        # a stays where it is, and a's peers get both (a's JOIN verifies,
        # the copy's cannot: its cookie differs)
        self.join(b"a", A, 0)
        r = self.join(b"a", S, 0.5)
        assert r.outcome is Outcome.WAITING  # alone with its own nonce
        r = self.join(b"b", B, 1)
        assert sorted(m.address for m in r.others) == sorted([A, S])
        # a after a NAT rebinding: its old entry goes quiet and expires, the
        # new one is listed first; a member never sees entries of its nonce
        moved = Address("192.0.2.9", 999)
        r = self.join(b"a", moved, 2, via=(0, 1))
        assert [m.address for m in r.others] == [B]
        r = self.join(b"b", B, 2.5)
        assert r.others[0].address == moved and r.others[0].via == (0, 1)
        assert self.prune(4.1) == 2  # a at A (seen at 0) and the copy (0.5)
        assert [m.address for m in self.join(b"b", B, 4.2).others] == [moved]

    def test_leave_removes_the_nonce_at_every_address(self):
        self.join(b"a", A, 0)
        self.join(b"a", Address("192.0.2.9", 999), 1)
        assert self.leave(b"a", 1)
        assert self.join(b"b", B, 1).outcome is Outcome.WAITING

    def test_a_new_nonce_from_a_members_address_replaces_it(self):
        # one socket is one client: it joined again (its LEAVE was lost)
        self.join(b"a", A, 0)
        self.join(b"b", B, 0)
        r = self.join(b"n", A, 1)
        assert r.outcome is Outcome.INTRODUCED and r.newcomer and self.listed(r) == [b"join-b"]
        r = self.join(b"b", B, 1)
        assert self.listed(r) == [b"join-n"]

    def test_a_full_room_refuses_a_new_member_not_a_known_one(self):
        self.rooms = self.make_registry(max_members=3)
        for name, address in ((b"a", A), (b"b", B), (b"c", C)):
            self.join(name, address, 0)
        assert self.join(b"s", S, 1).outcome is Outcome.FULL
        assert self.join(b"a", A, 1).outcome is Outcome.INTRODUCED  # a member polls on
        assert self.leave(b"c", 1)
        assert self.join(b"s", S, 1).outcome is Outcome.INTRODUCED

    # -- expiry --------------------------------------------------------

    def test_a_member_not_seen_for_the_timeout_is_pruned(self):
        self.rooms = self.make_registry(member_timeout=3.5)
        self.join(b"a", A, 0)
        self.join(b"a", A, 1)  # a poll refreshes
        assert self.prune(4.4) == 0
        assert self.prune(4.5) == 1
        assert self.join(b"b", B, 5).outcome is Outcome.WAITING  # nobody left to meet

    def test_the_default_timeout_is_three_missed_polls(self):
        self.join(b"a", A, 0)
        assert self.prune(3) == 0  # polls at 1, 2 and 3 missed: still there
        assert self.prune(3.5) == 1

    def test_an_expired_member_is_not_met_even_before_a_prune(self):
        self.rooms = self.make_registry(member_timeout=3.5)
        self.join(b"a", A, 0)
        assert self.join(b"b", B, 3.5).outcome is Outcome.WAITING

    def test_an_introduced_pair_leaves_no_lingering_room(self):
        # both ends stop polling once introduced: a restarted end (a new
        # nonce) gets in at once and meets whoever still polls
        self.join(b"a", A, 0)
        self.join(b"b", B, 1)
        self.join(b"a", A, 1.2)
        b2 = Address(B.host, 2001)
        r = self.join(b"b2", b2, 1.5)  # b restarted at once: never refused
        assert r.outcome is Outcome.INTRODUCED and set(self.listed(r)) == {b"join-a", b"join-b"}
        self.join(b"b2", b2, 4)  # b2 polls on; a and the old b went quiet at 1.2 and 1
        assert self.prune(4.9) == 2
        r = self.join(b"a2", A, 5.1)  # a restarts in turn: it meets b2
        assert r.outcome is Outcome.INTRODUCED and self.listed(r) == [b"join-b2"]

    def test_restarts_are_never_refused(self):
        # an end that restarts again and again, faster than its old
        # entries expire, is never 409'd with the default room size
        self.join(b"a", A, 0)
        for i in range(1, 40):
            t = float(i)
            r = self.join(bytes([i]), Address(B.host, 2000 + i), t)
            assert r.outcome is Outcome.INTRODUCED, (i, r.outcome)
            self.join(b"a", A, t)  # a polls on
            self.prune(t)

    # -- leaving -------------------------------------------------------

    def test_leave_with_the_token_removes_the_member_at_once(self):
        self.join(b"a", A, 0)
        assert self.leave(b"a", 1)
        assert self.join(b"b", B, 1).outcome is Outcome.WAITING
        assert not self.leave(b"a", 1)  # gone already
        assert self.prune(100) == 1  # only b

    def test_leave_without_the_right_token_changes_nothing(self):
        self.join(b"a", A, 0)
        assert not self.leave(b"a", 0, revealed=token(b"x"))
        assert not self.leave(b"x", 0)  # no such member
        assert not self.leave(b"a", 0, room=b"o" * 16)  # another room
        r = self.join(b"b", B, 1)
        assert self.listed(r) == [b"join-a"]

    def test_a_member_whose_join_had_no_leave_hash_cannot_leave(self):
        self.resolve(self.rooms.join(ROOM, Member(b"q" * 16, A, b"join-q", (0, 0)), 0))
        assert not self.resolve(self.rooms.leave(ROOM, b"q" * 16, wire.leave_hash(b"\0" * 16), 0))

    # -- caps ----------------------------------------------------------

    def test_room_cap(self):
        self.rooms = self.make_registry(max_rooms=2)
        assert self.join(b"a", A, 0, room=b"1" * 16).outcome is Outcome.WAITING
        assert self.join(b"b", B, 0, room=b"2" * 16).outcome is Outcome.WAITING
        assert self.join(b"c", C, 0, room=b"3" * 16).outcome is Outcome.TOO_MANY_ROOMS
        assert self.join(b"c", C, 0, room=b"1" * 16).outcome is Outcome.INTRODUCED  # an existing room
        assert self.leave(b"b", 1, room=b"2" * 16)  # room 2 is empty: gone
        assert self.join(b"c", Address(C.host, 1), 1, room=b"3" * 16).outcome is Outcome.WAITING

    def test_per_source_cap_freed_by_leave_and_expiry(self):
        self.rooms = self.make_registry(max_per_source=2, member_timeout=3.5)
        a1, a2 = Address(A.host, 1), Address(A.host, 2)
        assert self.join(b"x", a1, 0, room=b"1" * 16).outcome is Outcome.WAITING
        assert self.join(b"y", a2, 0, room=b"2" * 16).outcome is Outcome.WAITING
        assert self.join(b"z", a2, 0, room=b"3" * 16).outcome is Outcome.TOO_MANY_FROM_SOURCE
        assert self.join(b"z", a1, 0, room=b"2" * 16).outcome is Outcome.TOO_MANY_FROM_SOURCE
        assert self.join(b"y", a2, 1, room=b"2" * 16).outcome is Outcome.WAITING  # a member polls on
        assert self.leave(b"x", 1, room=b"1" * 16)
        assert self.join(b"z", a2, 1, room=b"3" * 16).outcome is Outcome.WAITING
        self.prune(100)
        assert self.join(b"v", a1, 100, room=b"4" * 16).outcome is Outcome.WAITING
        assert self.join(b"w", a2, 100, room=b"5" * 16).outcome is Outcome.WAITING

    def test_ipv6_sources_count_per_64(self):
        self.rooms = self.make_registry(max_per_source=2)
        outcomes = [self.join(bytes([i]), Address("2001:db8::%x" % (i + 1), 1000), 0, room=bytes([i]) * 16).outcome
                    for i in range(3)]
        assert outcomes == [Outcome.WAITING, Outcome.WAITING, Outcome.TOO_MANY_FROM_SOURCE]
        other_64 = Address("2001:db8:0:1::1", 1000)
        assert self.join(b"o", other_64, 0, room=b"o" * 16).outcome is Outcome.WAITING
