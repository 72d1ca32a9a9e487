"""The reflector: one DatagramProtocol per server socket.

``datagramReceived`` is the hot path.  A plain Binding request from an IPv4
source is answered with :func:`natsalon.server.binding.fast_response` and a cached
XOR-ed address; everything else goes through the full decoder and the
method handlers (Binding, and the introducer's methods when the salon has
one).  Bad input is counted and dropped, or answered with 400/420 where the
RFC says so; nothing raises out of ``datagramReceived``.
"""

from __future__ import annotations

import socket
from typing import Callable, Dict, Optional

from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from natsalon.server import binding
from natsalon.server.layout import Key
from natsalon.ops.stats import Stats
from natsalon.stun import Address, Class, Method, StunDecodeError, decode
from natsalon.stun.constants import MAX_MESSAGE_SIZE

_PLAIN = binding.PLAIN_REQUEST_PREFIX
_TAIL_CACHE_SIZE = 4096
#: first bytes of a TURN ChannelData frame (channels 0x4000-0x7FFF; STUN's are 0x00-0x3F)
_CHANNEL_FIRST = frozenset(bytes([b]) for b in range(0x40, 0x80))

#: handler(message, source, received_on_key) -> Optional[binding.Reply]
Handler = Callable


class ServerState:
    """What the salon's protocols share: the layout (set once the sockets
    are bound), the transports by key so a reply can leave from another
    socket, the method handlers, the counters and the rate limiter."""

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

    def binding_handler(self, msg, source, key):
        return binding.answer(msg, source, key, self.layout)


class ReflectorProtocol(DatagramProtocol):
    log = Logger()
    noisy = False

    def __init__(self, key: Key, state: ServerState, rcvbuf: int = 4 << 20) -> None:
        self.key = key
        self.state = state
        self.rcvbuf = rcvbuf
        self.fast_answers = 0  # folded into state.stats by flush_stats()
        self._tails: Dict[tuple, bytes] = {}

    def startProtocol(self) -> None:
        self.state.transports[self.key] = self.transport
        if self.rcvbuf:
            try:
                self.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
            except (OSError, AttributeError) as e:
                self.log.warn("could not set receive buffer: {err}", err=e)

    def stopProtocol(self) -> None:
        if self.state.transports.get(self.key) is self.transport:
            del self.state.transports[self.key]

    def flush_stats(self) -> None:
        if self.fast_answers:
            self.state.stats["answered"] += self.fast_answers
            self.fast_answers = 0

    def datagramReceived(self, data: bytes, addr) -> None:
        try:
            if data[:1] in _CHANNEL_FIRST and self.state.channel_data is not None:
                self.state.channel_data(data, addr, self.key)
                return
            host = addr[0]
            limiter = self.state.limiter
            if limiter is not None and not limiter.allow(host):
                self.state.stats["rate_limited"] += 1
                return
            if len(data) == 20 and data[:8] == _PLAIN and self.state.fast_plain:
                tail = self._tails.get(addr)
                if tail is None:
                    tail = self.fast_tail(addr)
                if tail:
                    self.transport.write(binding.fast_response(data, tail), addr)
                    self.fast_answers += 1
                    return
            self._full(data, addr)
        except Exception:
            self.state.stats["internal_error"] += 1
            self.log.failure("unexpected error answering {n}-byte datagram from {addr}", n=len(data), addr=addr)

    def fast_tail(self, addr) -> bytes:
        """The cached XOR-MAPPED-ADDRESS attribute for an IPv4 source, or
        b"" for IPv6 (whose XOR depends on the transaction id: full path).
        The cache is bounded."""
        host, port = addr[0], addr[1]
        tail = b"" if ":" in host else binding.xor_mapped_tail(host, port)
        if len(self._tails) >= _TAIL_CACHE_SIZE:
            self._tails.clear()
        self._tails[(host, port)] = tail
        return tail

    def _answer_error(self, data: Optional[bytes], addr) -> None:
        if data is None:
            self.state.stats["not_answered_too_large"] += 1
        else:
            self.transport.write(data, addr)
            self.state.stats["answered_400"] += 1

    def _full(self, data: bytes, addr) -> None:
        stats = self.state.stats
        if len(data) > MAX_MESSAGE_SIZE:
            stats["dropped_oversized"] += 1
            return
        try:
            msg = decode(data)
        except StunDecodeError as e:
            stats["dropped_malformed"] += 1
            header = e.header
            if header is not None and header[1] == Class.REQUEST:
                method, _, txid, classic = header
                self._answer_error(binding.error_response(method, txid, classic, 400, request_size=len(data)), addr)
            return
        source = Address(addr[0], addr[1])
        if msg.method == Method.BINDING:
            reply = self.state.binding_handler(msg, source, self.key)
        else:
            handler = self.state.handlers.get(msg.method)
            if handler is None:
                if msg.cls == Class.REQUEST:
                    self._answer_error(binding.error_response(
                        msg.method, msg.transaction_id, msg.classic, 400, request_size=len(data)), addr)
                else:
                    stats["dropped_unknown_method"] += 1
                return
            reply = handler(msg, source, self.key)
        if reply is None:
            stats["not_answered"] += 1
            return
        transport = self.state.transports.get(reply.via)
        if transport is None:
            stats["dropped_no_socket"] += 1
            return
        transport.write(reply.data, reply.to)
        stats["answered"] += 1
