"""One connection to Redis, kept up by Twisted's ``ClientService``.

:class:`RedisLink` is a service: started, it connects (TCP or a unix
socket), authenticates and selects its database, and reconnects on its own
with capped exponential backoff and jitter whenever the connection drops.
While it is down, :meth:`RedisLink.call` fails at once with
:class:`RedisUnavailable` (nothing queues behind a dead connection), and the
outage is logged once when it starts and once when it ends, never per
request.

The protocol is txredisapi's (``RedisProtocol``, or ``SubscriberProtocol``
for pub/sub), driven here by ``ClientService`` with the clock given to the
link, rather than by txredisapi's own pool, whose commands wait for a
connection while Redis is down.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Callable, Optional, Tuple
from urllib.parse import urlsplit

from twisted.application import service
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

import txredisapi

from natsalon.server.introducer.errors import RegistryUnavailable

DEFAULT_PORT = 6379


class RedisUnavailable(RegistryUnavailable):
    """Redis cannot be asked now (not connected, or it did not answer in
    time); the link reconnects on its own."""


@dataclass(frozen=True)
class RedisAddress:
    """Where Redis is: ``host``/``port`` for TCP, ``path`` for a unix
    socket, or the ``sentinels`` that name the master of ``service``;
    ``db`` the database number."""

    host: Optional[str] = None
    port: int = DEFAULT_PORT
    path: Optional[str] = None
    db: int = 0
    sentinels: Tuple[Tuple[str, int], ...] = ()
    service: Optional[str] = None
    #: the sentinels' own password (their ``requirepass``; the master's is
    #: the link's), from ``--sentinel-password-file``; never shown
    sentinel_password: Optional[bytes] = field(default=None, repr=False)

    def endpoint(self, reactor, timeout: float = 5.0):
        if self.sentinels:
            from natsalon.server.introducer.sentinel import SentinelEndpoint

            return SentinelEndpoint(reactor, self.sentinels, self.service, timeout=timeout,
                                    password=self.sentinel_password)
        if self.path is not None:
            return UNIXClientEndpoint(reactor, self.path, timeout=timeout)
        return HostnameEndpoint(reactor, self.host, self.port, timeout=timeout)

    def __str__(self) -> str:
        if self.sentinels:
            where = "redis+sentinel://%s/%s" % (",".join(_hostport(h, p) for h, p in self.sentinels), self.service)
        elif self.path is not None:
            where = "unix:" + self.path
        else:
            where = "redis://%s:%d" % ("[%s]" % self.host if ":" in self.host else self.host, self.port)
        return where + ("/%d" % self.db if self.db else "")


def _hostport(host: str, port: int) -> str:
    return "%s:%d" % ("[%s]" % host if ":" in host else host, port)


def _parse_sentinel_url(rest: str) -> RedisAddress:
    """What follows ``redis+sentinel://``: ``S1[:P],S2[:P]/SERVICE[/DB]``."""
    from natsalon.net.hostport import parse_hostport
    from natsalon.server.introducer.sentinel import DEFAULT_SENTINEL_PORT

    hosts, _, path = rest.partition("/")
    if "@" in hosts:
        raise ValueError("give the password in a file (--redis-password-file), not in the URL")
    sentinels = tuple(parse_hostport(h, DEFAULT_SENTINEL_PORT) for h in hosts.split(",") if h.strip())
    service, _, db_text = path.partition("/")
    if not sentinels or not service:
        raise ValueError("expected redis+sentinel://SENTINEL[:PORT][,SENTINEL[:PORT]...]/SERVICE[/DB]")
    if not (db_text or "0").isdigit():
        raise ValueError("the database must be a number: %r" % db_text)
    return RedisAddress(sentinels=sentinels, service=service, db=int(db_text or "0"))


