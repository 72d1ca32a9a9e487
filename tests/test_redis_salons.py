"""Two salons sharing rooms in one real redis-server (loopback TCP), on
the real reactor: peers joining different salons meet (the waiting one is
told by its own salon, over pub/sub); 1,000 rooms paired through both
with joins interleaved at random; a member whose salon dies re-joins the
other; Redis stopped while members wait and started again."""

from __future__ import annotations

import os
import random

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import deferLater
from twisted.logger import LogLevel, globalLogPublisher

from natsalon import wire
from natsalon.client.demux import ClientSocket
from natsalon.client.join import Joiner
from natsalon.client.stunsocket import StunClientProtocol
from natsalon.crypto.secret import RoomKeys, derive, new_nonce
from natsalon.server.service import SalonConfig, SalonService
from natsalon.stun import Address, Attr, Class, Message, Method, decode
from natsalon.stun.client import RetransmitPolicy

from redis_server import BlockingLink, RedisServer

SECRET = b"cookie-secret-shared-by-the-salons"


@pytest.fixture
def redis():
    server = RedisServer(tcp=True).start()
    yield server
    server.cleanup()


def make_salon(redis, instance, **settings) -> SalonService:
    config = SalonConfig(interface="127.0.0.1", port=0, alt_port=0, rate_limit=0, rcvbuf=1 << 20,
                         rooms=redis.address, instance_id=instance, cookie_secrets=(SECRET,), **settings)
    return SalonService(reactor, config)


@defer.inlineCallbacks
def started(*salons):
    for salon in salons:
        salon.startService()
    for salon in salons:
        yield salon.shared.link.whenReady()
        yield salon.shared.notifier.subscriber.whenReady()


@defer.inlineCallbacks
def stopped(*salons):
    for salon in salons:
        if salon.running:
            yield salon.stopService()


def big_receive_buffer(sock, size: int = 8 << 20) -> None:
    """``size`` bytes of receive buffer (beyond ``rmem_max`` when root)."""
    import socket

    try:
        sock.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVBUFFORCE", socket.SO_RCVBUF), size)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def server_of(salon):
    return ("127.0.0.1", salon.layout.ports[0])


@defer.inlineCallbacks
def until(condition, timeout: float = 15.0):
    waited = 0.0
    while not condition():
        if waited > timeout:
            raise AssertionError("condition not met within %s s" % timeout)
        yield deferLater(reactor, 0.05, lambda: None)
        waited += 0.05


class Peer:
    """A real client socket and :class:`Joiner` on loopback."""

    def __init__(self, room: str = "room", nonce=None) -> None:
        self.sock = ClientSocket(reactor)
        self.port = reactor.listenUDP(0, self.sock, interface="127.0.0.1")
        self.keys = derive(room, "s3cret")
        self.nonce = nonce or new_nonce()
        self.waiting = defer.Deferred()

    def join(self, salon) -> defer.Deferred:
        self.joiner = Joiner(reactor, self.sock, server_of(salon), self.keys, self.nonce, (),
                             on_waiting=lambda: self.waiting.called or self.waiting.callback(None))
        return self.joiner.start()

    def close(self):
        return self.port.stopListening()


@pytest_twisted.inlineCallbacks
def test_peers_joining_different_salons_meet(redis):
    one, two = make_salon(redis, "one"), make_salon(redis, "two")
    yield started(one, two)
    a, b = Peer(), Peer()
    try:
        da = a.join(one)
        yield a.waiting
        db = b.join(two)
        ia, ib = yield defer.gatherResults([da, db])
        assert ia.peer.nonce == b.nonce and ib.peer.nonce == a.nonce
        assert ia.peer_address == Address("127.0.0.1", b.port.getHost().port)
        # a heard of b from its own salon, told by the other over pub/sub
        assert two.state.stats["notices_sent"] == 1 and one.state.stats["notices_received"] == 1
    finally:
        yield a.close()
        yield b.close()
        yield stopped(one, two)


