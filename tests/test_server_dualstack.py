"""A salon on ``::`` serves IPv4 clients as IPv4: an IPv6-only socket and
an IPv4 socket on each port, so nobody is told ``::ffff:127.0.0.1``."""

from __future__ import annotations

import os

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from natsalon import wire
from natsalon.client.stunsocket import StunClientProtocol
from natsalon.crypto.secret import derive, new_nonce
from natsalon.server.service import SalonConfig, SalonService
from natsalon.server.testing import UDPClock
from natsalon.stun import CHANGE_PORT, Address, Attr, Class, Message, Method, decode
from natsalon.stun.client import RetransmitPolicy
from loopback6 import has_ipv6_loopback as _has_ipv6_loopback

FAST = RetransmitPolicy(rto=0.1, sends=4, last_wait=4)



def test_on_wildcard_ipv6_each_port_has_an_ipv4_socket_beside_it():
    clock = UDPClock()
    svc = SalonService(clock, SalonConfig(interface="::", port=0, alt_port=0, rate_limit=0, rcvbuf=0))
    svc.startService()
    assert sorted(clock.udp) == [("0.0.0.0", 40000), ("0.0.0.0", 40001), ("::", 40000), ("::", 40001)]
    twin = svc.sockets[(0, 0, 4)].protocol
    client = ("192.0.2.1", 5000)
    # a change-port answer leaves from the IPv4 socket of the other port
    msg = Message(Method.BINDING, Class.REQUEST, os.urandom(12), ((Attr.CHANGE_REQUEST, CHANGE_PORT),))
    from natsalon.stun import encode

    twin.datagramReceived(encode(msg), client)
    (data, to), = clock.udp[("0.0.0.0", 40001)].pop()
    assert to == client and decode(data).get(Attr.XOR_MAPPED_ADDRESS) == Address(*client)
    assert all(not t.written for t in clock.udp.values())
    svc.stopService()
    assert svc.state.transports == {}


def test_other_interfaces_have_no_ipv4_twin():
    for interface in ("0.0.0.0", "::1", "127.0.0.1"):
        clock = UDPClock()
        SalonService(clock, SalonConfig(interface=interface, port=0, alt_port=0, rcvbuf=0)).startService()
        assert {i for i, _ in clock.udp} == {interface}


@pytest.fixture
def salon():
    if not _has_ipv6_loopback():
        pytest.skip("no IPv6 loopback on this machine")
    svc = SalonService(reactor, SalonConfig(interface="::", port=0, alt_port=0, rcvbuf=0))
    svc.startService()
    yield svc
    pytest_twisted.blockon(defer.maybeDeferred(svc.stopService))


@pytest.fixture
def clients():
    ports = []

    def make(interface):
        proto = StunClientProtocol(reactor, FAST)
        ports.append(reactor.listenUDP(0, proto, interface=interface))
        return proto, Address(interface, ports[-1].getHost().port)

    yield make
    for port in ports:
        pytest_twisted.blockon(defer.maybeDeferred(port.stopListening))


@pytest_twisted.inlineCallbacks
def test_ipv4_and_ipv6_clients_of_a_wildcard_salon_see_their_own_addresses(salon, clients):
    port, alt_port = salon.layout.ports
    for host in ("127.0.0.1", "::1"):
        proto, me = clients(host)
        for attrs, answerer in (((), port), (((Attr.CHANGE_REQUEST, CHANGE_PORT),), alt_port)):
            msg = Message(Method.BINDING, Class.REQUEST, os.urandom(12), attrs)
            resp = yield proto.request(msg, (host, port))
            assert resp.message.get(Attr.XOR_MAPPED_ADDRESS) == me
            assert resp.source[:2] == (host, answerer)


@pytest_twisted.inlineCallbacks
def test_an_ipv4_and_an_ipv6_member_are_introduced_by_their_own_addresses(salon, clients):
    keys = derive("room", "s3cret")
    port = salon.layout.ports[0]
    answers = {}
    for host in ("127.0.0.1", "::1"):
        proto, me = clients(host)
        nonce, cookie = new_nonce(), None
        for _ in range(2):  # the cookie, then the JOIN
            msg, _ = wire.join_request(keys.room_id, nonce, (), keys.k_join, cookie=cookie)
            resp = yield proto.request(msg, (host, port), sha256_key=keys.k_join)
            ans = wire.parse_join_answer(resp.message)
            cookie = ans.cookie
        assert ans.observed == me
        answers[host] = (ans, me)
    ans, _ = answers["::1"]
    assert ans.kind is wire.Answer.INTRODUCED and ans.peer_address == answers["127.0.0.1"][1]


class _TakenClock(UDPClock):
    """The IPv4 twin of the first ephemeral port drawn is taken (another
    process holds 0.0.0.0 on it)."""

    def __init__(self) -> None:
        super().__init__()
        self.taken = {("0.0.0.0", 40000)}

    def listenUDP(self, port, protocol, interface="", maxPacketSize=8192):
        from twisted.internet.error import CannotListenError

        if (interface, port) in self.taken:
            raise CannotListenError(interface, port, OSError(98, "Address already in use"))
        return super().listenUDP(port, protocol, interface, maxPacketSize)


def test_ephemeral_ports_whose_twin_is_taken_are_drawn_again():
    clock = _TakenClock()
    svc = SalonService(clock, SalonConfig(interface="::", port=0, alt_port=0, rate_limit=0, rcvbuf=0))
    svc.startService()
    ports = svc.layout.ports
    assert 40000 not in ports
    bound = {(s.interface, s.bound_port) for s in svc.sockets.values()}
    assert bound == {(i, p) for i in ("::", "0.0.0.0") for p in ports}
    # the first draw's socket was let go
    assert clock.udp[("::", 40000)].closed


def test_a_fixed_port_whose_twin_is_taken_is_an_error_not_a_retry():
    clock = _TakenClock()
    svc = SalonService(clock, SalonConfig(interface="::", port=40000, alt_port=40001, rate_limit=0, rcvbuf=0))
    with pytest.raises(SystemExit, match="cannot listen on 0.0.0.0:40000"):
        svc.privilegedStartService()
