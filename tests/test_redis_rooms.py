"""The Redis room registry against the one contract (tests/rooms_contract.py),
with a real redis-server on a unix socket; plus what only Redis does:
atomic pairing across instances, keys with TTLs, scripts reloaded after a
Redis restart, fast failure while Redis is down."""

from __future__ import annotations

import itertools
import random

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from natsalon.server.introducer.redislink import RedisLink, RedisUnavailable
from natsalon.server.introducer.redisrooms import RedisRooms, RemoteVia
from natsalon.server.introducer.rooms import Outcome

from redis_server import BlockingLink, RedisServer
from rooms_contract import A, B, ROOM, RoomRegistryContract, member

_prefixes = itertools.count()


@pytest.fixture(scope="module")
def redis():
    server = RedisServer().start()
    yield server
    server.cleanup()


@pytest.fixture(scope="module")
def link(redis):
    link = RedisLink(reactor, redis.address.endpoint(reactor), name=redis.url)
    link.startService()
    pytest_twisted.blockon(link.whenReady())
    yield link
    pytest_twisted.blockon(defer.maybeDeferred(link.stopService))


class TestRedisRooms(RoomRegistryContract):
    """The contract's tests are synchronous (pytest-twisted runs them in
    the reactor's greenlet, where nothing can wait for the reactor): the
    registry's scripts run on the real Redis through a blocking link."""

    @pytest.fixture(autouse=True)
    def _link(self, redis):
        self.link = BlockingLink(redis)
        self.rooms = self.make_registry()
        yield
        self.link.close()

    def setup_method(self, method) -> None:
        pass  # the fixture above makes the registry once Redis is up

    def make_registry(self, **settings):
        # a fresh prefix is a fresh, empty registry in the same Redis
        return RedisRooms(self.link, "salon-a", prefix="t%d:" % next(_prefixes), **settings)

    def resolve(self, result):
        assert isinstance(result, defer.Deferred)
        return result.result


@pytest_twisted.inlineCallbacks
def test_members_of_another_instance_come_back_with_its_socket(link):
    prefix = "x%d:" % next(_prefixes)
    a, b = RedisRooms(link, "salon-a", prefix=prefix), RedisRooms(link, "salon-b", prefix=prefix)
    assert (yield a.join(ROOM, member(b"a", A, via=(0, 1)), 0)).outcome is Outcome.WAITING
    r = (yield b.join(ROOM, member(b"b", B, via=(0, 0, 4)), 1))
    assert r.outcome is Outcome.INTRODUCED and r.newcomer
    assert r.others[0].via == RemoteVia("salon-a", (0, 1))
    assert r.member.via == (0, 0, 4)
    r = (yield a.join(ROOM, member(b"a", A, via=(0, 1)), 1.5))
    assert r.others[0].via == RemoteVia("salon-b", (0, 0, 4)) and r.member.via == (0, 1)


@pytest_twisted.inlineCallbacks
def test_racing_joins_on_two_instances_pair_exactly_once(link):
    """Many rooms, both members' JOINs sent at once through two registries
    (two instances): in each room exactly one waits and one is introduced
    as the newcomer."""
    prefix = "race%d:" % next(_prefixes)
    a, b = (RedisRooms(link, name, prefix=prefix, max_per_source=1000) for name in ("salon-a", "salon-b"))
    calls = []
    for i in range(300):
        room = i.to_bytes(16, "big")
        first = member(b"a", A._replace(port=10000 + i))
        second = member(b"b", B._replace(port=10000 + i))
        pair = [(a, room, first), (b, room, second)]
        random.shuffle(pair)
        calls += pair
    results = (yield defer.gatherResults([reg.join(room, m, 0) for reg, room, m in calls]))
    per_room = {}
    for (reg, room, m), r in zip(calls, results):
        per_room.setdefault(room, []).append(r)
    for room, rs in per_room.items():
        assert sorted(r.outcome.value for r in rs) == ["introduced", "waiting"]
        assert [r.newcomer for r in rs if r.outcome is Outcome.INTRODUCED] == [True]


@pytest_twisted.inlineCallbacks
def test_keys_have_a_safety_ttl_and_are_gone_when_rooms_are(link, redis):
    prefix = "ttl%d:" % next(_prefixes)
    rooms = RedisRooms(link, "salon-a", prefix=prefix, safety_ttl=120)
    (yield rooms.join(ROOM, member(b"a", A), 0))
    ttl = int(redis.command("PTTL", prefix + "room:" + ROOM.hex()).split(b"\r\n")[0][1:])
    assert 100_000 < ttl <= 120_000
    assert (yield rooms.prune(10)) == 1
    keys = redis.command("KEYS", prefix + "*")
    assert keys.startswith(b"*1\r\n") and b"rooms" in keys  # only the room count (0) is left
    assert redis.command("GET", prefix + "rooms") == b"$1\r\n0\r\n"


@pytest_twisted.inlineCallbacks
def test_scripts_reload_after_a_redis_restart_and_calls_fail_fast_while_it_is_down():
    server = RedisServer().start()
    link = RedisLink(reactor, server.address.endpoint(reactor), name=server.url,
                     retry=lambda attempt: 0.05)
    link.startService()
    try:
        (yield link.whenReady())
        rooms = RedisRooms(link, "salon-a")
        assert (yield rooms.join(ROOM, member(b"a", A), 0)).outcome is Outcome.WAITING
        server.stop()
        (yield _until(lambda: link.protocol is None))
        with pytest.raises(RedisUnavailable):
            yield rooms.join(ROOM, member(b"b", B), 1)
        server.start()  # empty: no rooms, no scripts
        (yield link.whenReady())
        assert (yield rooms.join(ROOM, member(b"b", B), 2)).outcome is Outcome.WAITING
        assert (yield rooms.join(ROOM, member(b"a", A), 2.5)).outcome is Outcome.INTRODUCED
    finally:
        (yield defer.maybeDeferred(link.stopService))
        server.cleanup()


@defer.inlineCallbacks
def _until(condition, timeout: float = 10.0):
    from twisted.internet.task import deferLater

    waited = 0.0
    while not condition():
        if waited > timeout:
            raise AssertionError("condition not met within %s s" % timeout)
        yield deferLater(reactor, 0.02, lambda: None)
        waited += 0.02


@pytest_twisted.inlineCallbacks
def test_a_redis_that_stops_answering_is_dropped_by_the_watchdog_and_rejoined():
    """redis-server frozen (SIGSTOP): a pending call fails with
    RedisUnavailable once no reply came for ``reply_timeout`` (one
    watchdog, no timer per command), the link reconnects when it thaws."""
    import os
    import signal

    server = RedisServer().start()
    link = RedisLink(reactor, server.address.endpoint(reactor), name=server.url, reply_timeout=0.5,
                     retry=lambda attempt: 0.05)
    link.startService()
    try:
        (yield link.whenReady())
        rooms = RedisRooms(link, "salon-a")
        assert (yield rooms.join(ROOM, member(b"a", A), 0)).outcome is Outcome.WAITING
        first = link.protocol
        os.kill(server.proc.pid, signal.SIGSTOP)
        try:
            started = reactor.seconds()
            with pytest.raises(RedisUnavailable):
                yield rooms.join(ROOM, member(b"b", B), 1)
            assert reactor.seconds() - started >= 0.5  # not before reply_timeout
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        (yield _until(lambda: link.protocol is not None and link.protocol is not first))
        assert (yield rooms.join(ROOM, member(b"b", B), 2)).outcome is Outcome.INTRODUCED
    finally:
        (yield defer.maybeDeferred(link.stopService))
        server.cleanup()