class Crowd(DatagramProtocol):
    """Many members on one socket, speaking the wire functions directly:
    cookie, join, polls every second, retransmission after one; each
    member's introductions are recorded (answers and pushed indications)."""

    def __init__(self) -> None:
        self.by_txid = {}
        self.by_nonce = {}

    def add(self, member) -> None:
        self.by_nonce[member["nonce"]] = member

    def send(self, member) -> None:
        if member["peers"]:
            return
        msg, raw = wire.join_request(member["keys"].room_id, member["nonce"], (), member["keys"].k_join,
                                     member["cookie"])
        self.by_txid[msg.transaction_id] = member
        self.transport.write(raw, member["server"])
        member["timer"] = reactor.callLater(1.0, self.send, member)

    def datagramReceived(self, data, addr) -> None:
        msg = decode(data)
        ans = wire.parse_join_answer(msg)
        if msg.cls == Class.INDICATION:
            member = self.by_nonce[ans.nonce]
        else:
            member = self.by_txid.pop(msg.transaction_id, None)
            if member is None:
                return
        if ans.kind is wire.Answer.COOKIE:
            member["cookie"] = ans.cookie
            if member["timer"].active():
                member["timer"].cancel()
            self.send(member)
        elif ans.kind is wire.Answer.INTRODUCED:
            for raw, _ in ans.peers:
                peer = wire.verify_peer_join(raw, member["keys"].k_join, member["keys"].room_id)
                member["peers"].add(peer.nonce)
            if member["timer"].active():
                member["timer"].cancel()
        elif ans.kind is wire.Answer.REFUSED:
            member["refused"] = ans.error.code


@pytest_twisted.inlineCallbacks
def test_a_thousand_rooms_through_two_salons_pair_exactly_once(redis):
    settings = dict(max_waiting_per_ip=10 ** 6)
    one, two = make_salon(redis, "one", **settings), make_salon(redis, "two", **settings)
    yield started(one, two)
    crowds = [Crowd(), Crowd()]
    ports = [reactor.listenUDP(0, c, interface="127.0.0.1") for c in crowds]
    for p in ports:
        # room for every answer and push of a starved run: this test is
        # about pairing across salons, not about datagrams lost on loopback
        # (a lost push then a poll later than the peer's 3.5 s in the room
        # loses a meeting for good here: the peer, introduced, never comes back)
        big_receive_buffer(p.getHandle())
    rng = random.Random(14)
    members = []
    for i in range(1000):
        # random keys: derive() (scrypt) for 1,000 rooms would take a minute
        keys = RoomKeys(*(rng.randbytes(n) for n in (16, 32, 32, 32)))
        for side in (0, 1):
            m = dict(room=i, keys=keys, nonce=os.urandom(16), cookie=None, peers=set(), timer=None,
                     crowd=crowds[side], server=server_of(rng.choice((one, two))), refused=None)
            crowds[side].add(m)
            members.append(m)
    rng.shuffle(members)
    try:
        for k in range(0, len(members), 50):
            for m in members[k:k + 50]:
                m["crowd"].send(m)
            yield deferLater(reactor, 0.01, lambda: None)
        yield until(lambda: all(m["peers"] for m in members), timeout=120)
        by_room = {}
        for m in members:
            by_room.setdefault(m["room"], []).append(m)
        for room, (x, y) in by_room.items():
            assert x["peers"] == {y["nonce"]} and y["peers"] == {x["nonce"]}, room
        assert not any(m["refused"] for m in members)
        # each room had exactly one newcomer, announced to exactly one waiting
        # member (unless Redis's answer was lost on a loaded machine: its
        # client retransmitted and was answered as a known member)
        stats = [one.state.stats, two.state.stats]
        pushed = sum(s["introductions_pushed"] for s in stats)
        failed = sum(s["join_registry_failed"] for s in stats)
        assert 1000 - failed <= pushed <= 1000, [dict(s) for s in stats]
        # about half of them crossed to the other salon over pub/sub, and all arrived
        sent = one.state.stats["notices_sent"] + two.state.stats["notices_sent"]
        assert 300 < sent < 700
        assert one.state.stats["notices_received"] + two.state.stats["notices_received"] == sent
    finally:
        for m in members:
            if m["timer"] is not None and m["timer"].active():
                m["timer"].cancel()
        for p in ports:
            yield p.stopListening()
        yield stopped(one, two)


