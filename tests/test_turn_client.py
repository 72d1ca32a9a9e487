"""natsalon's TURN client (natsalon.client.turn) on loopback against two
servers: the salon's own relay and coturn's ``turnserver``, with the same
shared-secret credentials; plus its timers and errors on a Clock."""

from __future__ import annotations

import os
import shutil
import socket
import time

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor
from twisted.internet.task import Clock

from natsalon.client.turn.client import TurnClient, TurnError, channel_data
from natsalon.client.turn.protocol import TurnClientProtocol
from natsalon.server.service import SalonConfig, SalonService
from natsalon.server.turn import TurnConfig, mint
from natsalon.stun import Address, Attr, Class, ErrorCode, Message, Method, decode, encode

SECRET = b"turn-client-secret"


def need(tool):
    if shutil.which(tool) is None:
        msg = "%s is not installed (make test installs it)" % tool
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg)
        pytest.skip(msg)


def free_port(kind=socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Peer(protocol.DatagramProtocol):
    noisy = False

    def __init__(self):
        self.queue = defer.DeferredQueue()

    def datagramReceived(self, data, addr):
        self.queue.put((data, addr))

    def get(self, timeout=5.0):
        return self.queue.get().addTimeout(timeout, reactor)


@pytest.fixture
def salon_service():
    svc = SalonService(reactor, SalonConfig(interface="127.0.0.1", port=0, alt_port=0, rcvbuf=0, rate_limit=0,
                                            turn=TurnConfig(secrets=(SECRET,), allow_peer=("127.0.0.1/32",))))
    svc.startService()
    yield svc
    pytest_twisted.blockon(defer.maybeDeferred(svc.stopService))


@pytest.fixture
def our_salon(salon_service):
    return ("127.0.0.1", salon_service.layout.ports[0])


class Quiet(protocol.ProcessProtocol):
    def __init__(self):
        self.ended = defer.Deferred()

    def processEnded(self, reason):
        self.ended.callback(None)


@pytest.fixture
def coturn(tmp_path):
    need("turnserver")
    port = free_port()
    low = 40000 + (port % 2000) * 10
    proc = Quiet()
    argv = ["turnserver", "-n", "--listening-ip", "127.0.0.1", "--relay-ip", "127.0.0.1", "--listening-port",
            str(port), "--use-auth-secret", "--static-auth-secret", SECRET.decode(), "--realm", "natsalon.test",
            "--allow-loopback-peers", "--no-cli", "--no-tls", "--no-dtls", "--no-tcp", "--min-port", str(low),
            "--max-port", str(low + 9), "--log-file", str(tmp_path / "turnserver.log"), "--pidfile",
            str(tmp_path / "turnserver.pid"), "--userdb", str(tmp_path / "turndb"), "-m", "1"]
    transport = reactor.spawnProcess(proc, shutil.which("turnserver"), argv, env=os.environ)
    time.sleep(0.5)  # it binds at once; the client's retransmissions cover the rest
    try:
        yield ("127.0.0.1", port)
    finally:
        transport.signalProcess("TERM")
        pytest_twisted.blockon(proc.ended)


@defer.inlineCallbacks
def relay_both_ways(server, n=50):
    username, password = mint(SECRET, "alice", int(time.time()) + 600)
    client = TurnClientProtocol(reactor, server, username, password)
    got = defer.DeferredQueue()
    client.on_data = lambda payload, peer: got.put((payload, peer))
    port = reactor.listenUDP(0, client, interface="127.0.0.1")
    peer = Peer()
    peer_port = reactor.listenUDP(0, peer, interface="127.0.0.1")
    me = Address("127.0.0.1", peer_port.getHost().port)
    try:
        allocation = yield client.client.allocate()
        assert allocation.relayed.host == "127.0.0.1" and allocation.lifetime > 0
        # a Send indication first (a permission is enough), then a channel
        yield client.client.permit(me.host)
        assert client.client.send(b"indication", me)
        data, src = yield peer.get()
        assert data == b"indication" and Address(*src) == allocation.relayed
        channel = yield client.client.bind(me)
        assert 0x4000 <= channel <= 0x7FFF
        for i in range(n):
            assert client.client.send(b"to-peer %d" % i, me)
            peer.transport.write(b"to-client %d" % i, tuple(allocation.relayed))
        to_peer = set()
        for _ in range(n):
            data, src = yield peer.get()
            to_peer.add(data)
        to_client = set()
        for _ in range(n):
            payload, src_peer = yield got.get().addTimeout(5, reactor)
            assert src_peer == me
            to_client.add(payload)
        assert to_peer == {b"to-peer %d" % i for i in range(n)}
        assert to_client == {b"to-client %d" % i for i in range(n)}
        released = yield client.client.close()
        assert released is True  # the server confirmed LIFETIME 0
        # and the client drops whatever the relay still sends
        peer.transport.write(b"late", tuple(allocation.relayed))
        with pytest.raises(defer.TimeoutError):
            yield got.get().addTimeout(0.5, reactor)
    finally:
        port.stopListening()
        peer_port.stopListening()
    return allocation


@pytest.mark.interop
@pytest_twisted.inlineCallbacks
def test_relays_both_ways_through_the_salon(salon_service, our_salon):
    yield relay_both_ways(our_salon)
    assert len(salon_service.turn.core) == 0  # the allocation is gone on the server


@pytest.mark.interop
@pytest_twisted.inlineCallbacks
def test_relays_both_ways_through_coturn(coturn):
    yield relay_both_ways(coturn)


@pytest.mark.interop
@pytest_twisted.inlineCallbacks
def test_wrong_password_is_a_401(our_salon):
    client = TurnClientProtocol(reactor, our_salon, "%d:alice" % (time.time() + 600), "not the password")
    port = reactor.listenUDP(0, client, interface="127.0.0.1")
    try:
        with pytest.raises(TurnError) as e:
            yield client.client.allocate()
        assert e.value.code == 401
    finally:
        port.stopListening()


class FakeServer:
    """Answers each request after 10 ms: 401 with a nonce first, then success."""

    def __init__(self, clock):
        self.clock = clock
        self.client = None
        self.requests = []

    def send(self, data, addr):
        msg = decode(data)
        self.requests.append(msg)
        if msg.cls != Class.REQUEST:
            return
        if not msg.has(Attr.USERNAME):
            answer = Message(msg.method, Class.ERROR, msg.transaction_id, (
                (Attr.ERROR_CODE, ErrorCode(401, "Unauthenticated")), (Attr.REALM, "r"), (Attr.NONCE, "n1")))
        else:
            attrs = ((Attr.LIFETIME, min(600, msg.get(Attr.LIFETIME, 600))),)
            if msg.method == Method.ALLOCATE:
                attrs += ((Attr.XOR_RELAYED_ADDRESS, Address("198.51.100.1", 50000)),
                          (Attr.XOR_MAPPED_ADDRESS, Address("192.0.2.1", 40000)))
            answer = Message(msg.method, Class.SUCCESS, msg.transaction_id, attrs)
        self.clock.callLater(0.01, self.client.datagram, encode(answer), ("203.0.113.10", 3478))


def test_refresh_schedule_and_close_on_a_clock():
    clock = Clock()
    server = FakeServer(clock)
    client = server.client = TurnClient(clock, server.send, ("203.0.113.10", 3478), "u", "p")
    done = []
    client.allocate().addCallback(done.append)
    clock.pump([0.01] * 10)
    assert done and done[0].relayed == Address("198.51.100.1", 50000)
    client.bind(Address("192.0.2.50", 6000)).addCallback(done.append)
    clock.pump([0.01] * 10)
    assert done[-1] == 0x4000
    methods = lambda: [m.method for m in server.requests]  # noqa: E731
    before = len(server.requests)
    clock.advance(300)  # half the lifetime: one Refresh
    assert methods()[before:].count(Method.REFRESH) == 1
    clock.advance(180)  # the channel, at 8 minutes
    assert methods().count(Method.CHANNEL_BIND) == 2
    # relayed data: ChannelData from the server is the bound peer's
    assert client.datagram(channel_data(0x4000, b"hi"), ("203.0.113.10", 3478)) == (b"hi", Address("192.0.2.50", 6000))
    assert client.datagram(channel_data(0x4001, b"hi"), ("203.0.113.10", 3478)) is None
    assert client.datagram(channel_data(0x4000, b"hi"), ("198.51.100.9", 3478)) is None
    released = []
    client.close().addCallback(released.append)
    clock.pump([0.01] * 10)
    assert released == [True]
    assert server.requests[-1].method == Method.REFRESH and server.requests[-1].get(Attr.LIFETIME) == 0
    assert not [c for c in clock.getDelayedCalls() if c.active()]
