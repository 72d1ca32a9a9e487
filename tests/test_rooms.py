"""The room registry: pure functions of ``now``."""

from zope.interface.verify import verifyClass, verifyObject

from natsalon.server.introducer.rooms import IRoomRegistry, Member, MemoryRooms, Outcome
from natsalon.stun import Address

A = Address("192.0.2.1", 1000)
B = Address("192.0.2.2", 2000)
C = Address("192.0.2.3", 3000)


def m(nonce, addr):
    return Member(nonce * 16, addr, b"blob-" + nonce)


def test_memory_rooms_provides_the_registry_interface():
    assert IRoomRegistry.implementedBy(MemoryRooms)
    verifyClass(IRoomRegistry, MemoryRooms)
    verifyObject(IRoomRegistry, MemoryRooms())
    # the interface is what the introducer calls, nothing more
    assert sorted(IRoomRegistry.names()) == ["join", "prune"]


def test_pair_and_introduce_both():
    rooms = MemoryRooms()
    assert rooms.join(b"r", m(b"a", A), 0).outcome is Outcome.WAITING
    r = rooms.join(b"r", m(b"b", B), 1)
    assert r.outcome is Outcome.INTRODUCED and r.newly_paired
    assert r.peer.address == A and r.peer.blob == b"blob-a"
    # the first member's next poll gets the introduction too
    r = rooms.join(b"r", m(b"a", A), 2)
    assert r.outcome is Outcome.INTRODUCED and not r.newly_paired
    assert r.peer.address == B


def test_retransmitted_join_never_pairs_with_itself():
    rooms = MemoryRooms()
    for t in range(5):
        r = rooms.join(b"r", m(b"a", A), t)
        assert r.outcome is Outcome.WAITING
    assert rooms.waiting() == 1


def test_third_joiner_refused():
    rooms = MemoryRooms()
    rooms.join(b"r", m(b"a", A), 0)
    rooms.join(b"r", m(b"b", B), 0)
    assert rooms.join(b"r", m(b"c", C), 1).outcome is Outcome.FULL


def test_waiting_member_expires_and_poll_refreshes():
    rooms = MemoryRooms(timeout=10)
    rooms.join(b"r", m(b"a", A), 0)
    rooms.join(b"r", m(b"a", A), 8)  # poll refreshes
    assert rooms.prune(17) == 0
    assert rooms.prune(18) == 1
    assert len(rooms) == 0
    # a later joiner does not meet the expired member
    assert rooms.join(b"r", m(b"b", B), 19).outcome is Outcome.WAITING


def test_expired_room_replaced_on_join_without_prune():
    rooms = MemoryRooms(timeout=10)
    rooms.join(b"r", m(b"a", A), 0)
    assert rooms.join(b"r", m(b"b", B), 11).outcome is Outcome.WAITING


def test_paired_room_lingers_then_goes():
    rooms = MemoryRooms(linger=5)
    rooms.join(b"r", m(b"a", A), 0)
    rooms.join(b"r", m(b"b", B), 1)
    assert rooms.prune(5.9) == 0
    assert rooms.prune(6) == 1
    assert rooms.join(b"r", m(b"c", C), 7).outcome is Outcome.WAITING


def test_room_cap():
    rooms = MemoryRooms(max_rooms=2)
    assert rooms.join(b"1", m(b"a", A), 0).outcome is Outcome.WAITING
    assert rooms.join(b"2", m(b"b", B), 0).outcome is Outcome.WAITING
    assert rooms.join(b"3", m(b"c", C), 0).outcome is Outcome.TOO_MANY_ROOMS
    rooms.prune(1000)
    assert rooms.join(b"3", m(b"c", C), 1000).outcome is Outcome.WAITING


def test_per_source_cap_counts_waiting_only():
    rooms = MemoryRooms(max_per_source=2)
    a1, a2 = Address("192.0.2.1", 1), Address("192.0.2.1", 2)
    assert rooms.join(b"1", Member(b"x" * 16, a1, b""), 0).outcome is Outcome.WAITING
    assert rooms.join(b"2", Member(b"y" * 16, a2, b""), 0).outcome is Outcome.WAITING
    assert rooms.join(b"3", Member(b"z" * 16, a2, b""), 0).outcome is Outcome.TOO_MANY_FROM_SOURCE
    # pairing room 1 frees a slot for that IP
    rooms.join(b"1", m(b"b", B), 0)
    assert rooms.join(b"3", Member(b"z" * 16, a2, b""), 0).outcome is Outcome.WAITING
    rooms.prune(10 ** 6)
    assert rooms._waiting_per_ip == {}


def test_ipv6_sources_count_per_64():
    from natsalon.server.introducer.rooms import MemoryRooms, Member, Outcome, source_key
    from natsalon.stun import Address

    assert source_key("2001:db8:1:2::5") == source_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert source_key("2001:db8:1:3::5") != source_key("2001:db8:1:2::5")
    assert source_key("192.0.2.1") == "192.0.2.1"
    rooms = MemoryRooms(max_rooms=100, timeout=60, max_per_source=2)
    outcomes = [rooms.join(bytes([i]) * 16, Member(bytes([i]) * 16, Address("2001:db8::%x" % (i + 1), 1000), b"", (0, 0)), 0.0).outcome
                for i in range(3)]
    assert outcomes == [Outcome.WAITING, Outcome.WAITING, Outcome.TOO_MANY_FROM_SOURCE]
