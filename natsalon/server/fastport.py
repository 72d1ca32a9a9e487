"""A UDP port whose read loop answers plain Binding requests inline.

Twisted's ``udp.Port.doRead`` calls ``protocol.datagramReceived`` for each
datagram, which then calls ``transport.write``: two Python frames and a
handful of attribute look-ups per packet.  At 150k+ requests/s that
overhead is most of the cost, so :class:`ReflectorPort` runs the same loop
with everything in locals and answers the common case (a 20-byte RFC 5389
Binding request with no attributes, from an IPv4 source, within the rate
limit) without leaving the loop.  Everything else goes to the protocol's
``datagramReceived`` unchanged, so behaviour is identical: the unit tests
drive the protocol directly and the loopback tests drive this port.

The protocol must be a :class:`natsalon.server.reflector.ReflectorProtocol`.
"""

from __future__ import annotations

import errno
import socket

from twisted.internet import udp
from twisted.logger import Logger

from natsalon.server.binding import PLAIN_REQUEST_PREFIX, RESPONSE_HEAD

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
        tail_for = proto.fast_tail
        tails = proto._tails
        slow = proto.datagramReceived
        limiter = proto.state.limiter
        allow = limiter.allow if limiter is not None else None
        v6 = self.addressFamily == socket.AF_INET6
        plain = PLAIN_REQUEST_PREFIX if proto.state.fast_plain else None
        head = RESPONSE_HEAD
        size = self.maxPacketSize
        answered = 0
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
                if len(data) == 20 and data[:8] == plain and (allow is None or allow(addr[0])):
                    tail = tails.get(addr)
                    if tail is None:
                        tail = tail_for(addr)
                    if tail:
                        try:
                            sendto(head + data[8:20] + tail, addr)
                        except OSError:
                            pass  # e.g. ENOBUFS: the client retransmits
                        answered += 1
                        continue
                    slow(data, addr)
                elif allow is None or len(data) != 20 or data[:8] != plain:
                    slow(data, addr)
                else:
                    proto.state.stats["rate_limited"] += 1
        finally:
            proto.fast_answers += answered


def listen_reflector(reactor, port: int, protocol, interface: str = "", max_packet_size: int = 8192):
    """Like ``reactor.listenUDP`` but with :class:`ReflectorPort`; falls
    back to ``listenUDP`` on reactors that are not file-descriptor based."""
    if not hasattr(reactor, "addReader"):
        return reactor.listenUDP(port, protocol, interface=interface, maxPacketSize=max_packet_size)
    p = ReflectorPort(port, protocol, interface, max_packet_size, reactor)
    p.startListening()
    return p
