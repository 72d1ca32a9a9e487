"""The reflector: one DatagramProtocol per server socket.

``datagramReceived`` rate-limits a datagram, then ``answer`` answers it (on
the salon's sockets, :class:`natsalon.server.fastport.ReflectorPort`'s read
loop rate-limits and calls ``answer``).  A plain Binding request is
answered with :func:`natsalon.server.binding.fast_response` and a cached
XOR-ed address (IPv6: completed with the transaction id); everything else goes through the full decoder
and the method handlers (Binding, and the introducer's methods when the salon has
one).  A handler may answer later, with a Deferred (the introducer over a
room registry across the network): the reply is sent when it fires, and a
failure is counted and logged there.  Bad input is counted and dropped, or
answered with 400/420 where the RFC says so; nothing raises out of
``datagramReceived``.
"""

from __future__ import annotations

import socket
from collections import Counter
from typing import Callable, Dict, Optional

from twisted.internet.defer import Deferred
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from natsalon.server import binding
from natsalon.server.layout import Key
from natsalon.ops.stats import Stats
from natsalon.stun import Address, Class, Message, Method, StunDecodeError, decode
from natsalon.stun.constants import MAX_MESSAGE_SIZE

_PLAIN = binding.PLAIN_REQUEST_PREFIX
_TAIL_CACHE_SIZE = 4096
#: first bytes of a TURN ChannelData frame (channels 0x4000-0x7FFF; STUN's are 0x00-0x3F)
CHANNEL_FIRST = frozenset(bytes([b]) for b in range(0x40, 0x80))

#: handler(message, source, received_on_key) -> Optional[binding.Reply], or
#: a Deferred firing with one (the introducer, over a registry that answers
#: later)
Handler = Callable


class ServerState:
    """What the salon's protocols share: the layout (set once the sockets
    are bound), the transports by key so a reply can leave from another
    socket, the method handlers, the counters and the rate limiter."""

    log = Logger()

    def __init__(self, stats: Optional[Stats] = None, limiter=None) -> None:
        self.layout = None
        self.transports: Dict[Key, object] = {}
        self.handlers: Dict[int, Handler] = {}
        self.stats = stats if stats is not None else Stats()
        self.limiter = limiter
        #: answer plain Binding requests with XOR-MAPPED-ADDRESS only
        #: (False: with the RFC 5780 attributes, through the full path)
        self.fast_plain = True
        #: channel_data(data, addr, key): TURN ChannelData, when a relay runs
        self.channel_data: Optional[Callable] = None
        #: decoded messages by (method, class), counted on the slow path only
        #: (the plain Binding requests the read loops answer inline are the
        #: protocols' ``fast_answers``)
        self.messages: Counter = Counter()

    def binding_handler(self, msg, source, key):
        return binding.answer(msg, source, key, self.layout)

    def write(self, transport, data: bytes, addr) -> bool:
        """Send; a send the kernel refuses (ENOBUFS under a flood, say) is
        counted as ``send_failed``, not raised: the client retransmits.

        Through the socket's own ``sendto`` when the transport has one (a
        UDP port; what ``Port.write`` calls once it has checked the address
        and that it is of the socket's family, a few microseconds per
        answer: a failed ``sendto`` is tried again through ``Port.write``,
        whose checks and error handling then apply), else through
        ``transport.write`` (a fake in the unit tests)."""
        try:
            try:
                sendto = transport.socket.sendto
            except AttributeError:
                transport.write(data, addr)
            else:
                try:
                    sendto(data, addr)
                except OSError:
                    transport.write(data, addr)
        except OSError as e:
            self.stats["send_failed"] += 1
            self.log.debug("send to {addr} failed: {err}", addr=addr, err=e)
            return False
        return True


