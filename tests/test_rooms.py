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
