"""Rooms in a Redis behind Sentinel (``--rooms redis+sentinel://...``):
the sentinel reply parser and the URL, then a real master, replica and
sentinel (``redis-server --sentinel``): a salon finds the master through
the sentinel, and after the master dies and the sentinel promotes the
replica, it reconnects to the new master on its own; members meet there."""

from __future__ import annotations

import socket
import subprocess
import time

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from natsalon.server.introducer.redislink import RedisAddress, parse_redis_url
from natsalon.server.introducer.sentinel import (
    SentinelEndpoint, auth_command, master_query, parse_auth_reply, parse_master_reply)

from redis_server import REDIS_SERVER, BlockingLink, RedisServer, free_port
from test_redis_salons import Peer, make_salon, started, stopped, until


def test_master_replies():
    assert master_query("mymaster") == (b"*3\r\n$8\r\nSENTINEL\r\n$23\r\nget-master-addr-by-name\r\n"
                                        b"$8\r\nmymaster\r\n")
    whole = b"*2\r\n$9\r\n127.0.0.1\r\n$4\r\n6380\r\n"
    assert parse_master_reply(whole) == ("127.0.0.1", 6380)
    for cut in range(len(whole)):  # any part of it: wait for more
        assert parse_master_reply(whole[:cut]) is None
    for bad in (b"*-1\r\n", b"-ERR unknown\r\n", b"*2\r\n$9\r\n127.0.0.1\r\n$1\r\nx\r\n",
                b"*2\r\n:1\r\n"):
        with pytest.raises(ValueError):
            parse_master_reply(bad)


def test_auth_replies():
    assert auth_command(b"pw") == b"*2\r\n$4\r\nAUTH\r\n$2\r\npw\r\n"
    whole = b"+OK\r\n*2\r\n$9\r\n127.0.0.1\r\n$4\r\n6380\r\n"
    assert parse_auth_reply(whole) == whole[5:] and parse_auth_reply(b"+OK") is None
    with pytest.raises(ValueError, match="refused the password: WRONGPASS invalid"):
        parse_auth_reply(b"-WRONGPASS invalid username-password pair\r\n")
    with pytest.raises(ValueError, match="--sentinel-password-file"):
        parse_master_reply(b"-NOAUTH Authentication required.\r\n")


def test_sentinel_urls():
    a = parse_redis_url("redis+sentinel://10.0.0.1,10.0.0.2:26380/mymaster/3")
    assert a == RedisAddress(sentinels=(("10.0.0.1", 26379), ("10.0.0.2", 26380)), service="mymaster", db=3)
    assert str(a) == "redis+sentinel://10.0.0.1:26379,10.0.0.2:26380/mymaster/3"
    for bad in ("redis+sentinel:///m", "redis+sentinel://s1", "redis+sentinel://s1/m/x",
                "redis+sentinel://u:p@s1/m"):
        with pytest.raises(ValueError):
            parse_redis_url(bad)