class ReflectorProtocol(DatagramProtocol):
    """One salon socket's protocol.  A datagram is rate-limited once, in
    :meth:`datagramReceived`, then answered by :meth:`answer`: the one path
    every datagram takes after rate limiting.  ``ReflectorPort``'s read
    loop does the rate limiting itself and answers a plain Binding request
    with this protocol's :meth:`fast_tail` without
    calling out (the bytes :meth:`answer` would send); it hands every
    other datagram to :meth:`answer`."""

    log = Logger()
    noisy = False

    def __init__(self, key: Key, state: ServerState, rcvbuf: int = 4 << 20) -> None:
        self.key = key
        self.state = state
        self.rcvbuf = rcvbuf
        self.fast_answers = 0  # folded into state.stats by flush_stats()
        #: source address -> its cached XOR-MAPPED-ADDRESS attribute (IPv6:
        #: before the XOR with the transaction id, see :meth:`fast_tail`); filled here, read by
        #: ReflectorPort's loop too
        self.tails: Dict[tuple, bytes] = {}
        self._registered = None  # the transport this put in state.transports

    def startProtocol(self) -> None:
        # kept: by the time stopProtocol runs, doStop has cleared .transport
        self._registered = self.transport
        self.state.transports[self.key] = self.transport
        if self.rcvbuf:
            try:
                self.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
            except (OSError, AttributeError) as e:
                self.log.warn("could not set receive buffer: {err}", err=e)

    def stopProtocol(self) -> None:
        if self.state.transports.get(self.key) is self._registered:
            del self.state.transports[self.key]
        self._registered = None

    def flush_stats(self) -> None:
        if self.fast_answers:
            self.state.stats["answered"] += self.fast_answers
            self.state.messages[(Method.BINDING, Class.REQUEST)] += self.fast_answers
            self.fast_answers = 0

    def datagramReceived(self, data: bytes, addr) -> None:
        """A datagram before rate limiting; nothing raises out of here."""
        try:
            if data[:1] in CHANNEL_FIRST and self.state.channel_data is not None:
                # TURN ChannelData: the relay's hot path, not rate limited as requests are
                self.state.channel_data(data, addr, self.key)
                return
            limiter = self.state.limiter
            if limiter is not None and not limiter.allow(addr[0]):
                self.state.stats["rate_limited"] += 1
                return
            self._answer(data, addr)
        except Exception:
            self._internal_error(len(data), addr)

    def answer(self, data: bytes, addr) -> None:
        """Answer a datagram the rate limiter has let through (and charged
        once); nothing raises out of here."""
        try:
            self._answer(data, addr)
        except Exception:
            self._internal_error(len(data), addr)

    def _answer(self, data: bytes, addr) -> None:
        if len(data) == 20 and data[:8] == _PLAIN and self.state.fast_plain:
            tail = self.tails.get(addr)
            if tail is None:
                tail = self.fast_tail(addr)
            if tail:
                if self.state.write(self.transport, binding.fast_response(data, tail), addr):
                    self.fast_answers += 1
                return
        self._full(data, addr)

    def fast_tail(self, addr) -> bytes:
        """The cached XOR-MAPPED-ADDRESS attribute for a source (for IPv6,
        before the XOR with the transaction id: :func:`binding.xor_mapped_tail`).
        The cache is bounded."""
        host, port = addr[0], addr[1]
        tail = binding.xor_mapped_tail(host, port)
        if len(self.tails) >= _TAIL_CACHE_SIZE:
            self.tails.clear()
        self.tails[(host, port)] = tail
        return tail

    def _answer_error(self, data: Optional[bytes], addr) -> None:
        if data is None:
            self.state.stats["not_answered_too_large"] += 1
        elif self.state.write(self.transport, data, addr):
            self.state.stats["answered_400"] += 1

    def _decode(self, data: bytes, addr) -> Optional[Message]:
        """The decoded message, or None when it was dropped (and counted)
        or answered with a 400 here."""
        if len(data) > MAX_MESSAGE_SIZE:
            self.state.stats["dropped_oversized"] += 1
            return None
        try:
            return decode(data)
        except StunDecodeError as e:
            self.state.stats["dropped_malformed"] += 1
            header = e.header
            if header is not None and header[1] == Class.REQUEST:
                method, _, txid, classic = header
                self._answer_error(binding.error_response(method, txid, classic, 400, request_size=len(data)), addr)
            return None

    def _full(self, data: bytes, addr) -> None:
        msg = self._decode(data, addr)
        if msg is None:
            return
        self.state.messages[(msg.method, msg.cls)] += 1
        if msg.method == Method.BINDING:
            handler = self.state.binding_handler
        else:
            handler = self.state.handlers.get(msg.method)
        if handler is None:
            if msg.cls == Class.REQUEST:
                self._answer_error(binding.error_response(
                    msg.method, msg.transaction_id, msg.classic, 400, request_size=len(data)), addr)
            else:
                self.state.stats["dropped_unknown_method"] += 1
            return
        reply = handler(msg, Address(addr[0], addr[1]), self.key)
        if isinstance(reply, Deferred):
            # answered later (an asynchronous room registry): send it then
            reply.addCallback(self._send)
            reply.addErrback(self._handler_failed, len(data), addr)
        else:
            self._send(reply)

    def _send(self, reply: Optional[binding.Reply]) -> None:
        stats = self.state.stats
        if reply is None:
            stats["not_answered"] += 1
            return
        transport = self.state.transports.get(reply.via)
        if transport is None:
            stats["dropped_no_socket"] += 1
            return
        if self.state.write(transport, reply.data, reply.to):
            stats["answered"] += 1

    def _handler_failed(self, failure, n: int, addr) -> None:
        self._internal_error(n, addr, failure)

    def _internal_error(self, n: int, addr, failure=None) -> None:
        """Count and log an error of ours; the peer's address only at debug."""
        self.state.stats["internal_error"] += 1
        self.log.failure("unexpected error answering a {n}-byte datagram", failure, n=n)
        self.log.debug("the datagram that met the error came from {addr}", addr=addr)
