"""The way to the salon when UDP does not get there (issue 12, "UDP
blocked"): stream framing, the switch from UDP to TCP/TLS (Clock-driven,
fake transports), the salon's introducer on its TURN streams, and on
loopback a client whose UDP is cut connecting through the relay over TCP
and over TLS (a throwaway CA), and refusing a certificate from another CA."""
from __future__ import annotations

import os
from typing import List

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from natsalon import wire
from natsalon.client.api import open_client
from natsalon.client.demux import ClientSocket
from natsalon.client.errors import SalonUnreachable
from natsalon.client.session import Phase
from natsalon.client.streamlink import (
    FrameError, SalonLink, StreamProtocol, StreamTarget, pad, split_frames, stream_connector, stream_policy,
)
from natsalon.crypto.secret import derive
from natsalon.server.binding import Reply
from natsalon.server.introducer.handler import Introducer
from natsalon.server.service import SalonConfig, SalonService
from natsalon.server.turn.core import TurnConfig
from natsalon.stun import Address, Class, Message, Method, decode, encode
from natsalon.stun.client import RetransmitPolicy, StunTimeout, new_transaction_id
from natsalon.testing import FakeDatagramTransport
from tlscerts import make_ca, make_server_cert

SALON = ("203.0.113.10", 3478)
BINDING = Message(Method.BINDING, Class.REQUEST, b"\x01" * 12)


# -- framing -------------------------------------------------------------------
def test_split_frames_stun_and_padded_channel_data_in_pieces():
    stun = encode(BINDING)
    stream = stun + b"\x40\x00\x00\x03abc\x00" + b"\x40\x01\x00\x04wxyz" + stun[:7]
    frames, rest = split_frames(stream)
    assert frames == [stun, b"\x40\x00\x00\x03abc", b"\x40\x01\x00\x04wxyz"] and rest == stun[:7]
    frames, rest = split_frames(rest + stun[7:])
    assert frames == [stun] and rest == b""
    # a ChannelData frame whose padding has not arrived yet waits for it
    assert split_frames(b"\x40\x00\x00\x03abc") == ([], b"\x40\x00\x00\x03abc")
    with pytest.raises(FrameError, match="neither"):
        split_frames(b"\x80\x00\x00\x00")
    with pytest.raises(FrameError, match="bytes"):
        split_frames(b"\x00\x01\xff\xf0" + b"\x00" * 16)
    assert pad(b"abc") == b"abc\x00" and pad(b"abcd") == b"abcd"


def test_stream_policy_sends_once_and_waits_the_whole_udp_schedule():
    udp = RetransmitPolicy(rto=0.25, sends=7, last_wait=8, max_rto=2.0)
    offsets, total = stream_policy(udp).schedule()
    assert offsets == [0.0] and total == udp.schedule()[1] == 9.75


# -- the switch ----------------------------------------------------------------
class Streams:
    """``connect(link)`` for the link: each call is a Deferred the test
    fires with a StreamProtocol on a StringTransport (or fails)."""

    def __init__(self):
        self.pending: List[defer.Deferred] = []
        self.protos: List[StreamProtocol] = []

    def __call__(self, link):
        d = defer.Deferred()
        self.pending.append(d)
        self.link = link
        return d

    def open(self):
        proto = StreamProtocol(False, self.link.frame, self.link.lost)
        proto.makeConnection(StringTransport())
        self.protos.append(proto)
        self.pending.pop(0).callback(proto)
        return proto

    def fail(self, error):
        self.pending.pop(0).errback(error)


def sent(proto: StreamProtocol):
    data = proto.transport.value()
    proto.transport.clear()
    return [decode(f) for f in split_frames(data)[0]]


def make_link(connect=None):
    clock = task.Clock()
    udp = ClientSocket(clock)
    udp.makeConnection(FakeDatagramTransport("10.0.0.2", 4000))
    streams = Streams() if connect is None else connect
    return clock, udp, SalonLink(clock, udp, SALON, streams, kind="tcp"), streams


