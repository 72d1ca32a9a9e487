"""The real joiners (natsalon.client.join.Joiner) against the salon's
protocol on a Clock-driven network: whoever copied the room id, joined
first or in between, or an end that restarts, never keeps the genuine
pair from meeting."""

from __future__ import annotations

from typing import Dict, List, Tuple

import pytest
from twisted.internet.task import Clock

from natsalon import wire
from natsalon.client.demux import ClientSocket
from natsalon.client.join import Joiner
from natsalon.crypto.secret import derive, new_nonce
from natsalon.server.service import SalonConfig, SalonService
from natsalon.testing import FakeDatagramTransport

SALON = ("192.0.2.100", 3478)
A = ("198.51.100.1", 40001)
B = ("203.0.113.2", 40002)
SQUATTER = ("233.252.0.9", 6666)
KEYS = derive("room", "s3cret")


class Wire(FakeDatagramTransport):
    """A transport that delivers, 10 ms later, to the node at the address."""

    def __init__(self, net: "Net", me: Tuple[str, int]) -> None:
        super().__init__(*me)
        self.net, self.me = net, me

    def write(self, packet, addr=None):
        super().write(packet, addr)
        node = self.net.nodes.get(tuple(addr))
        if node is not None:
            self.net.clock.callLater(0.01, node.datagramReceived, bytes(packet), self.me)


class Net:
    def __init__(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.nodes: Dict[Tuple[str, int], object] = {}
        self.salon = SalonService(self.clock, SalonConfig(rate_limit=0, rcvbuf=0))
        proto = self.salon.protocols[0]
        self.attach(SALON, proto)
        # the salon's tick (expiry) without binding sockets
        self.clock.callLater(1, self._tick)

    def _tick(self) -> None:
        self.salon._tick()
        self.clock.callLater(1, self._tick)

    def attach(self, addr, proto) -> None:
        self.nodes[addr] = proto
        proto.makeConnection(Wire(self, addr))

    def joiner(self, addr, keys=KEYS) -> Tuple[Joiner, List]:
        sock = ClientSocket(self.clock)
        self.attach(addr, sock)
        j = Joiner(self.clock, sock, SALON, keys, new_nonce(), (), leave_hash=wire.leave_hash(b"t" * 16))
        done: List = []
        j.start().addBoth(done.append)
        return j, done

    def run(self, seconds: float) -> None:
        for _ in range(int(seconds * 100)):
            self.clock.advance(0.01)


def squat(net: Net, addr=SQUATTER) -> Joiner:
    """Someone who copied the room id but not the secret: its JOIN does
    not verify for the pair, and it polls on for ever."""
    wrong = derive("room", "a guess")._replace(room_id=KEYS.room_id)
    j, _ = net.joiner(addr, wrong)
    return j


@pytest.mark.parametrize("when", ["first", "in between"])
def test_a_squatter_does_not_keep_the_pair_apart(when):
    net = Net()
    if when == "first":
        squat(net)
        net.run(2)
    a, got_a = net.joiner(A)
    net.run(1.5)
    if when == "in between":
        squat(net)
        net.run(1.5)
    assert not got_a  # a waits (introduced to the squatter, it ignores it)
    b, got_b = net.joiner(B)
    net.run(0.5)
    assert got_a and got_b, (got_a, got_b)
    assert got_a[0].peer.nonce == b.nonce and got_a[0].peer_address == B
    assert got_b[0].peer.nonce == a.nonce and got_b[0].peer_address == A
    assert a.impostors >= 1


def test_two_squatters_polling_around_the_pair_do_not_keep_it_apart():
    net = Net()
    squat(net)
    a, got_a = net.joiner(A)
    net.run(1.2)
    squat(net, ("233.252.0.10", 7777))
    net.run(1.2)
    b, got_b = net.joiner(B)
    net.run(1)
    assert got_a[0].peer.nonce == b.nonce and got_b[0].peer.nonce == a.nonce


def test_a_restarted_end_is_never_refused_and_the_pair_meets_again():
    net = Net()
    a, got_a = net.joiner(A)
    b, got_b = net.joiner(B)
    net.run(1.5)
    assert got_a[0].peer.nonce == b.nonce and got_b[0].peer.nonce == a.nonce
    # b is killed (no LEAVE) and comes back a second later on a new port;
    # both old entries are still there (they stopped polling when introduced)
    del net.nodes[B]
    net.run(1)
    b2_at = (B[0], B[1] + 1)
    b2, got_b2 = net.joiner(b2_at)
    net.run(0.5)
    assert got_b2 and not isinstance(got_b2[0], Exception)  # introduced, never 409
    # whoever b2 picked, the two sessions join again (a noticed its dead
    # peer): the old entries went on the salon's tick, so they meet
    net.run(4)
    assert net.salon.introducer.rooms.members() == 0
    a3, got_a3 = net.joiner(A)
    net.run(1.2)
    b3, got_b3 = net.joiner(b2_at)
    net.run(0.5)
    assert got_a3[0].peer.nonce == b3.nonce and got_b3[0].peer.nonce == a3.nonce
    assert net.salon.state.stats["join_full"] == 0
    assert not any(isinstance(r, Exception) for r in got_a + got_b + got_b2 + got_a3 + got_b3)