def parse_redis_url(url: str) -> RedisAddress:
    """``redis://HOST[:PORT][/DB]`` (``[v6]`` hosts too),
    ``unix:/PATH[?db=N]`` or
    ``redis+sentinel://S1[:PORT][,S2[:PORT]...]/SERVICE[/DB]``; raises
    ValueError with the reason."""
    if url.startswith("redis+sentinel://"):
        return _parse_sentinel_url(url[len("redis+sentinel://"):])
    if url.startswith("unix:"):
        rest = url[len("unix:"):]
        path, _, query = rest.partition("?")
        if not path.startswith("/"):
            raise ValueError("a unix: socket path must be absolute (unix:/run/redis/redis.sock)")
        db = 0
        if query:
            key, _, value = query.partition("=")
            if key != "db" or not value.isdigit():
                raise ValueError("unix: takes only ?db=N")
            db = int(value)
        return RedisAddress(path=path, db=db)
    parts = urlsplit(url)
    if parts.scheme != "redis" or not parts.hostname:
        raise ValueError("expected redis://HOST[:PORT][/DB], unix:/PATH or redis+sentinel://HOST[:PORT]/SERVICE")
    if parts.username or parts.password:
        raise ValueError("give the password in a file (--redis-password-file), not in the URL")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError as e:
        raise ValueError("bad port: %s" % e) from None
    db_text = parts.path.strip("/") or "0"
    if not db_text.isdigit():
        raise ValueError("the database must be a number: %r" % db_text)
    return RedisAddress(host=parts.hostname, port=port, db=int(db_text))


class FastEncoding:
    """Mixed into txredisapi's protocols: commands encoded in one
    ``bytes.join`` (txredisapi builds them a few bytes at a time, which
    was the largest cost of a JOIN on the salon's core).  Arguments are
    bytes or ints, as this package sends them."""

    def _build_command(self, *args, **kwargs) -> bytes:
        heads = _HEADS
        parts = [b"*%d\r\n" % len(args)]
        append = parts.append
        for arg in args:
            if arg.__class__ is not bytes:
                arg = str(arg).encode()
            n = len(arg)
            append(heads[n] if n < 4096 else b"$%d\r\n" % n)
            append(arg)
            append(b"\r\n")
        return b"".join(parts)


#: RESP bulk headers by length
_HEADS = [b"$%d\r\n" % n for n in range(4096)]


class Watched:
    """Mixed into txredisapi's protocols: when Redis last made progress
    (``progress``, on the ``clock``): a reply came, or a command was sent
    while none was pending.  :meth:`stalled` tells the link's watchdog
    that replies are due and none came for ``timeout`` seconds; one
    watchdog replaces txredisapi's reply timeout, a ``callLater`` (and its
    cancellation) per command, which cost a fifth of a JOIN's CPU time on
    the salon's core."""

    clock = None
    progress = 0.0

    def execute_command(self, *args, **kwargs):
        if not self.replyQueue.waiting:
            self.progress = self.clock.seconds()
        return super().execute_command(*args, **kwargs)

    def replyReceived(self, reply):
        self.progress = self.clock.seconds()
        return super().replyReceived(reply)

    def stalled(self, now: float, timeout: float) -> bool:
        return bool(self.replyQueue.waiting) and now - self.progress >= timeout


class ReadyHook:
    """Mixed into txredisapi's protocols: ``on_connected(protocol)`` runs
    once connected (txredisapi's own ``connectionMade`` is done at once:
    it is given no password nor database).  The link prepares the
    connection there rather than in ``ClientService``'s
    ``prepareConnection``, whose machine takes no connection loss while a
    preparation runs (Redis dying during AUTH raised NoTransition)."""

    on_connected: Optional[Callable[[object], object]] = None

    def connectionMade(self):
        result = super().connectionMade()
        if self.on_connected is not None:
            self.on_connected(self)
        return result


class LeanCommands:
    """Mixed into txredisapi's ``RedisProtocol``: a plain command (no
    keyword options, no pipelining, no MULTI) costs one Deferred, queued
    directly for its reply, where txredisapi's ``execute_command`` makes
    two Deferreds, two closures and three callbacks (measured: 1-2% more
    Redis JOINs per CPU-second of the salon, 6% more pairings; see
    bench/results/introducer.md).  The same semantics: the reply
    fires the Deferred (an error reply as its exception, by txredisapi's
    ``handle_reply``), in the order sent; a lost connection fails the
    waiting ones (txredisapi's ``connectionLost``); a cancelled one
    errbacks at once with ``CancelledError`` and keeps its place in the
    queue, and its reply is then ignored (a Deferred without a canceller
    suppresses the later callback)."""

    def execute_command(self, *args, **kwargs):
        queue = self.replyQueue
        if kwargs or self.pipelining or self.inMulti or not self.connected or queue.pending:
            return super().execute_command(*args, **kwargs)
        self.transport.write(self._build_command(*args))
        d = defer.Deferred()
        queue.waiting.append(d)
        return d.addCallback(self.handle_reply)


class RedisProtocol(Watched, ReadyHook, LeanCommands, FastEncoding, txredisapi.RedisProtocol):
    """txredisapi's protocol (hiredis's parser when installed)."""