def test_unanswered_request_moves_to_the_stream_and_stays_there():
    clock, udp, link, streams = make_link()
    d = link.request(BINDING, SALON)
    clock.advance(3.7)
    assert [a for _, a in udp.transport.pop()] == [SALON] * 4 and not streams.pending
    clock.advance(0.05)  # 3.75 s without an answer: the stream is opened
    assert len(streams.pending) == 1 and link.transport == "udp"
    proto = streams.open()
    assert link.transport == "tcp" and link.streamed
    # the same transaction, once, on the stream; nothing more over UDP
    udp.transport.pop()  # the fifth send left at 3.75 s too
    clock.advance(0)
    [again] = sent(proto)
    assert again.transaction_id == BINDING.transaction_id
    failures = []
    d.addErrback(failures.append)
    clock.advance(9.7)
    assert not failures
    clock.advance(0.1)  # no answer on the stream either, within the UDP schedule's time
    assert udp.transport.pop() == [] and sent(proto) == [] and failures[0].check(StunTimeout)


def test_answer_on_the_stream_fires_the_moved_request():
    clock, udp, link, streams = make_link()
    d = link.request(BINDING, SALON)
    clock.advance(3.75)
    proto = streams.open()
    clock.advance(0)
    sent(proto)
    proto.dataReceived(encode(Message(Method.BINDING, Class.SUCCESS, BINDING.transaction_id)))
    assert d.called and d.result.message.cls == Class.SUCCESS
    # from now on: what goes to the salon takes the stream, anything else UDP
    link.write(b"\x40\x00\x00\x01x", SALON)
    assert proto.transport.value() == b"\x40\x00\x00\x01x\x00\x00\x00"
    proto.transport.clear()
    link.write(b"probe", ("192.0.2.7", 5000))
    assert udp.transport.pop()[-1] == (b"probe", ("192.0.2.7", 5000))
    # and a new request is sent once on the stream
    second = Message(Method.BINDING, Class.REQUEST, new_transaction_id())
    link.request(second, SALON)
    clock.advance(5)
    assert [m.transaction_id for m in sent(proto)] == [second.transaction_id]


def test_a_salon_answering_over_udp_keeps_udp():
    clock, udp, link, streams = make_link()
    d = link.request(BINDING, SALON)
    udp.datagramReceived(encode(Message(Method.BINDING, Class.SUCCESS, BINDING.transaction_id)), SALON)
    assert d.called and link.answered
    clock.advance(30)
    link.checked(defer.succeed(False))  # a lost check after an answer proves nothing
    assert not streams.pending and link.transport == "udp"


def test_silent_check_opens_the_stream_at_once():
    clock, udp, link, streams = make_link()
    d = link.request(BINDING, SALON)
    link.checked(defer.succeed(False))
    proto = streams.open()
    clock.advance(0)
    assert [m.transaction_id for m in sent(proto)] == [BINDING.transaction_id]
    d.cancel()


def test_stream_refused_leaves_the_udp_request_to_time_out():
    clock, udp, link, streams = make_link()
    d = link.request(BINDING, SALON, policy=RetransmitPolicy(rto=1.0, sends=5, last_wait=4, max_rto=1.0))
    failures = []
    d.addErrback(failures.append)
    clock.advance(3.75)
    streams.fail(ConnectionRefusedError("refused"))
    assert not failures and link.transport == "udp"
    clock.advance(10)
    assert len(failures) == 1 and failures[0].check(SalonUnreachable)
    assert str(failures[0].value) == "no answer from the salon at 203.0.113.10:3478 over UDP, nor over TCP: refused"
    assert len(udp.transport.pop()) == 5


def test_icmp_refusal_with_no_stream_either_says_both():
    clock, udp, link, streams = make_link()
    failed = []
    link.checked(defer.fail(SalonUnreachable("nothing listens on UDP"))).addErrback(failed.append)
    streams.fail(ConnectionRefusedError("Connection was refused by other side"))
    assert failed[0].check(SalonUnreachable)
    assert "nothing listens on UDP; over TCP: " in str(failed[0].value) and "refused" in str(failed[0].value)
    # when the stream opens, the refusal is no error: the join goes on over it
    ok = []
    link.checked(defer.fail(SalonUnreachable("nothing listens on UDP"))).addCallback(ok.append)
    streams.open()
    assert ok == [None]