class Sentinel:
    """``redis-server sentinel.conf --sentinel`` watching ``master``."""

    def __init__(self, master: RedisServer) -> None:
        self.port = free_port()
        conf = master.dir / "sentinel.conf"
        conf.write_text("port %d\nbind 127.0.0.1\ndir %s\n"
                        "sentinel monitor rooms 127.0.0.1 %d 1\n"
                        "sentinel down-after-milliseconds rooms 1000\n"
                        "sentinel failover-timeout rooms 5000\n" % (self.port, master.dir, master.port))
        self.proc = subprocess.Popen([REDIS_SERVER, str(conf), "--sentinel"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)

    def master(self):
        """The master the sentinel names now (a blocking question)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            s.sendall(master_query("rooms"))
            buf = b""
            while True:
                buf += s.recv(4096)
                found = parse_master_reply(buf)
                if found is not None:
                    return found

    def replicas(self) -> bytes:
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            s.sendall(b"*3\r\n$8\r\nSENTINEL\r\n$8\r\nreplicas\r\n$5\r\nrooms\r\n")
            time.sleep(0.1)
            return s.recv(65536)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(10)


def wait_for(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError("%s: not within %s s" % (what, timeout))


@pytest.fixture
def sentinel_setup():
    started = []  # each ended however far the setup got
    try:
        master = RedisServer(tcp=True).start()
        started.append(master.cleanup)
        replica = RedisServer(tcp=True, extra=["--replicaof", "127.0.0.1", str(master.port)]).start()
        started.append(replica.cleanup)
        sentinel = Sentinel(master)
        started.append(sentinel.stop)
        wait_for(lambda: sentinel.master() == ("127.0.0.1", master.port), "the sentinel names the master")
        # the sentinel learns the replica from the master's INFO (every 10 s)
        wait_for(lambda: b"127.0.0.1" in sentinel.replicas(), "the sentinel knows the replica", 30)
        yield master, replica, sentinel
    finally:
        for end in reversed(started):
            end()


@pytest_twisted.inlineCallbacks
def test_a_salon_follows_the_sentinel_to_the_new_master(sentinel_setup):
    master, replica, sentinel = sentinel_setup

    class Where:  # what make_salon needs of a Redis
        address = RedisAddress(sentinels=(("127.0.0.1", sentinel.port),), service="rooms")

    salon = make_salon(Where, "one")
    a, b = Peer(), Peer()
    try:
        yield started(salon)
        assert salon.shared.link.protocol.transport.getPeer().port == master.port
        da = a.join(salon)
        yield a.waiting
        master.stop()  # the master dies; the sentinel promotes the replica
        yield deferred_wait(lambda: sentinel.master() == ("127.0.0.1", replica.port), 30)
        # the salon asks the sentinel again on its next connection (503 meanwhile)
        # (the old connection may still be up for a moment: wait for the new one,
        # to the promoted replica; `until` fails the test after 30 s)
        yield until(lambda: salon.shared.link.protocol is not None
                    and salon.shared.link.protocol.transport.getPeer().port == replica.port, timeout=30)
        ia, ib = yield defer.gatherResults([da, b.join(salon)])
        assert ia.peer.nonce == b.nonce and ib.peer.nonce == a.nonce
        link = BlockingLink(replica)
        try:
            assert link.call("EXISTS", "natsalon:room:" + a.keys.room_id.hex()) == 1
        finally:
            link.close()
    finally:
        yield a.close()
        yield b.close()
        yield stopped(salon)


@defer.inlineCallbacks
def deferred_wait(condition, timeout: float):
    """``until`` for a blocking condition that may raise OSError meanwhile."""
    def safe():
        try:
            return condition()
        except OSError:
            return False
    yield until(safe, timeout=timeout)


def test_a_demoted_redis_is_dropped_so_the_link_asks_the_sentinels_again():
    """READONLY (the Redis became a replica): the call fails as an outage
    (503) and the connection is closed; other errors pass through."""
    import txredisapi
    from twisted.internet.task import Clock

    from natsalon.server.introducer.redislink import RedisLink, RedisUnavailable

    class Transport:
        closed = 0

        def loseConnection(self):
            self.closed += 1

    class Proto:
        connected = True

        def __init__(self, error):
            self.error = error
            self.transport = Transport()

        def execute_command(self, *args):
            return defer.fail(txredisapi.ResponseError(self.error))

    link = RedisLink(Clock(), None, master_only=True)
    link.protocol = Proto("READONLY You can't write against a read only replica.")
    failures = []
    link.call(b"EVALSHA", b"x", 0).addErrback(failures.append)
    assert failures[0].check(RedisUnavailable) and link.protocol.transport.closed == 1
    link.protocol = Proto("NOSCRIPT No matching script")
    link.call(b"EVALSHA", b"x", 0).addErrback(failures.append)
    assert failures[1].check(txredisapi.ResponseError) and link.protocol.transport.closed == 0


class AuthSentinel(Sentinel):
    """A sentinel with a password of its own (``requirepass``) watching a
    master with another one (``auth-pass``)."""

    PASSWORD = "sentinel-pw-0123456789"

    def __init__(self, master: RedisServer) -> None:
        self.port = free_port()
        conf = master.dir / "sentinel.conf"
        conf.write_text("port %d\nbind 127.0.0.1\ndir %s\nrequirepass %s\n"
                        "sentinel monitor rooms 127.0.0.1 %d 1\nsentinel auth-pass rooms %s\n"
                        % (self.port, master.dir, self.PASSWORD, master.port, master.password))
        self.proc = subprocess.Popen([REDIS_SERVER, str(conf), "--sentinel"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)

    def master(self):
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            s.sendall(auth_command(self.PASSWORD.encode()) + master_query("rooms"))
            buf = b""
            while True:
                buf += s.recv(4096)
                rest = parse_auth_reply(buf)
                found = parse_master_reply(rest) if rest is not None else None
                if found is not None:
                    return found


@pytest.fixture
def auth_sentinel_setup():
    started = []  # each ended however far the setup got
    try:
        master = RedisServer(tcp=True, password="master-pw-0123456789").start()
        started.append(master.cleanup)
        sentinel = AuthSentinel(master)
        started.append(sentinel.stop)
        wait_for(lambda: sentinel.master() == ("127.0.0.1", master.port), "the sentinel names the master")
        yield master, sentinel
    finally:
        for end in reversed(started):
            end()


@pytest_twisted.inlineCallbacks
def test_sentinels_with_a_password(auth_sentinel_setup):
    """Sentinels with requirepass: without their password, or with a wrong
    one, no sentinel names the master (the reason says why); with it, the
    salon finds the master (whose own password is another) and members
    meet there."""
    from twisted.internet.error import ConnectError

    master, sentinel = auth_sentinel_setup
    where = (("127.0.0.1", sentinel.port),)
    for password, reason in ((None, "wants a password"), (b"wrong", "refused the password")):
        with pytest.raises(ConnectError, match=reason):
            yield SentinelEndpoint(reactor, where, "rooms", timeout=5, password=password).master()

    class Where:  # what make_salon needs of a Redis
        address = RedisAddress(sentinels=where, service="rooms", sentinel_password=AuthSentinel.PASSWORD.encode())

    salon = make_salon(Where, "one", redis_password=master.password.encode())
    a, b = Peer(), Peer()
    try:
        yield started(salon)
        assert salon.shared.link.protocol.transport.getPeer().port == master.port
        ia, ib = yield defer.gatherResults([a.join(salon), b.join(salon)])
        assert ia.peer.nonce == b.nonce and ib.peer.nonce == a.nonce
    finally:
        yield a.close()
        yield b.close()
        yield stopped(salon)
