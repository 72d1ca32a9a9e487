"""TURN over TCP on the salon's port (RFC 8656 sections 5 and 12.5): glue.

Each connection is its own 5-tuple: the core sees ``via = ("tcp", n)``.
The stream carries STUN messages (length from the header) and ChannelData
frames padded to a multiple of 4 bytes; what we send is padded the same
way.  A frame that cannot be parsed ends the connection (the stream has no
way to resynchronise), as does closing it: its allocation is deleted.
Replies and relayed data are dropped, not queued, while the client does
not read (the transport pauses us as a producer).

The introducer's methods (JOIN, LEAVE: whatever ``state.handlers`` holds
beyond Binding and TURN) are answered on the stream too, for clients whose
network blocks UDP: the same handler as on UDP, with the connection's peer
address as the source (the cookie check is unchanged), its answer framed
back on the stream.  The connection's ``write`` is in ``relays.writers``
under its ``via``, which is the member's ``via`` too: what the salon pushes
to a member that joined here goes down this connection while it is open.
A connection that polls the introducer is not idle.
"""

from __future__ import annotations

import itertools
import struct
from typing import Optional

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from natsalon.server import binding
from natsalon.server.layout import PRIMARY
from natsalon.stun import Address, Class, Method, StunDecodeError, decode
from natsalon.stun.constants import MAX_MESSAGE_SIZE

_HH = struct.Struct("!HH")


@implementer(IPushProducer)
class TurnStreamProtocol(Protocol):
    log = Logger()

    def __init__(self, factory: "TurnStreamFactory", via) -> None:
        self.factory = factory
        self.via = via
        self.client = None
        self.paused = False
        self._buf = b""
        self._idle = None
        self._polled = False  #: an introducer request came since the last idle check

    # -- IPushProducer: the transport tells us when its buffer is full
    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        self.paused = True

    def connectionMade(self) -> None:
        f = self.factory
        if f.connections >= f.max_connections:
            f.core.stats["turn_tcp_refused"] += 1
            self.transport.abortConnection()
            return
        f.connections += 1
        peer = self.transport.getPeer()
        self.client = (peer.host, peer.port)
        self.transport.registerProducer(self, True)
        f.relays.writers[self.via] = self.write
        self._idle = f.reactor.callLater(f.idle_timeout, self._check_idle)

    def write(self, data: bytes, addr=None) -> None:
        if self.paused:
            return
        pad = -len(data) & 3
        self.transport.write(data + b"\x00" * pad if pad else data)

    def _check_idle(self) -> None:
        self._idle = None
        polled, self._polled = self._polled, False
        if not polled and self.factory.core.get(self.client, self.via) is None:
            self.transport.loseConnection()
        else:
            self._idle = self.factory.reactor.callLater(self.factory.idle_timeout, self._check_idle)

    def dataReceived(self, data: bytes) -> None:
        buf = self._buf + data if self._buf else data
        n = len(buf)
        pos = 0
        core = self.factory.core
        while n - pos >= 4:
            first = buf[pos]
            if 0x40 <= first <= 0x7F:
                length = _HH.unpack_from(buf, pos)[1]
                end = pos + 4 + length
                padded = end + (-length & 3)
                if padded > n:
                    break
                core.channel_data(buf[pos:end], self.client, self.via)
                pos = padded
                continue
            if first & 0xC0:
                return self._bad("neither STUN nor ChannelData")
            end = pos + 20 + _HH.unpack_from(buf, pos)[1]
            if end - pos > MAX_MESSAGE_SIZE:
                return self._bad("STUN message of %d bytes" % (end - pos))
            if end > n:
                break
            if not self._message(buf[pos:end]):
                return None
            pos = end
        self._buf = buf[pos:]
        return None

    def _bad(self, reason: str) -> None:
        self.factory.core.stats["turn_tcp_bad_frame"] += 1
        self.log.debug("closing TURN TCP connection: {reason}", reason=reason)
        self._buf = b""
        self.transport.loseConnection()

    def _message(self, frame: bytes) -> bool:
        f = self.factory
        try:
            msg = decode(frame)
        except StunDecodeError as e:
            self._bad(e.reason)
            return False
        source = Address(*self.client)
        if msg.method == Method.BINDING:
            reply = binding.answer(msg, source, PRIMARY, f.state.layout) if msg.cls == Class.REQUEST else None
            data = reply.data if reply is not None else None
        elif msg.method in f.methods:
            data = f.core.handle(msg, source, self.via, f.reactor.seconds())
        elif msg.method in f.state.handlers:
            self._introducer(msg, source)
            data = None
        elif msg.cls == Class.REQUEST:
            data = binding.error_response(msg.method, msg.transaction_id, msg.classic, 400)
        else:
            data = None
        if data is not None:
            self.write(data)
        return True

    def _introducer(self, msg, source: Address) -> None:
        """A JOIN or LEAVE: the UDP path's handler answers, on this stream
        (now, or when the room registry answers)."""
        limiter = self.factory.state.limiter
        if limiter is not None and not limiter.allow(source.host):
            self.factory.state.stats["rate_limited"] += 1
            return
        self._polled = True
        reply = self.factory.state.handlers[msg.method](msg, source, self.via)
        if isinstance(reply, Deferred):
            reply.addCallback(self._reply)
            reply.addErrback(lambda f: self.log.failure("introducer failed on a stream", f))
        else:
            self._reply(reply)

    def _reply(self, reply) -> None:
        if reply is not None and self.factory.relays.writers.get(self.via) == self.write:
            self.write(reply.data)  # still open

    def connectionLost(self, reason=None) -> None:
        f = self.factory
        if self.client is None:
            return
        f.connections -= 1
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None
        if f.relays.writers.get(self.via) == self.write:
            del f.relays.writers[self.via]
        alloc = f.core.get(self.client, self.via)
        if alloc is not None:
            f.core.delete(alloc, "closed")


class TurnStreamFactory(Factory):
    noisy = False

    def __init__(self, reactor, state, core, relays, methods, max_connections: int = 10000,
                 idle_timeout: float = 60.0) -> None:
        self.reactor = reactor
        self.state = state
        self.core = core
        self.relays = relays
        self.methods = frozenset(methods)
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.connections = 0
        self._serial = itertools.count(1)

    def buildProtocol(self, addr) -> Optional[TurnStreamProtocol]:
        return TurnStreamProtocol(self, ("tcp", next(self._serial)))