def test_a_request_timing_out_after_an_icmp_refusal_names_the_refusal():
    # the join's own timeout may fire before the check's chain ends (a loaded
    # machine): its reason must still say what UDP heard, not "no answer"
    clock, udp, link, streams = make_link()
    d = link.request(BINDING, SALON, policy=RetransmitPolicy(rto=1.0, sends=5, last_wait=4, max_rto=1.0))
    failures = []
    d.addErrback(failures.append)
    link.checked(defer.fail(SalonUnreachable("nothing listens on UDP (ICMP port unreachable)"))).addErrback(
        lambda f: None)
    streams.fail(ConnectionRefusedError("refused"))
    clock.advance(20)
    assert len(failures) == 1
    assert str(failures[0].value) == "nothing listens on UDP (ICMP port unreachable), nor over TCP: refused"


def test_stream_frames_go_to_the_relay_first_then_answers_then_pushed_introductions():
    clock, udp, link, streams = make_link()
    link.switch("test")
    proto = streams.open()
    relayed, pushed = [], []
    link.relays[SALON] = lambda data, addr: relayed.append(data) or data[0] == 0x40
    link.on_salon = lambda msg, addr: pushed.append((msg, addr))
    assert udp.on_salon == link.on_salon  # a pushed introduction over UDP reaches the joiner too
    push = Message(Method.JOIN, Class.INDICATION, new_transaction_id())
    proto.dataReceived(b"\x40\x00\x00\x02hi\x00\x00" + encode(push))
    assert relayed[0] == b"\x40\x00\x00\x02hi" and [(m.method, a) for m, a in pushed] == [(Method.JOIN, SALON)]
    # the stream closes: the next write to the salon reopens it (that one is lost)
    proto.connectionLost(None)
    with pytest.raises(OSError):
        link.write(b"x" * 20, SALON)
    assert len(streams.pending) == 1


def test_a_closed_link_opens_nothing():
    clock, udp, link, streams = make_link()
    link.close()
    failed = []
    link.switch("test").addErrback(failed.append)
    assert failed and not streams.pending


# -- the salon: the introducer on its TURN streams ---------------------------------
def test_join_over_a_turn_stream_and_polls_keep_it_open():
    from test_turn_stream import StreamClient, setup

    clock, svc = setup()
    intro = Introducer(clock)
    svc.state.handlers.update(intro.handlers())
    c = StreamClient(svc)
    keys = derive("room", b"secret")
    msg, _ = wire.join_request(keys.room_id, os.urandom(16), [], keys.k_join, None)
    c.stream.dataReceived(encode(msg, sha256_key=keys.k_join))
    [(data, _)] = c.wire.pop()
    cookie = wire.parse_join_answer(decode(data)).cookie
    assert cookie  # the cookie check holds on streams too, for the connection's address
    nonce, token = os.urandom(16), wire.new_leave_token()
    msg, _ = wire.join_request(keys.room_id, nonce, [], keys.k_join, cookie, leave_hash=wire.leave_hash(token))
    c.stream.dataReceived(encode(msg, sha256_key=keys.k_join))
    [(data, _)] = c.wire.pop()
    ans = wire.parse_join_answer(decode(data))
    assert ans.kind is wire.Answer.WAITING and ans.observed == Address("198.51.100.7", 41000)
    assert intro.stats["join_waiting"] == 1
    # polling keeps a connection without an allocation open past the idle timeout
    for second in range(1, 181):
        clock.advance(1)
        if second % 50 == 0:
            c.stream.dataReceived(encode(msg, sha256_key=keys.k_join))
            c.wire.pop()
    assert not c.tcp.disconnecting
    for _ in range(120):
        clock.advance(1)
    assert c.tcp.disconnecting  # silent, no allocation: closed


