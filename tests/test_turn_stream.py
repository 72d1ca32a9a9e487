"""TURN over TCP: the stream framing (STUN messages and ChannelData padded
to 4 bytes), one allocation per connection, closed with it."""

from __future__ import annotations

import os

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from natsalon.stun import Address, Attr, Class, Message, Method, decode, encode
from test_turn_relay import PEER, FakeUdpReactor, Client, salon


class StreamClient(Client):
    """Client over one TCP connection (a StringTransport)."""

    def __init__(self, svc, port=41000):
        self.svc = svc
        self.stream = svc.streams.buildProtocol(None)
        self.tcp = StringTransport(peerAddress=IPv4Address("TCP", "198.51.100.7", port))
        self.stream.makeConnection(self.tcp)
        super().__init__(self, _Wire(self), ("198.51.100.7", port))

    def datagramReceived(self, data, addr):  # what Client.request calls
        self.stream.dataReceived(data)


class _Wire:
    def __init__(self, sc):
        self.sc = sc

    def pop(self):
        data = self.sc.tcp.value()
        self.sc.tcp.clear()
        out = []
        while data:
            n = 20 + int.from_bytes(data[2:4], "big")
            out.append((data[:n], self.sc.addr))
            data = data[n:]
        return out


def setup():
    reactor = FakeUdpReactor()
    svc, proto, wire = salon(reactor)
    return reactor, svc


def test_allocate_bind_and_padded_channel_data_over_tcp():
    reactor, svc = setup()
    c = StreamClient(svc)
    relayed = c.request(Method.ALLOCATE, ((Attr.REQUESTED_TRANSPORT, 17),)).get(Attr.XOR_RELAYED_ADDRESS)
    assert c.request(Method.CHANNEL_BIND, ((Attr.CHANNEL_NUMBER, 0x4000),
                                           (Attr.XOR_PEER_ADDRESS, Address(*PEER)))).cls == Class.SUCCESS
    relay_transport, relay_proto = reactor.ports[relayed.port]
    # two padded frames and a half, in odd pieces
    stream = b"\x40\x00\x00\x03abc\x00" + b"\x40\x00\x00\x04wxyz" + b"\x40\x00\x00\x05hel"
    for i in range(0, len(stream), 3):
        c.stream.dataReceived(stream[i:i + 3])
    assert relay_transport.pop() == [(b"abc", PEER), (b"wxyz", PEER)]
    c.stream.dataReceived(b"lo\x00\x00\x00")
    assert relay_transport.pop() == [(b"hello", PEER)]
    # from the peer: ChannelData padded to 4 bytes on the stream
    relay_proto.datagramReceived(b"12345", PEER)
    assert c.tcp.value() == b"\x40\x00\x00\x0512345\x00\x00\x00"
    c.tcp.clear()
    # while the client does not read, relayed data is dropped, not queued
    c.stream.pauseProducing()
    relay_proto.datagramReceived(b"lost", PEER)
    c.stream.resumeProducing()
    assert c.tcp.value() == b""
    # the connection closes: its allocation goes with it
    c.stream.connectionLost(None)
    assert len(svc.core) == 0 and relayed.port not in reactor.ports
    assert svc.core.stats["turn_allocations_closed"] == 1


def test_binding_over_tcp_and_unknown_method():
    reactor, svc = setup()
    c = StreamClient(svc)
    c.stream.dataReceived(encode(Message(Method.BINDING, Class.REQUEST, os.urandom(12))))
    resp = decode(c.tcp.value())
    assert resp.get(Attr.XOR_MAPPED_ADDRESS) == Address("198.51.100.7", 41000)
    c.tcp.clear()
    c.stream.dataReceived(encode(Message(0x0AB, Class.REQUEST, os.urandom(12))))
    assert decode(c.tcp.value()).get(Attr.ERROR_CODE).code == 400


def test_bad_frames_close_the_connection():
    reactor, svc = setup()
    for junk in (b"\xc0\x00\x00\x00", b"\x00\x03\xff\xf0" + bytes(16),
                 b"\x00\x03\x00\x04\x21\x12\xa4\x42" + bytes(12) + b"\x00\x06\x00\x09"):  # attribute overruns
        c = StreamClient(svc)
        c.stream.dataReceived(junk)
        assert c.tcp.disconnecting, junk
    assert svc.core.stats["turn_tcp_bad_frame"] == 3


def test_idle_connection_without_allocation_is_closed():
    reactor, svc = setup()
    idle = StreamClient(svc, 1)
    busy = StreamClient(svc, 2)
    busy.request(Method.ALLOCATE, ((Attr.REQUESTED_TRANSPORT, 17),))
    reactor.advance(60)
    assert idle.tcp.disconnecting and not busy.tcp.disconnecting
    busy.stream.connectionLost(None)
    idle.stream.connectionLost(None)
    assert svc.streams.connections == 0
    assert idle.stream._idle is None and busy.stream._idle is None


def test_connection_limit():
    reactor, svc = setup()
    svc.streams.max_connections = 1
    first = StreamClient(svc, 1)
    second = StreamClient(svc, 2)
    assert second.tcp.disconnecting and not first.tcp.disconnecting
    assert svc.core.stats["turn_tcp_refused"] == 1


def test_fuzzed_streams_raise_nothing_and_allocate_nothing():
    import random

    from test_stun_fuzz import mutate
    from test_turn_fuzz import seeds

    reactor, svc = setup()
    rng = random.Random(0x7C9)
    data_seeds = seeds()
    for i in range(2000):
        c = StreamClient(svc, 10000 + i)
        stream = b"".join(mutate(rng, rng.choice(data_seeds)) for _ in range(rng.randint(1, 4)))
        while stream and not c.tcp.disconnecting:
            cut = rng.randint(1, len(stream))
            c.stream.dataReceived(stream[:cut])
            stream = stream[cut:]
        c.stream.connectionLost(None)
    assert len(svc.core) == 0 and reactor.ports == {} and svc.streams.connections == 0
    assert len(svc.relays.writers) == 0