@pytest_twisted.inlineCallbacks
def test_a_member_whose_salon_dies_rejoins_the_other_and_meets_its_peer(redis):
    one, two = make_salon(redis, "one"), make_salon(redis, "two")
    yield started(one, two)
    a, b = Peer(), Peer()
    try:
        da = a.join(one)
        yield a.waiting
        yield one.stopService()  # killed while a waits
        da.cancel()
        da.addErrback(lambda f: f.trap(defer.CancelledError))
        db = b.join(two)  # b meets a's last entry: its notice goes to a dead salon
        da = a.join(two)  # a re-joins the other salon (same socket, same nonce)
        ia, ib = yield defer.gatherResults([da, db])
        assert ia.peer.nonce == b.nonce and ib.peer.nonce == a.nonce
    finally:
        yield a.close()
        yield b.close()
        yield stopped(one, two)


@defer.inlineCallbacks
def join_answer(stun, salon, cookie=None):
    """One JOIN for a fresh member of room "r" from ``stun``'s socket, parsed."""
    keys = derive("r", "s3cret")
    msg, _ = wire.join_request(keys.room_id, new_nonce(), (), keys.k_join, cookie)
    resp = yield stun.request(msg, server_of(salon), sha256_key=keys.k_join)
    return wire.parse_join_answer(resp.message)


@pytest_twisted.inlineCallbacks
def test_redis_stopped_while_members_wait_then_started(redis):
    one, two = make_salon(redis, "one"), make_salon(redis, "two")
    yield started(one, two)
    warnings = []

    def observe(event):
        if event.get("log_level") == LogLevel.warn and "redislink" in event.get("log_namespace", ""):
            warnings.append(event)

    globalLogPublisher.addObserver(observe)
    a, b = Peer(), Peer()
    stun = StunClientProtocol(reactor, RetransmitPolicy(rto=0.1, sends=3, last_wait=4))
    stun_port = reactor.listenUDP(0, stun, interface="127.0.0.1")
    try:
        da = a.join(one)
        yield a.waiting
        redis.stop()
        yield until(lambda: one.shared.link.protocol is None and two.shared.link.protocol is None)
        db = b.join(two)  # answered 503 while Redis is down: b joins again later
        for _ in range(10):  # the reflector answers throughout
            for salon in (one, two):
                resp = yield stun.request(Message(Method.BINDING, Class.REQUEST, os.urandom(12)), server_of(salon))
                assert resp.message.get(Attr.XOR_MAPPED_ADDRESS).port == stun_port.getHost().port
            yield deferLater(reactor, 0.1, lambda: None)
        for salon in (one, two):  # a JOIN with a valid cookie: 503, retry later
            ans = yield join_answer(stun, salon)
            assert ans.kind is wire.Answer.COOKIE
            ans = yield join_answer(stun, salon, ans.cookie)
            assert ans.kind is wire.Answer.REFUSED and ans.error.code == 503 and ans.retry_later
        assert not db.called and b.joiner.salons.current == server_of(two)
        assert one.state.stats["join_retry_later"] >= 2 and two.state.stats["join_retry_later"] >= 2
        redis.start()  # an empty Redis: the members' next JOINs register them again
        ia, ib = yield defer.gatherResults([da, db])
        assert ia.peer.nonce == b.nonce and ib.peer.nonce == a.nonce
        # each salon's two links said it once, however many JOINs went unanswered
        assert 2 <= len(warnings) <= 4
    finally:
        globalLogPublisher.removeObserver(observe)
        yield stun_port.stopListening()
        yield a.close()
        yield b.close()
        yield stopped(one, two)