def test_leave_over_a_turn_stream():
    from test_turn_stream import StreamClient, setup

    clock, svc = setup()
    intro = Introducer(clock)
    svc.state.handlers.update(intro.handlers())
    c = StreamClient(svc)
    keys = derive("room", b"secret")
    nonce, token = os.urandom(16), wire.new_leave_token()
    cookie = None
    for _ in range(2):
        msg, _ = wire.join_request(keys.room_id, nonce, [], keys.k_join, cookie, leave_hash=wire.leave_hash(token))
        c.stream.dataReceived(encode(msg, sha256_key=keys.k_join))
        [(data, _)] = c.wire.pop()
        cookie = wire.parse_join_answer(decode(data)).cookie or cookie
    c.stream.dataReceived(wire.leave_request(keys.room_id, nonce, token))
    [(data, _)] = c.wire.pop()
    assert decode(data).cls == Class.SUCCESS and intro.stats["leaves"] == 1


def test_salon_pushes_to_a_stream_member_down_its_connection_only():
    config = SalonConfig(interface="203.0.113.10", port=3478, turn=TurnConfig(secrets=(b"s",)))
    svc = SalonService(task.Clock(), config)
    got = []
    svc.turn.relays.writers[("tcp", 1)] = lambda data, addr: got.append((data, addr))
    svc._push(Reply(("tcp", 1), ("192.0.2.7", 40000), b"intro"))
    assert got == [(b"intro", ("192.0.2.7", 40000))]
    del svc.turn.relays.writers[("tcp", 1)]
    svc._push(Reply(("tcp", 1), ("192.0.2.7", 40000), b"late"))  # closed: not sent anywhere
    assert got == [(b"intro", ("192.0.2.7", 40000))]


# -- loopback: a client whose UDP is cut ---------------------------------------------
def _salon(**turn) -> SalonService:
    salon = SalonService(reactor, SalonConfig(interface="127.0.0.1", port=0, alt_port=0, rate_limit=0, turn=TurnConfig(
        secrets=(b"loopback turn secret",), allow_peer=("127.0.0.0/8",), **turn)))
    salon.startService()
    return salon


@defer.inlineCallbacks
def _blocked_pair(server, room, **tls):
    """Client a with every UDP datagram it sends dropped (its network blocks
    UDP), client b plain; both connected: (a, b, a's events)."""
    events: List[dict] = []
    a = yield open_client(reactor, server, room, b"secret", interface="127.0.0.1", hard_nat=False,
                          on_event=events.append, **tls)
    b = yield open_client(reactor, server, room, b"secret", interface="127.0.0.1", hard_nat=False)
    a.core.socket.transport.write = lambda data, addr=None: None  # the firewall
    a.core.link.switch_after = 0.5
    a.start()
    b.start()
    try:
        yield defer.gatherResults([a.when_connected(1), b.when_connected(1)]).addTimeout(20, reactor)
    except BaseException:
        a.stop()
        b.stop()
        raise
    return a, b, events


@defer.inlineCallbacks
def _exchange(a, b, n: int = 200):
    got = {"a": [], "b": []}
    done = defer.Deferred()

    def receiver(name):
        def recv(data):
            got[name].append(data)
            if len(got["a"]) == len(got["b"]) == n and not done.called:
                done.callback(None)
        return recv

    a.connection.set_receiver(receiver("a"))
    b.connection.set_receiver(receiver("b"))
    for i in range(n):
        a.connection.send(b"a%d" % i)
        b.connection.send(b"b%d" % i)
    yield done.addTimeout(10, reactor)
    return got


@pytest_twisted.inlineCallbacks
def test_udp_blocked_client_connects_through_the_relay_over_tcp():
    salon = _salon()
    try:
        a, b, events = yield _blocked_pair(("127.0.0.1", salon.layout.ports[0]), "tcp-room")
        try:
            assert a.core.salon_transport == "tcp" and b.core.salon_transport == "udp"
            assert a.connection.path.kind == b.connection.path.kind == "relay"
            assert a.connection.path.local.relayed is not None  # a sends through its allocation
            got = yield _exchange(a, b)
            assert got["b"] == [b"a%d" % i for i in range(200)] and got["a"] == [b"b%d" % i for i in range(200)]
            assert salon.state.stats["join_introduced"] >= 1
        finally:
            a.stop()
            b.stop()
    finally:
        yield salon.stopService()


