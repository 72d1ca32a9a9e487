"""The TURN glue with a Clock and fake datagram transports: the salon's
protocol routes TURN requests and ChannelData to the core, relayed sockets
come from the port range (508 when none can be bound), the sweep runs on
the salon's clock, and stopping the salon closes every relayed socket."""

from __future__ import annotations

import errno
import os
import random

import pytest
from twisted.internet.error import CannotListenError
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject
from twisted.internet.interfaces import IUDPTransport

from natsalon.server.reflector import ReflectorProtocol, ServerState
from natsalon.server.layout import Layout
from natsalon.server.turn import TurnConfig, mint
from natsalon.server.turn.relay import TurnService
from natsalon.stun import Address, Attr, Class, Message, Method, decode, encode, long_term_key
from natsalon.testing import FakeDatagramTransport

SECRET = b"glue-secret"
CLIENT = ("198.51.100.7", 40000)
PEER = ("203.0.113.5", 5000)
SALON = ("192.0.2.1", 3478)


class FakeUdpReactor(Clock):
    """A Clock that also "binds" UDP ports: each gets a FakeDatagramTransport."""

    def __init__(self, busy=()):
        super().__init__()
        self.busy = set(busy)
        self.ports = {}

    def listenUDP(self, port, protocol, interface="", maxPacketSize=8192):
        if port in self.busy or port in self.ports:
            raise CannotListenError(interface, port, OSError(errno.EADDRINUSE, "in use"))
        transport = FakeDatagramTransport(interface, port)
        transport.stopListening = lambda: self.ports.pop(port, None)
        self.ports[port] = (transport, protocol)
        protocol.makeConnection(transport)
        return transport


def salon(reactor, **turn):
    turn.setdefault("secrets", (SECRET,))
    turn.setdefault("tcp", False)  # TCP: see test_turn_stream
    state = ServerState()
    state.layout = Layout((SALON[0], None), (SALON[1], 3479))
    proto = ReflectorProtocol((0, 0), state, rcvbuf=0)
    wire = FakeDatagramTransport(*SALON)
    proto.makeConnection(wire)
    svc = TurnService(reactor, state, TurnConfig(**turn), "0.0.0.0", SALON[0], rng=random.Random(7))
    svc.startService()
    return svc, proto, wire


class Client:
    def __init__(self, proto, wire, addr=CLIENT):
        self.proto, self.wire, self.addr = proto, wire, addr
        self.username, password = mint(SECRET, "alice", 2 ** 31 - 1)
        self.key = long_term_key(self.username, "natsalon", password)
        self.nonce = None

    def request(self, method, attrs=()):
        txid = os.urandom(12)
        if self.nonce is None:
            self.proto.datagramReceived(encode(Message(method, Class.REQUEST, txid)), self.addr)
            [(data, to)] = self.wire.pop()
            self.nonce = decode(data).get(Attr.NONCE)
        m = Message(method, Class.REQUEST, txid, tuple(attrs) + (
            (Attr.USERNAME, self.username), (Attr.REALM, "natsalon"), (Attr.NONCE, self.nonce)))
        self.proto.datagramReceived(encode(m, integrity_key=self.key), self.addr)
        [(data, to)] = self.wire.pop()
        assert to == self.addr
        return decode(data)


def test_fake_transport_is_a_udp_transport():
    verifyObject(IUDPTransport, FakeDatagramTransport())