@pytest_twisted.inlineCallbacks
def test_a_password_protected_redis_in_database_3_over_a_unix_socket_and_tcp(tmp_path):
    """requirepass with the password from a file, database 3: one salon on
    the unix socket (``unix:PATH?db=3``), one over TCP
    (``redis://HOST:PORT/3``), configured as twistd's options do."""
    from natsalon.server.tap import Options

    server = RedisServer(tcp=True, unix=True, password="a redis password").start()
    (tmp_path / "redis-password").write_text("a redis password\n")
    (tmp_path / "cookie").write_text(SECRET.decode() + "\n")
    salons = []
    for name, rooms in (("one", "unix:%s?db=3" % server.path), ("two", "redis://127.0.0.1:%d/3" % server.port)):
        o = Options()
        o.parseOptions(["--interface", "127.0.0.1", "--port", "0", "--alt-port", "0", "--rooms", rooms,
                        "--redis-password-file", str(tmp_path / "redis-password"), "--instance-id", name,
                        "--cookie-secret-file", str(tmp_path / "cookie")])
        salons.append(SalonService(reactor, o.config))
    one, two = salons
    a, b = Peer(), Peer()
    try:
        assert one.shared.address.path == server.path and two.shared.address.port == server.port
        assert one.shared.address.db == two.shared.address.db == 3
        yield started(one, two)
        da = a.join(one)
        yield a.waiting
        ia, ib = yield defer.gatherResults([da, b.join(two)])
        assert ia.peer.nonce == b.nonce and ib.peer.nonce == a.nonce
        assert two.state.stats["notices_sent"] == 1 and one.state.stats["notices_received"] == 1
        # the rooms are in database 3, none in database 0
        db3, db0 = BlockingLink(server, db=3), BlockingLink(server)
        try:
            assert db3.call("EXISTS", "natsalon:room:" + a.keys.room_id.hex()) == 1
            assert db0.call("KEYS", "natsalon:*") == []
        finally:
            db3.close()
            db0.close()
    finally:
        yield a.close()
        yield b.close()
        yield stopped(one, two)
        server.cleanup()


@pytest_twisted.inlineCallbacks
def test_without_the_password_the_salon_answers_503_and_stun():
    """A salon without the password is never admitted (NOAUTH, logged
    once): JOINs are answered 503 and the reflector still answers."""
    server = RedisServer(password="a redis password").start()
    salon = make_salon(server, "nopass")
    errors = []

    def observe(event):
        if event.get("log_level") == LogLevel.error and "redislink" in event.get("log_namespace", ""):
            errors.append(event)

    globalLogPublisher.addObserver(observe)
    salon.startService()
    stun = StunClientProtocol(reactor, RetransmitPolicy(rto=0.1, sends=3, last_wait=4))
    stun_port = reactor.listenUDP(0, stun, interface="127.0.0.1")
    try:
        yield until(lambda: len(errors) >= 2)  # the registry's link and the subscriber's
        yield deferLater(reactor, 1.0, lambda: None)  # retried meanwhile, not said again
        assert len(errors) == 2 and "NOAUTH" in str(errors[0].get("reason"))
        assert salon.shared.link.protocol is None
        resp = yield stun.request(Message(Method.BINDING, Class.REQUEST, os.urandom(12)), server_of(salon))
        assert resp.message.get(Attr.XOR_MAPPED_ADDRESS).port == stun_port.getHost().port
        ans = yield join_answer(stun, salon)
        ans = yield join_answer(stun, salon, ans.cookie)
        assert ans.retry_later
    finally:
        globalLogPublisher.removeObserver(observe)
        yield stun_port.stopListening()
        yield stopped(salon)
        server.cleanup()
