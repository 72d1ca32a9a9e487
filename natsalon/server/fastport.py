"""A UDP port whose read loop answers plain Binding requests inline.

Twisted's ``udp.Port.doRead`` calls ``protocol.datagramReceived`` for each
datagram, which then calls ``transport.write``: two Python frames and a
handful of attribute look-ups per packet.  At 150k+ requests/s that
overhead is most of the cost, so :class:`ReflectorPort` runs the same loop
with everything in locals.  It rate-limits each datagram once, as
``datagramReceived`` would, and answers the common case (a 20-byte RFC
5389 Binding request with no attributes from an IPv4 source, with the
answer tail the protocol computes and caches: ``fast_tail``) without
leaving the loop.  Everything else goes to the protocol's ``answer`` (the
path after rate limiting), so behaviour is identical: the unit tests drive
both and compare, and the loopback tests drive this port.

The protocol must be a :class:`natsalon.server.reflector.ReflectorProtocol`.
"""

from __future__ import annotations

import errno
import socket

from twisted.internet import udp
from twisted.logger import Logger

from natsalon.server.binding import PLAIN_REQUEST_PREFIX, RESPONSE_HEAD
from natsalon.server.reflector import CHANNEL_FIRST

_IGNORE = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR)
_REFUSED = (errno.ECONNREFUSED,)
#: datagrams read per doRead call before yielding to the reactor
_BATCH = 4096

log = Logger()


class ReflectorPort(udp.Port):
    def doRead(self) -> None:
        proto = self.protocol
        recvfrom = self.socket.recvfrom
        sendto = self.socket.sendto
        tails = proto.tails
        tail_for = proto.fast_tail
        answer = proto.answer
        channel = proto.state.channel_data
        key = proto.key
        limiter = proto.state.limiter
        allow = limiter.allow if limiter is not None else None
        v6 = self.addressFamily == socket.AF_INET6
        plain = PLAIN_REQUEST_PREFIX if proto.state.fast_plain else None
        head = RESPONSE_HEAD
        size = self.maxPacketSize
        answered = limited = failed = 0
        try:
            for _ in range(_BATCH):
                try:
                    data, addr = recvfrom(size)
                except OSError as e:
                    if e.errno in _IGNORE or e.errno in _REFUSED:
                        return
                    raise
                if v6:
                    addr = addr[:2]
                if channel is not None and data[:1] in CHANNEL_FIRST:
                    channel(data, addr, key)  # TURN ChannelData: not rate limited as requests are
                    continue
                if allow is not None and not allow(addr[0]):
                    limited += 1
                    continue
                if len(data) == 20 and data[:8] == plain:
                    tail = tails.get(addr)
                    if tail is None:
                        tail = tail_for(addr)
                    if tail:
                        try:
                            sendto(head + data[8:20] + tail, addr)
                            answered += 1
                        except OSError:
                            failed += 1  # e.g. ENOBUFS: the client retransmits
                        continue
                answer(data, addr)
        finally:
            _fold(proto, answered, limited, failed)


def _fold(proto, answered: int, limited: int, failed: int) -> None:
    """Add a batch's counts to the protocol's (kept out of the loop)."""
    proto.fast_answers += answered
    stats = proto.state.stats
    if limited:
        stats["rate_limited"] += limited
    if failed:
        stats["send_failed"] += failed


def listen_reflector(reactor, port: int, protocol, interface: str = "", max_packet_size: int = 8192):
    """Like ``reactor.listenUDP`` but with :class:`ReflectorPort`; falls
    back to ``listenUDP`` on reactors that are not file-descriptor based."""
    if not hasattr(reactor, "addReader"):
        return reactor.listenUDP(port, protocol, interface=interface, maxPacketSize=max_packet_size)
    p = ReflectorPort(port, protocol, interface, max_packet_size, reactor)
    p.startListening()
    return p