def test_allocate_relay_and_expire_on_the_clock():
    reactor = FakeUdpReactor()
    svc, proto, wire = salon(reactor, relay_ports=(50000, 50009))
    c = Client(proto, wire)
    ok = c.request(Method.ALLOCATE, ((Attr.REQUESTED_TRANSPORT, 17),))
    relayed = ok.get(Attr.XOR_RELAYED_ADDRESS)
    assert relayed.host == SALON[0] and 50000 <= relayed.port <= 50009
    relay_transport, relay_proto = reactor.ports[relayed.port]
    assert c.request(Method.CHANNEL_BIND, ((Attr.CHANNEL_NUMBER, 0x4001),
                                           (Attr.XOR_PEER_ADDRESS, Address(*PEER)))).cls == Class.SUCCESS
    # ChannelData in on the salon's socket, out of the relayed socket
    proto.datagramReceived(b"\x40\x01\x00\x04ping", CLIENT)
    assert relay_transport.pop() == [(b"ping", PEER)]
    # and back, as ChannelData from the salon's socket
    relay_proto.datagramReceived(b"pong", PEER)
    assert wire.pop() == [(b"\x40\x01\x00\x04pong", CLIENT)]
    # a peer without permission is not heard
    relay_proto.datagramReceived(b"spam", ("203.0.113.99", 1))
    assert wire.pop() == []
    # the sweep runs on the salon's clock: 600 s later the allocation is gone
    reactor.advance(599)
    assert len(svc.core) == 1
    reactor.advance(1)
    assert len(svc.core) == 0 and relayed.port not in reactor.ports
    proto.datagramReceived(b"\x40\x01\x00\x04ping", CLIENT)
    assert relay_transport.pop() == []
    svc.stopService()


def test_no_free_relay_port_is_508():
    reactor = FakeUdpReactor(busy=range(50000, 50004))
    svc, proto, wire = salon(reactor, relay_ports=(50000, 50003))
    resp = Client(proto, wire).request(Method.ALLOCATE, ((Attr.REQUESTED_TRANSPORT, 17),))
    assert resp.get(Attr.ERROR_CODE).code == 508
    assert len(svc.core) == 0 and svc.core.stats["turn_no_relay_port"] == 1


def test_even_port_requested():
    reactor = FakeUdpReactor()
    svc, proto, wire = salon(reactor, relay_ports=(50000, 50099))
    for i in range(10):
        c = Client(proto, wire, addr=("198.51.100.7", 1000 + i))
        ok = c.request(Method.ALLOCATE, ((Attr.REQUESTED_TRANSPORT, 17), (Attr.EVEN_PORT, False)))
        assert ok.get(Attr.XOR_RELAYED_ADDRESS).port % 2 == 0


def test_stop_closes_every_relayed_socket():
    reactor = FakeUdpReactor()
    svc, proto, wire = salon(reactor)
    for i in range(5):
        Client(proto, wire, addr=("198.51.100.7", 1000 + i)).request(
            Method.ALLOCATE, ((Attr.REQUESTED_TRANSPORT, 17),))
    assert len(reactor.ports) == 5
    svc.stopService()
    assert reactor.ports == {} and len(svc.core) == 0
    assert svc.core.stats["turn_allocations_closed"] == 5


def test_channel_data_bypasses_the_rate_limiter_and_unknown_frames_are_dropped():
    from natsalon.server.ratelimit import SourceLimiter

    reactor = FakeUdpReactor()
    svc, proto, wire = salon(reactor)
    proto.state.limiter = SourceLimiter(1)
    for frame in (b"\x40", b"\x4f\xff", b"\x7f\xff\x00\x00", b"\x40\x00\x00\x10short"):
        proto.datagramReceived(frame, CLIENT)
    assert wire.pop() == [] and proto.state.stats["internal_error"] == 0
    assert proto.state.stats["turn_channel_data_dropped"] == 4
    assert proto.state.stats["rate_limited"] == 0


def test_relay_ip_must_be_known():
    with pytest.raises(ValueError):
        TurnService(FakeUdpReactor(), ServerState(), TurnConfig(secrets=(SECRET,)), "0.0.0.0", "0.0.0.0")


def test_salon_sockets_are_never_peers_even_when_loopback_is_allowed():
    reactor = FakeUdpReactor()
    svc, proto, wire = salon(reactor, allow_peer=("127.0.0.0/8",))
    c = Client(proto, wire)
    c.request(Method.ALLOCATE, ((Attr.REQUESTED_TRANSPORT, 17),))
    for number, peer, expected in [(0x4000, ("127.0.0.1", 3478), 403), (0x4001, ("127.0.0.1", 3479), 403),
                                   (0x4002, SALON, 403), (0x4003, ("127.0.0.1", 9999), None)]:
        resp = c.request(Method.CHANNEL_BIND, ((Attr.CHANNEL_NUMBER, number), (Attr.XOR_PEER_ADDRESS, Address(*peer))))
        assert (resp.get(Attr.ERROR_CODE).code if resp.cls == Class.ERROR else None) == expected, peer
