"""Redis behind Sentinel: ``--rooms redis+sentinel://S1[:P],S2[:P]/SERVICE[/DB]``.

:class:`SentinelEndpoint` is a stream client endpoint: each ``connect``
asks the sentinels in turn ``SENTINEL get-master-addr-by-name SERVICE``
(one short connection each, first answer wins) and connects to the master
it names.  :class:`~natsalon.server.introducer.redislink.RedisLink` gives
it to Twisted's ``ClientService`` like any endpoint, so every reconnection
(after a failover, say) asks again; the link also checks ``ROLE`` on
each new connection (a demoted master still named by a slow sentinel is
refused) and drops a connection whose writes meet ``READONLY`` (its Redis
became a replica), which makes it ask the sentinels again.

Sentinels that require a password (their ``requirepass``) are sent
``AUTH`` first, with the password of ``--sentinel-password-file`` (the
master's own password is ``--redis-password-file``'s, sent by the link).

The reply parsing is sans-IO (:func:`parse_master_reply`,
:func:`parse_auth_reply`).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from zope.interface import implementer

DEFAULT_SENTINEL_PORT = 26379


def master_query(service: str) -> bytes:
    """``SENTINEL get-master-addr-by-name SERVICE`` in RESP."""
    words = [b"SENTINEL", b"get-master-addr-by-name", service.encode()]
    return b"*3\r\n" + b"".join(b"$%d\r\n%s\r\n" % (len(w), w) for w in words)


def auth_command(password: bytes) -> bytes:
    """``AUTH password`` in RESP."""
    return b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (len(password), password)


def parse_auth_reply(buf: bytes) -> Optional[bytes]:
    """What follows a sentinel's ``+OK`` to AUTH in ``buf``; None while
    ``buf`` holds only part of the answer; ValueError with the sentinel's
    reason when it refused the password."""
    if b"\r\n" not in buf:
        return None
    head, _, rest = buf.partition(b"\r\n")
    if head != b"+OK":
        raise ValueError("the sentinel refused the password: %s"
                         % head.lstrip(b"-+").decode("ascii", "replace")[:200])
    return rest


def parse_master_reply(buf: bytes) -> Optional[Tuple[str, int]]:
    """The master's ``(host, port)`` from a sentinel's reply; None while
    ``buf`` holds only part of it; ValueError when the sentinel knows no
    such master (``*-1``) or answered something else."""
    if b"\r\n" not in buf:
        return None
    head, _, rest = buf.partition(b"\r\n")
    if head in (b"*-1", b"$-1"):
        raise ValueError("the sentinel knows no such master")
    if head.startswith(b"-NOAUTH"):
        raise ValueError("the sentinel wants a password (--sentinel-password-file)")
    if head != b"*2":
        raise ValueError("unexpected sentinel reply %r" % head[:80])
    values = []
    for _ in range(2):
        if b"\r\n" not in rest:
            return None
        size, _, rest = rest.partition(b"\r\n")
        if not size.startswith(b"$") or not size[1:].isdigit():
            raise ValueError("unexpected sentinel reply")
        n = int(size[1:])
        if len(rest) < n + 2:
            return None
        values.append(rest[:n])
        rest = rest[n + 2:]
    host, port = values[0].decode("ascii", "replace"), values[1]
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("bad master port %r" % port)
    return host, int(port)


class _MasterQuery(Protocol):
    """One question to one sentinel; ``answer`` fires with the master."""

    def __init__(self, service: str, password: Optional[bytes] = None) -> None:
        self.service = service
        self.password = password
        self.authenticated = password is None
        self.buf = b""
        self.answer = defer.Deferred()

    def connectionMade(self) -> None:
        auth = b"" if self.password is None else auth_command(self.password)
        self.transport.write(auth + master_query(self.service))

    def dataReceived(self, data: bytes) -> None:
        self.buf += data
        try:
            if not self.authenticated:
                rest = parse_auth_reply(self.buf)
                if rest is None:
                    return
                self.buf, self.authenticated = rest, True
            master = parse_master_reply(self.buf)
        except ValueError as e:
            self._done(e)
            return
        if master is not None:
            self._done(master)

    def connectionLost(self, reason) -> None:
        self._done(ConnectError("the sentinel closed the connection"))

    def _done(self, result) -> None:
        if self.answer.called:
            return
        if isinstance(result, Exception):
            self.answer.errback(result)
        else:
            self.answer.callback(result)
        self.transport.loseConnection()


@implementer(IStreamClientEndpoint)
class SentinelEndpoint:
    """Connects to the master the sentinels name for ``service``."""

    log = Logger()

    def __init__(self, reactor, sentinels: Sequence[Tuple[str, int]], service: str, timeout: float = 5.0,
                 password: Optional[bytes] = None) -> None:
        self.reactor = reactor
        self.sentinels = tuple(sentinels)
        self.service = service
        self.timeout = timeout
        self.password = password  #: the sentinels' (None: they need none)

    def connect(self, factory) -> defer.Deferred:
        d = self.master()
        d.addCallback(lambda master: HostnameEndpoint(self.reactor, master[0], master[1],
                                                      timeout=self.timeout).connect(factory))
        return d

    @defer.inlineCallbacks
    def master(self):
        """The master's ``(host, port)``, from the first sentinel that answers."""
        reasons = []
        for host, port in self.sentinels:
            try:
                master = yield self._ask(host, port)
            except Exception as e:  # this sentinel is down or does not know: the next one
                reasons.append("%s:%d: %s" % (host, port, e))
                continue
            self.log.debug("sentinel {host}:{port} names {master}", host=host, port=port, master=master)
            return master
        raise ConnectError("no sentinel named the master of %r (%s)" % (self.service, "; ".join(reasons)))

    def _ask(self, host: str, port: int) -> defer.Deferred:
        query = _MasterQuery(self.service, self.password)
        endpoint = HostnameEndpoint(self.reactor, host, port, timeout=self.timeout)
        d = connectProtocol(endpoint, query)
        d.addCallback(lambda _: query.answer)
        d.addTimeout(self.timeout, self.reactor)

        def close(result):
            if query.transport is not None:
                query.transport.loseConnection()
            return result

        return d.addBoth(close)