class SubscriberProtocol(Watched, ReadyHook, FastEncoding, txredisapi.SubscriberProtocol):
    """txredisapi's pub/sub protocol."""


class _Factory(Factory):
    """Builds txredisapi protocols for ``ClientService``.  AUTH and SELECT
    are sent by the link (as the connection's preparation), so the
    protocol is built without password or database; the factory only
    answers the calls a protocol makes of its factory."""

    noisy = False

    def __init__(self, protocol_class, clock, on_connected) -> None:
        self.protocol_class = protocol_class
        self.clock = clock
        self.on_connected = on_connected

    def buildProtocol(self, addr):
        proto = self.protocol_class(charset=None, convertNumbers=False)
        proto.factory = self
        proto.callLater = self.clock.callLater
        proto.clock = self.clock  # Watched: progress on our clock
        proto.on_connected = self.on_connected
        return proto

    def stopTrying(self) -> None:
        pass

    def connectionError(self, why) -> None:
        pass

    isLazy = True


class RedisLink(service.Service):
    """A connection to Redis that keeps itself up; see the module
    docstring.  ``on_ready(protocol)`` runs on each new connection once it
    is authenticated (to subscribe, say) and may return a Deferred."""

    log = Logger()

    def __init__(self, clock, endpoint, *, name: str = "redis", password: Optional[bytes] = None, db: int = 0,
                 reply_timeout: float = 2.0, protocol_class=None,
                 retry: Optional[Callable[[int], float]] = None,
                 on_ready: Optional[Callable[[object], object]] = None,
                 down_effect: str = "rooms are unavailable (JOINs are answered 503, retry later)",
                 master_only: bool = False) -> None:
        self.clock = clock
        self.endpoint = endpoint
        self.where = name
        self.password = password
        self.db = db
        self.reply_timeout = reply_timeout
        self.protocol_class = protocol_class or RedisProtocol
        self.retry = retry or backoffPolicy(initialDelay=0.2, maxDelay=10.0, factor=2.0,
                                            jitter=lambda: random.uniform(0, 0.2))
        self.on_ready = on_ready
        self.down_effect = down_effect
        #: refuse a Redis whose ROLE is not master (behind Sentinel)
        self.master_only = master_only
        #: the live, ready protocol; None while down
        self.protocol = None
        self._client: Optional[ClientService] = None
        self._was_up = False
        self._down_logged = False
        self._refused_logged = False
        self._refusals = 0  #: connections refused in a row (NOAUTH, not the master)
        self._waiters = []  #: whenReady's Deferreds
        #: the connection being prepared (the watchdog watches it too)
        self._preparing = None
        self._watchdog: Optional[LoopingCall] = None
        self._scripts = {}

    # -- the service ---------------------------------------------------

    def startService(self) -> None:
        service.Service.startService(self)
        if self.reply_timeout:
            self._watchdog = LoopingCall(self._watch)
            self._watchdog.clock = self.clock
            self._watchdog.start(self.reply_timeout / 4, now=False)
        self._client = ClientService(self.endpoint, _Factory(self.protocol_class, self.clock, self._prepare),
                                     retryPolicy=self._retry, clock=self.clock)
        self._client.startService()

    def stopService(self):
        service.Service.stopService(self)
        if self._watchdog is not None and self._watchdog.running:
            self._watchdog.stop()
        self._watchdog = None
        client, self._client = self._client, None
        self.protocol = None
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.cancel()
        if client is not None:
            return client.stopService()
        return None

    def whenReady(self) -> defer.Deferred:
        """Fires with the protocol once a connection is ready (connected,
        authenticated, its database selected)."""
        if self.protocol is not None:
            return defer.succeed(self.protocol)
        d = defer.Deferred()
        self._waiters.append(d)
        return d

    def _watch(self) -> None:
        """Drop a connection whose replies are overdue (``reply_timeout``):
        its calls fail (RedisUnavailable) and ClientService reconnects."""
        now = self.clock.seconds()
        for proto in {self.protocol, self._preparing} - {None}:
            if proto.connected and proto.stalled(now, self.reply_timeout):
                self.log.debug("{where}: no reply for {timeout} s; reconnecting", where=self.where,
                               timeout=self.reply_timeout)
                proto.transport.abortConnection()

    def _retry(self, attempt: int) -> float:
        if not self._down_logged:
            self._down_logged = True
            self.log.warn("{where} unreachable: {effect} until it is back; retrying with backoff",
                          where=self.where, effect=self.down_effect)
        # a refused connection counts as made for ClientService: the
        # refusals in a row keep the backoff growing
        return self.retry(attempt + self._refusals)

    @defer.inlineCallbacks
    def _prepare(self, proto):
        """A new connection: AUTH, SELECT, PING (a Redis that wants a
        password answers NOAUTH only now), ROLE behind Sentinel, then
        ``on_ready``; only then is it :attr:`protocol`."""
        self._preparing = proto
        try:
            if self.password is not None:
                yield proto.auth(self.password)
            if self.db:
                yield proto.select(self.db)
            yield proto.execute_command(b"PING")
            if self.master_only:
                role = yield proto.execute_command(b"ROLE")
                if role[0] != b"master":
                    raise txredisapi.ResponseError("not the master (ROLE %s)" % role[0].decode())
            if self.on_ready is not None:
                yield self.on_ready(proto)
        except txredisapi.ResponseError as e:
            self._refused(proto, e)
            return
        except txredisapi.ConnectionError:
            return  # lost meanwhile (or no reply in time): ClientService reconnects
        except Exception:
            self.log.failure("preparing a connection to {where} failed", where=self.where)
            proto.transport.loseConnection()
            return
        finally:
            if self._preparing is proto:
                self._preparing = None
        if not proto.connected or not self.running:
            return
        proto.whenDisconnected().addCallback(lambda _: self._lost(proto))
        self.protocol = proto
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(proto)
        if self._down_logged or not self._was_up:
            self.log.info("{where} connected", where=self.where)
        self._was_up = True
        self._down_logged = False
        self._refused_logged = False
        self._refusals = 0

    def _refused(self, proto, error) -> None:
        """Redis refused the connection (a wrong or missing password, a
        database out of range): said once, then the connection is closed
        and ``ClientService`` retries with backoff.  (Closing it rather
        than failing the preparation: ``ClientService`` leaves a connection
        whose preparation failed open, and its later loss is an input its
        machine does not take.)"""
        self._refusals += 1
        if not self._refused_logged:
            self._refused_logged = True
            self.log.error("{where} refused us: {reason} (check --redis-password-file and the database number); "
                           "{effect}; retrying with backoff", where=self.where, reason=error, effect=self.down_effect)
        proto.transport.loseConnection()

    def _lost(self, proto) -> None:
        if self.protocol is proto:
            self.protocol = None
        if self.running and not self._down_logged:
            self._down_logged = True
            self.log.warn("{where} connection lost: {effect} until it is back; reconnecting with backoff",
                          where=self.where, effect=self.down_effect)

    # -- commands --------------------------------------------------------

    def call(self, *args) -> defer.Deferred:
        """Send one command; fails with :class:`RedisUnavailable` at once
        when not connected, or when Redis does not answer in time."""
        proto = self.protocol
        if proto is None or not proto.connected:
            return defer.fail(RedisUnavailable("not connected to %s" % self.where))
        return proto.execute_command(*args).addErrback(self._unavailable, proto)

    @staticmethod
    def _unavailable(failure, proto):
        if failure.check(txredisapi.ResponseError) and str(failure.value).startswith("READONLY"):
            # our Redis became a replica (a failover): drop it, so that the
            # next connection goes to the master (Sentinel names it)
            proto.transport.loseConnection()
            raise RedisUnavailable("Redis is a replica now: %s" % failure.getErrorMessage())
        failure.trap(txredisapi.ConnectionError)  # TimeoutError is one too
        raise RedisUnavailable(failure.getErrorMessage())

    def script(self, source: str) -> "Script":
        return Script(self, source)


class Script:
    """A Lua script run with EVALSHA, loaded (EVAL) when Redis does not
    know it (a restarted Redis has forgotten every script)."""

    def __init__(self, link: RedisLink, source: str) -> None:
        self.link = link
        self.source = source.encode()
        self.sha = hashlib.sha1(self.source).hexdigest()

    def __call__(self, keys, args) -> defer.Deferred:
        d = self.link.call(b"EVALSHA", self.sha, len(keys), *keys, *args)
        return d.addErrback(self._noscript, keys, args)

    def _noscript(self, failure, keys, args):
        failure.trap(txredisapi.ResponseError)
        if not str(failure.value).startswith("NOSCRIPT"):
            return failure
        return self.link.call(b"EVAL", self.source, len(keys), *keys, *args)
