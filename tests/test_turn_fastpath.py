"""The relay's inline read loops (ReflectorPort for ChannelData from
clients, RelayPort for datagrams from peers) against the slow path
(``datagramReceived`` into the core): the same datagrams sent to the same
addresses, the same counters and credits, for every kind of frame."""

from __future__ import annotations

import random
import socket

import pytest
import pytest_twisted
from twisted.internet import defer

from natsalon.server.fastport import ReflectorPort, RelayPort
from natsalon.server.layout import Layout
from natsalon.server.reflector import ReflectorProtocol, ServerState
from natsalon.server.turn import TurnConfig
from natsalon.server.turn.relay import TurnService
from natsalon.stun import Address, Attr, Class, Method, decode
from test_server_fastport import FakeSocket
from test_turn_relay import CLIENT, PEER, SALON, SECRET, Client, FakeUdpReactor

OTHER_CLIENT = ("198.51.100.9", 40000)
PEER_SAME_IP = (PEER[0], PEER[1] + 1)  # a permission (same IP), no channel
STRANGER = ("203.0.113.77", 6000)  # no permission


class BoundSocket(FakeSocket):
    def __init__(self, addr) -> None:
        super().__init__([], False)
        self.addr = addr

    def getsockname(self):
        return self.addr

    def setsockopt(self, *args) -> None:
        pass

    family = socket.AF_INET


class Wire:
    """A FakeSocket read like a FakeDatagramTransport (``pop()``)."""

    def __init__(self, sock: FakeSocket) -> None:
        self.sock = sock

    def pop(self):
        sent, self.sock.sent = self.sock.sent, []
        return sent


class FastReactor(FakeUdpReactor):
    """Binds relayed ports as RelayPorts over FakeSockets."""

    def listenUDP(self, port, protocol, interface="", maxPacketSize=8192):
        relay = RelayPort(self, BoundSocket((interface, port)), protocol, maxPacketSize)
        relay.stopListening = lambda: self.ports.pop(port, None)
        self.ports[port] = (relay, protocol)
        return relay


class World:
    """One salon, fed either through the protocols (slow) or the ports'
    doRead (fast)."""

    def __init__(self, fast: bool, **turn) -> None:
        self.fast = fast
        self.reactor = FastReactor() if fast else FakeUdpReactor()
        state = ServerState()
        state.layout = Layout((SALON[0], None), (SALON[1], 3479))
        self.proto = ReflectorProtocol((0, 0), state, rcvbuf=0)
        if fast:
            self.port = ReflectorPort(SALON[1], self.proto, SALON[0], 8192, self.reactor)
            self.port.socket = BoundSocket(SALON)
            self.proto.makeConnection(self.port)
            self.wire = Wire(self.port.socket)
        else:
            from natsalon.testing import FakeDatagramTransport

            self.wire = FakeDatagramTransport(*SALON)
            self.proto.makeConnection(self.wire)
        turn.setdefault("secrets", (SECRET,))
        turn.setdefault("tcp", False)
        self.svc = TurnService(self.reactor, state, TurnConfig(**turn), "0.0.0.0", SALON[0], rng=random.Random(7))
        self.svc.startService()
        self.stats = state.stats
        c = Client(self.proto, self.wire)
        relayed = c.request(Method.ALLOCATE, ((Attr.REQUESTED_TRANSPORT, 17),)).get(Attr.XOR_RELAYED_ADDRESS)
        assert c.request(Method.CHANNEL_BIND, ((Attr.CHANNEL_NUMBER, 0x4001),
                                               (Attr.XOR_PEER_ADDRESS, Address(*PEER)))).cls == Class.SUCCESS
        self.relay, self.relay_proto = self.reactor.ports[relayed.port]
        self.relay_wire = Wire(self.relay.socket) if fast else self.relay
        self.alloc = self.svc.core.get(CLIENT, (0, 0))
        assert type(self.relay) is (RelayPort if fast else type(self.wire))

    def from_client(self, data: bytes, addr=CLIENT) -> None:
        if self.fast:
            self.port.socket.inbox.append((data, addr))
            self.port.doRead()
        else:
            self.proto.datagramReceived(data, addr)

    def from_peer(self, data: bytes, addr) -> None:
        if self.fast:
            self.relay.socket.inbox.append((data, addr))
            self.relay.doRead()
        else:
            self.relay_proto.datagramReceived(data, addr)

    def outputs(self):
        """What left the salon's socket (Data indications without their
        random transaction id) and the relayed socket."""
        to_clients = [(d[:8] + d[20:] if d[:2] == b"\x00\x17" else d, a) for d, a in self.wire.pop()]
        return to_clients, self.relay_wire.pop()

    def counters(self):
        core = self.svc.core
        return (dict(self.stats), self.alloc.credit, self.alloc.dropped, core.to_peer_packets, core.to_peer_bytes,
                core.to_client_packets, core.to_client_bytes, core.dropped_bandwidth, core.dropped_quota)


