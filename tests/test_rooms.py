"""The room registries against the one contract (tests/rooms_contract.py):
the in-memory registry, and the same registry answering through Deferreds
as one across the network does.  A registry of another kind (Redis) adds a
class here with its own ``make_registry`` and ``resolve``."""

from __future__ import annotations

from twisted.internet.defer import Deferred

from natsalon.server.introducer.rooms import MemoryRooms, source_key
from natsalon.server.testing import LaterRooms

from rooms_contract import A, B, ROOM, RoomRegistryContract, member


class TestMemoryRooms(RoomRegistryContract):
    def make_registry(self, **settings):
        return MemoryRooms(**settings)

    def resolve(self, result):
        assert not isinstance(result, Deferred)
        return result

    def test_forgets_empty_rooms_and_their_sources(self):
        self.rooms.join(ROOM, member(b"a", A), 0)
        self.rooms.join(b"o" * 16, member(b"b", B), 0)
        assert len(self.rooms) == 2 and self.rooms.members() == 2
        self.rooms.prune(100)
        assert len(self.rooms) == 0 and self.rooms._per_source == {}

    def test_a_prune_removes_exactly_the_expired_members_in_any_order_of_time(self):
        """The registry prunes from its expiry order; against a reference
        that looks at every member, over random joins, polls, leaves and
        prunes, with the clock now and then set back."""
        import random

        from natsalon.stun import Address

        rng = random.Random(11)
        rooms = MemoryRooms(max_rooms=10 ** 6, max_per_source=10 ** 6, member_timeout=3.5)
        names = [bytes([i]) for i in range(60)]
        now = 0.0
        for step in range(3000):
            now += rng.choice((0.0, 0.1, 0.5, 1.0)) if rng.random() > 0.01 else -rng.uniform(0, 5)
            r = rng.random()
            name = rng.choice(names)
            room = bytes([name[0] % 7]) * 16
            if r < 0.7:
                rooms.join(room, member(name, Address("192.0.2.%d" % (name[0] % 30 + 1), 1000 + name[0])), now)
            elif r < 0.8:
                rooms.leave(room, (name * 16)[:16], b"x" * 16, now)
            else:
                held = [(rid, m) for rid, rm in rooms._rooms.items() for m in rm.values()]
                expired = {id(m) for _, m in held if m.seen + 3.5 <= now}
                assert rooms.prune(now) == len(expired), step
                left = {id(m) for rm in rooms._rooms.values() for m in rm.values()}
                assert left == {id(m) for _, m in held} - expired and rooms.members() == len(left)
                assert sum(rooms._per_source.values()) == len(left)


class TestLaterRooms(RoomRegistryContract):
    """Every call answers through a Deferred that fires later."""

    def make_registry(self, **settings):
        return LaterRooms(MemoryRooms(**settings))

    def resolve(self, result):
        assert isinstance(result, Deferred) and not result.called
        self.rooms.answer()
        return result.result


def test_source_key():
    assert source_key("2001:db8:1:2::5") == source_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert source_key("2001:db8:1:3::5") != source_key("2001:db8:1:2::5")
    assert source_key("fe80::1%eth0") == "fe80::/64"
    assert source_key("192.0.2.1") == "192.0.2.1"