@pytest_twisted.inlineCallbacks
def test_udp_blocked_client_connects_over_tls_and_refuses_another_ca(tmp_path):
    ca = make_ca(tmp_path)
    cert, key = make_server_cert(tmp_path, ca, "127.0.0.1")
    salon = _salon(tls_cert=str(cert), tls_key=str(key), tls_port=0)
    try:
        server = ("127.0.0.1", salon.layout.ports[0])
        tls_port = salon.turn.tls.getHost().port
        a, b, events = yield _blocked_pair(server, "tls-room", salon_tls=("127.0.0.1", tls_port),
                                           salon_ca=str(ca.cert_path))
        try:
            assert a.core.salon_transport == "tls" and a.connection.path.kind == "relay"
            got = yield _exchange(a, b, 100)
            assert len(got["a"]) == len(got["b"]) == 100
        finally:
            a.stop()
            b.stop()
        # a certificate from a CA we do not trust: the stream is refused, clearly
        other = make_ca(tmp_path, "other-ca")
        link = SalonLink(reactor, ClientSocket(reactor), server, stream_connector(
            reactor, StreamTarget("tls", "127.0.0.1", tls_port, ca=str(other.cert_path))), kind="tls")
        with pytest.raises(SalonUnreachable, match="TLS handshake failed.*certificate"):
            yield link.switch("test")
        # and one naming another address
        link = SalonLink(reactor, ClientSocket(reactor), server, stream_connector(
            reactor, StreamTarget("tls", "127.0.0.1", tls_port, name="127.0.0.2", ca=str(ca.cert_path))),
            kind="tls")
        with pytest.raises(SalonUnreachable, match="TLS handshake failed"):
            yield link.switch("test")
    finally:
        yield salon.stopService()


# -- the client machine on a Clock: UDP cut, the salon over an in-memory stream -------
class _StreamEnd:
    """One end of an in-memory TCP connection: what is written reaches the
    other end's ``dataReceived`` after the net's delay."""

    disconnecting = False

    def __init__(self, net, local, peer) -> None:
        self.net, self.local, self.peer = net, local, peer
        self.other = None
        self.proto = None

    def write(self, data: bytes) -> None:
        if not self.disconnecting:
            self.net.clock.callLater(self.net.delay, self.other.proto.dataReceived, data)

    def getPeer(self):
        return IPv4Address("TCP", *self.peer)

    def getHost(self):
        return IPv4Address("TCP", *self.local)

    def registerProducer(self, producer, streaming) -> None:
        pass

    def loseConnection(self) -> None:
        if not self.disconnecting:
            self.disconnecting = self.other.disconnecting = True
            self.proto.connectionLost(None)
            self.other.proto.connectionLost(None)

    abortConnection = loseConnection


def _blocked_net(blocked):
    """test_relay's network with every UDP datagram from or to ``blocked`` dropped."""
    from test_relay import RelayNet

    class Net(RelayNet):
        def send(self, src, dst, data: bytes) -> None:
            if src not in blocked and dst not in blocked:
                super().send(src, dst, data)

    return Net()


def _stream_client(net, addr, **settings):
    """A client machine of ``net`` whose salon link opens in-memory streams
    to the salon's TURN stream factory (from ``addr``'s host)."""
    from test_session import SALON as NET_SALON

    machine, core, events = net.client(addr, **settings)
    ports = iter(range(45000, 46000))

    def connect(link):
        here = (addr[0], next(ports))
        client_end, server_end = _StreamEnd(net, here, NET_SALON), _StreamEnd(net, NET_SALON, here)
        client_end.other, server_end.other = server_end, client_end
        server = net.turn.streams.buildProtocol(None)
        server_end.proto = server
        server.makeConnection(server_end)
        proto = StreamProtocol(False, link.frame, link.lost)
        client_end.proto = proto
        proto.makeConnection(client_end)
        return proto.ready

    core.link = SalonLink(net.clock, core.socket, NET_SALON, connect, kind="tcp")
    core.check_salon = lambda: core.link.checked(defer.succeed(False))  # the check heard nothing
    return machine, core, events