EVENTS = [
    ("client", b"\x40\x01\x00\x04ping", CLIENT),  # to the bound peer
    ("client", b"\x40\x01\x00\x04pingXXXX", CLIENT),  # longer than its length: the length is relayed
    ("client", b"\x40\x01\x00\x00", CLIENT),  # empty payload
    ("client", b"\x40\x05\x00\x04ping", CLIENT),  # no such channel
    ("client", b"\x40", CLIENT),  # short
    ("client", b"\x40\x01\x00\x10short", CLIENT),  # truncated
    ("client", b"\x40\x01\x00\x04ping", OTHER_CLIENT),  # no allocation
    ("peer", b"pong", PEER),  # channel: ChannelData to the client
    ("peer", b"", PEER),  # empty datagram on the channel
    ("peer", b"data", PEER_SAME_IP),  # permission only: a Data indication
    ("peer", b"spam", STRANGER),  # no permission: dropped
    ("client", b"\x40\x01\x00\x05hello", CLIENT),
    ("peer", b"again", PEER),
]


@pytest.mark.parametrize("bandwidth", [0, 12])
def test_fast_and_slow_paths_send_and_count_the_same(bandwidth):
    worlds = [World(fast, bandwidth=bandwidth) for fast in (False, True)]
    for kind, data, addr in EVENTS:
        results = []
        for w in worlds:
            (w.from_client if kind == "client" else w.from_peer)(data, addr)
            results.append((w.outputs(), w.counters()))
        assert results[0] == results[1], (kind, data, addr)
    slow, fast = worlds
    core = fast.svc.core
    if not bandwidth:
        assert fast.alloc.dropped == 3  # the unknown channel, the truncated frame, the stranger
        # to the peer: ping, ping (its length), the empty one, hello; to the client: pong, "", data, again
        assert (core.to_peer_packets, core.to_peer_bytes) == (4, 13)
        assert (core.to_client_packets, core.to_client_bytes) == (4, 13)
    else:
        assert fast.alloc.dropped > 3 and core.dropped_bandwidth > 0  # the cap dropped some
    for w in worlds:
        w.reactor.advance(1)  # the sweep refills the credit
    fast.from_client(b"\x40\x01\x00\x04ping")
    slow.from_client(b"\x40\x01\x00\x04ping")
    assert fast.outputs() == slow.outputs() == ([], [(b"ping", PEER)])


def test_the_fast_path_relays_both_ways_without_calling_the_core():
    w = World(True)
    calls = []
    w.svc.core.channel_data = lambda *a: calls.append(a)
    w.relay_proto.core.from_peer = lambda *a: calls.append(a)
    w.from_client(b"\x40\x01\x00\x04ping")
    w.from_peer(b"pong", PEER)
    assert w.outputs() == ([(b"\x40\x01\x00\x04pong", CLIENT)], [(b"ping", PEER)])
    assert calls == []


def test_a_refused_send_is_dropped_not_raised():
    import errno

    w = World(True)
    w.relay.socket.refuse = errno.ENOBUFS
    w.port.socket.refuse = errno.ENOBUFS
    w.from_client(b"\x40\x01\x00\x04ping")
    w.from_peer(b"pong", PEER)
    assert w.outputs() == ([], []) and w.stats["internal_error"] == 0
    assert w.alloc.dropped == 2
    core = w.svc.core  # refused by the socket, so not relayed: neither counted nor paid for
    assert (core.to_peer_packets, core.to_peer_bytes, core.to_client_packets, core.to_client_bytes) == (0, 0, 0, 0)
    # the slow path's sends count their failures the same way
    w.alloc.relay_write(b"ping", PEER)
    w.alloc.client_write(b"\x40\x01\x00\x04pong", CLIENT)
    assert w.alloc.dropped == 4
    # sent: counted, and paid for
    w.port.socket.refuse = w.relay.socket.refuse = None
    w.from_client(b"\x40\x01\x00\x04ping")
    w.from_peer(b"pong!", PEER)
    assert (core.to_peer_packets, core.to_peer_bytes, core.to_client_packets, core.to_client_bytes) == (1, 4, 1, 5)


