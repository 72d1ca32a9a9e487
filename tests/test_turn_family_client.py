"""natsalon's TURN client asking for an address family (RFC 8656
REQUESTED-ADDRESS-FAMILY): which family the relay asks for, what goes on
the wire (a Clock and a recording send), and on loopback against the
salon's dual-stack relay: an IPv4 client relays both ways to a peer on ::1
through an IPv6 relayed address."""

from __future__ import annotations

import time

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import Clock

from natsalon.client.relay import relay_version
from natsalon.client.turn.client import TurnClient
from natsalon.client.turn.protocol import TurnClientProtocol
from natsalon.server.layout import Family
from natsalon.server.service import SalonConfig, SalonService
from natsalon.server.turn import TurnConfig, mint
from natsalon.stun import Address, Attr, Method, decode
from test_turn_client import Peer
from loopback6 import has_ipv6_loopback as _has_ipv6_loopback

SECRET = b"turn-family-secret"


@pytest.mark.parametrize("peer, server, version", [
    ("203.0.113.5", "192.0.2.1", 0),  # the classic case: nothing asked (RFC 5766 servers)
    ("2001:db8::5", "192.0.2.1", 6),  # we on IPv4, the peer IPv6-only
    ("203.0.113.5", "2001:db8::1", 4),  # we on IPv6, the peer IPv4-only
    ("2001:db8::5", "2001:db8::1", 6),
])
def test_the_relay_asks_for_the_peers_family(peer, server, version):
    assert relay_version(peer, server) == version


@pytest.mark.parametrize("version, both, family, additional", [
    (0, False, None, None), (4, False, 1, None), (6, False, 2, None), (0, True, None, 2)])
def test_allocate_sends_the_family_attributes(version, both, family, additional):
    sent = []
    client = TurnClient(Clock(), lambda data, addr: sent.append(decode(data)), ("192.0.2.1", 3478), "u", "p")
    d = client.allocate(version, both=both)
    client.clock.advance(0)
    assert sent and sent[0].method == Method.ALLOCATE
    assert sent[0].get(Attr.REQUESTED_ADDRESS_FAMILY) == family
    assert sent[0].get(Attr.ADDITIONAL_ADDRESS_FAMILY) == additional
    assert sent[0].get(Attr.REQUESTED_TRANSPORT) == 17
    d.cancel()
    d.addErrback(lambda f: None)



@pytest.fixture
def dual_salon():
    if not _has_ipv6_loopback():
        pytest.skip("no IPv6 loopback here")
    turn = TurnConfig(secrets=(SECRET,), allow_peer=("127.0.0.0/8", "::1/128"), relay_ip="127.0.0.1",
                      second_relay_ip="::1")
    svc = SalonService(reactor, SalonConfig(interface="127.0.0.1", port=0, alt_port=0, rcvbuf=0, rate_limit=0,
                                            second=Family("::1"), turn=turn))
    svc.startService()
    yield svc
    pytest_twisted.blockon(defer.maybeDeferred(svc.stopService))
    assert len(svc.turn.core) == 0


@pytest_twisted.inlineCallbacks
def test_an_ipv4_client_relays_to_an_ipv6_peer(dual_salon):
    username, password = mint(SECRET, "alice", int(time.time()) + 600)
    client = TurnClientProtocol(reactor, ("127.0.0.1", dual_salon.layout.ports[0]), username, password)
    got = defer.DeferredQueue()
    client.on_data = lambda payload, peer: got.put((payload, peer))
    port = reactor.listenUDP(0, client, interface="127.0.0.1")
    peer = Peer()
    peer_port = reactor.listenUDP(0, peer, interface="::1")
    me = Address("::1", peer_port.getHost().port)
    try:
        allocation = yield client.client.allocate(relay_version(me.host, "127.0.0.1"))
        assert allocation.relayed.host == "::1" and allocation.mapped.host == "127.0.0.1"
        yield client.client.permit(me.host)
        assert client.client.send(b"indication", me)
        data, src = yield peer.get()
        assert data == b"indication" and Address(*src[:2]) == allocation.relayed
        yield client.client.bind(me)
        n = 50
        for i in range(n):
            assert client.client.send(b"to-peer %d" % i, me)
            peer.transport.write(b"to-client %d" % i, tuple(allocation.relayed))
        to_peer = set()
        for _ in range(n):
            data, _src = yield peer.get()
            to_peer.add(data)
        to_client = set()
        for _ in range(n):
            payload, src_peer = yield got.get().addTimeout(5, reactor)
            assert src_peer == me
            to_client.add(payload)
        assert to_peer == {b"to-peer %d" % i for i in range(n)}
        assert to_client == {b"to-client %d" % i for i in range(n)}
        assert (yield client.client.close()) is True
    finally:
        client.client.close()
        yield port.stopListening()
        yield peer_port.stopListening()


@pytest_twisted.inlineCallbacks
def test_a_dual_allocation_relays_to_peers_of_both_families(dual_salon):
    """One allocation, two relayed addresses: channels to a 127.0.0.1 peer
    and a ::1 peer, each reached from the relayed address of its family
    (the salon's inline ChannelData path picks the socket), both ways."""
    username, password = mint(SECRET, "bob", int(time.time()) + 600)
    client = TurnClientProtocol(reactor, ("127.0.0.1", dual_salon.layout.ports[0]), username, password)
    got = defer.DeferredQueue()
    client.on_data = lambda payload, peer: got.put((payload, peer))
    port = reactor.listenUDP(0, client, interface="127.0.0.1")
    peers = [Peer(), Peer()]
    listening = [reactor.listenUDP(0, peers[0], interface="127.0.0.1"), reactor.listenUDP(0, peers[1], interface="::1")]
    addrs = [Address(h, p.getHost().port) for h, p in zip(("127.0.0.1", "::1"), listening)]
    try:
        allocation = yield client.client.allocate(both=True)
        relayed = [allocation.relayed, allocation.also]
        assert [a.host for a in relayed] == ["127.0.0.1", "::1"]
        for addr in addrs:
            yield client.client.bind(addr)
        n = 20
        for i in range(n):
            for peer, addr, mine in zip(peers, addrs, relayed):
                assert client.client.send(b"to %s %d" % (addr.host.encode(), i), addr)
                peer.transport.write(b"from %s %d" % (addr.host.encode(), i), tuple(mine))
        for peer, addr, mine in zip(peers, addrs, relayed):
            seen = set()
            for _ in range(n):
                data, src = yield peer.get()
                assert Address(*src[:2]) == mine
                seen.add(data)
            assert seen == {b"to %s %d" % (addr.host.encode(), i) for i in range(n)}
        back = set()
        for _ in range(2 * n):
            payload, src_peer = yield got.get().addTimeout(5, reactor)
            back.add((payload, src_peer))
        assert back == {(b"from %s %d" % (a.host.encode(), i), a) for a in addrs for i in range(n)}
        assert (yield client.client.close()) is True
    finally:
        client.client.close()
        yield port.stopListening()
        for p in listening:
            yield p.stopListening()