def _exchange_frames(ca, cb, n=30):
    got = {"a": [], "b": []}
    ca.connection.set_receiver(got["a"].append)
    cb.connection.set_receiver(got["b"].append)
    for i in range(n):
        assert ca.connection.send(b"a%d" % i)
        assert cb.connection.send(b"b%d" % i)
    return got


def test_machine_with_udp_cut_joins_and_relays_over_the_stream_at_once():
    from test_relay import A, B

    net = _blocked_net({A})
    net.salon()
    a, ca, ea = _stream_client(net, A, relay_after=1.0)
    b, cb, eb = net.client(B, relay_after=1.0)
    a.start()
    net.run(1.0)
    assert ca.phase is Phase.WAITING and ca.salon_transport == "tcp"
    b.start()
    net.run(3.0)
    assert ca.phase is cb.phase is Phase.CONNECTED
    assert ca.connection.path.kind == cb.connection.path.kind == "relay"
    assert ca.connection.path.local.relayed is not None  # a sends through its allocation, on the stream
    # no UDP to the salon: a's relay joins the race at once, b's after its head start
    after = {name: [e for e in ev if e["event"] == "relay-allocating"][0]["after_ms"] for name, ev in
             (("a", ea), ("b", eb))}
    assert after["a"] < 50 and after["b"] >= 1000, after
    got = _exchange_frames(ca, cb)
    net.run(0.5)
    assert got["b"] == [b"a%d" % i for i in range(30)] and got["a"] == [b"b%d" % i for i in range(30)]
    a.stop()
    b.stop()
    net.run(1.0)
    assert len(net.turn.core) == 0  # a's allocation went with its LEAVE and Refresh 0 (or its stream)


def test_two_machines_with_udp_cut_relay_to_each_other():
    from test_relay import A, B

    net = _blocked_net({A, B})
    net.salon()
    a, ca, _ = _stream_client(net, A, relay_after=1.0)
    b, cb, _ = _stream_client(net, B, relay_after=1.0)
    a.start()
    b.start()
    net.run(4.0)
    assert ca.phase is cb.phase is Phase.CONNECTED and ca.salon_transport == cb.salon_transport == "tcp"
    for core in (ca, cb):
        path = core.connection.path
        assert path.kind == "relay" and path.local.relayed is not None
        assert path.address[0] == net.relay_host  # the peer's relayed address, from our own allocation
    got = _exchange_frames(ca, cb)
    net.run(0.5)
    assert len(got["a"]) == len(got["b"]) == 30
    a.stop()
    b.stop()


def test_machine_with_udp_cut_recovers_when_its_stream_drops():
    """The salon's end of the stream closes (a salon restart, say): the
    allocation goes with it, the keepalive notices, and the re-join opens
    a new stream and relays again."""
    from test_relay import A, B

    net = _blocked_net({A})
    net.salon()
    a, ca, ea = _stream_client(net, A, relay_after=1.0, keepalive=1.0, dead_after=2)
    b, cb, eb = net.client(B, relay_after=1.0, keepalive=1.0, dead_after=2)
    a.start()
    b.start()
    net.run(3.0)
    assert ca.phase is cb.phase is Phase.CONNECTED
    first = ca.link.stream
    first.transport.other.loseConnection()  # the salon side closes
    assert ca.link.stream is None and ca.link.streamed
    net.run(10.0)
    assert ca.phase is cb.phase is Phase.CONNECTED
    assert [e["event"] for e in ea].count("path-lost") == 1
    assert ca.link.stream is not None and ca.link.stream is not first
    assert ca.connection.path.kind == "relay"
    got = _exchange_frames(ca, cb)
    net.run(0.5)
    assert len(got["a"]) == len(got["b"]) == 30
    a.stop()
    b.stop()