@pytest_twisted.inlineCallbacks
def test_relayed_and_salon_sockets_get_large_buffers():
    from natsalon.server.turn.core import Allocation
    from natsalon.server.turn.relay import RELAY_BUFFER, SALON_SEND_BUFFER
    from test_turn_interop import start_salon

    svc = start_salon()
    try:
        for transport in svc.state.transports.values():
            assert transport.getHandle().getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) >= SALON_SEND_BUFFER
        alloc = Allocation(("127.0.0.1", 9), (0, 0), "u", "u", b"k", 0.0)
        assert svc.turn.relays.open(alloc) is not None
        sock = alloc.handle.getHandle()
        for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            assert sock.getsockopt(socket.SOL_SOCKET, option) >= RELAY_BUFFER
        svc.turn.relays.close(alloc)
    finally:
        yield defer.maybeDeferred(svc.stopService)


def test_a_tcp_client_takes_the_slow_path_from_peers():
    w = World(True)
    sent = []
    w.alloc.client_sendto = None  # as for a client over TCP or TLS
    w.alloc.client_write = lambda data, addr: sent.append((data, addr))
    w.from_peer(b"pong", PEER)
    assert sent == [(b"\x40\x01\x00\x04pong", CLIENT)]


def test_data_indication_from_the_fast_port_decodes():
    w = World(True)
    w.from_peer(b"data", PEER_SAME_IP)
    [(raw, to)] = w.wire.pop()
    msg = decode(raw)
    assert to == CLIENT and msg.method == Method.DATA and msg.get(Attr.DATA) == b"data"
    assert msg.get(Attr.XOR_PEER_ADDRESS) == Address(*PEER_SAME_IP)


def test_listen_relay_binds_reads_and_closes_on_a_real_reactor():
    from twisted.internet import reactor
    from twisted.internet.error import CannotListenError

    from natsalon.server.fastport import listen_relay

    class Proto:
        pass

    busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    busy.bind(("127.0.0.1", 0))
    try:
        with pytest.raises(CannotListenError):
            listen_relay(reactor, busy.getsockname()[1], Proto(), "127.0.0.1")
    finally:
        busy.close()
    relay = listen_relay(reactor, 0, Proto(), "127.0.0.1", 65503)
    try:
        host = relay.getHost()
        assert host.type == "UDP" and host.host == "127.0.0.1" and host.port > 0
        assert relay in reactor.getReaders() and relay.fileno() == relay.getHandle().fileno()
    finally:
        relay.stopListening()
        relay.stopListening()  # idempotent
    assert relay not in reactor.getReaders() and relay.fileno() == -1


def test_an_ipv6_relayed_socket_on_the_wildcard_takes_ipv6_alone():
    from twisted.internet import reactor

    from natsalon.server.fastport import listen_relay

    class Proto:
        pass

    try:
        relay = listen_relay(reactor, 0, Proto(), "::")
    except Exception as e:  # a machine without IPv6
        pytest.skip("no IPv6 here: %s" % e)
    try:
        assert relay.getHandle().getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
        # so the same port number stays free for an IPv4 relayed address
        v4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        v4.bind(("0.0.0.0", relay.getHost().port))
        v4.close()
    finally:
        relay.stopListening()


def _segmenting_sendmsg(self, buffers, ancdata, flags, addr):
    """A FakeSocket's ``sendmsg`` as the kernel does UDP_SEGMENT."""
    from test_gso import segments

    self.runs_sent = getattr(self, "runs_sent", 0) + 1
    return sum(self.sendto(d, addr) for d in segments(buffers, ancdata))


def test_a_burst_read_in_one_batch_goes_out_in_runs_the_same_as_the_slow_path(monkeypatch):
    monkeypatch.setattr(BoundSocket, "sendmsg", _segmenting_sendmsg, raising=False)
    worlds = [World(fast, bandwidth=0) for fast in (False, True)]
    to_peer = [b"\x40\x01\x00\x64" + i.to_bytes(4, "big") * 25 for i in range(150)]
    to_peer[100] = b"\x40\x05\x00\x04ping"  # no such channel: the slow path, between two runs
    from_peer = [(i.to_bytes(4, "big") * 25, PEER) for i in range(150)]
    from_peer[70] = (b"data", PEER_SAME_IP)  # a Data indication to the same client, in order
    slow, fast = worlds
    for data in to_peer:
        slow.from_client(data)
    for data, addr in from_peer:
        slow.from_peer(data, addr)
    fast.port.socket.inbox.extend((data, CLIENT) for data in to_peer)
    fast.port.doRead()
    fast.relay.socket.inbox.extend(from_peer)
    fast.relay.doRead()
    assert fast.outputs() == slow.outputs() and fast.counters() == slow.counters()
    # 64 + 36 before the unknown channel, 49 after it; 64 + 6 before the
    # Data indication, 64 + 15 after it
    assert fast.relay.socket.runs_sent == 3 and fast.port.socket.runs_sent == 4
    # every datagram reached the client (the Data indication too), all but the unknown channel the peer
    assert fast.svc.core.to_peer_packets == 149 and fast.svc.core.to_client_packets == 150
