"""UDP ports whose read loops answer plain Binding requests and relay
TURN ChannelData inline.

Twisted's ``udp.Port.doRead`` calls ``protocol.datagramReceived`` for each
datagram, which then calls ``transport.write``: two Python frames and a
handful of attribute look-ups per packet.  At 150k+ requests/s that
overhead is most of the cost, so :class:`ReflectorPort` runs the same loop
with everything in locals.  It rate-limits each datagram once, as
``datagramReceived`` would, and answers the common case (a 20-byte RFC
5389 Binding request with no attributes, with the answer tail the
protocol computes and caches: ``fast_tail``; an IPv6 source's answer is
completed with the transaction id, ``fast_response6``) without leaving the
loop.  Everything else goes to the protocol's ``answer`` (the
path after rate limiting), so behaviour is identical: the unit tests drive
both and compare, and the loopback tests drive this port.

The protocol must be a :class:`natsalon.server.reflector.ReflectorProtocol`.

The TURN relay's hot path is inline the same way.  On a salon socket, a
ChannelData frame from a client with an allocation on a live channel, with
credit left, is relayed by :class:`ReflectorPort`'s loop: the allocation by
client address, the peer by channel number, a credit subtraction and the
relayed socket's ``sendto``.  :class:`RelayPort`, an allocation's relayed
socket, sends a datagram from a peer with a channel back to the client as
ChannelData the same way.  Anything else (no allocation, no channel, no
credit, a short frame, a peer with a permission only, a client over TCP)
goes to the core's own methods (``TurnCore.channel_data`` and
``TurnCore.from_peer``), which count and drop it or send it the slow way;
the unit tests drive both paths and compare.
"""

from __future__ import annotations

import errno
import socket

import struct
from typing import Optional

from twisted.internet import udp
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from zope.interface import implementer

from natsalon.server.binding import PLAIN_REQUEST_PREFIX, RESPONSE_HEAD, fast_response6
from natsalon.server.gso import Runs

_IGNORE = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR)
_REFUSED = (errno.ECONNREFUSED,)
#: datagrams read per doRead call before yielding to the reactor
_BATCH = 4096
_HH = struct.Struct("!HH")

log = Logger()


def _turn_core(channel):
    """The TURN core whose ``channel_data`` is ``channel`` (the ChannelData
    hook), or None (then every ChannelData takes the slow path)."""
    core = getattr(channel, "__self__", None)
    return core if getattr(core, "channel_table", None) is not None else None


class ReflectorPort(udp.Port):
    def __init__(self, *args, runs: Optional[Runs] = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        #: relayed ChannelData payloads, sent in runs (:mod:`natsalon.server.gso`)
        self.runs = runs if runs is not None else Runs()

    def _loop_locals(self) -> tuple:
        """What the read loop keeps in locals, looked up once per batch."""
        proto = self.protocol
        state = proto.state
        channel = state.channel_data
        limiter = state.limiter
        core = _turn_core(channel)
        return (proto, self.socket.recvfrom, self.socket.sendto, proto.tails, proto.fast_tail, proto.answer,
                channel, proto.key, core, core.channel_table(proto.key) if core is not None else None,
                limiter.allow if limiter is not None else None, self.addressFamily == socket.AF_INET6,
                PLAIN_REQUEST_PREFIX if state.fast_plain else None, self.maxPacketSize, _HH.unpack_from,
                RESPONSE_HEAD, self.runs)

    def doRead(self) -> None:
        (proto, recvfrom, sendto, tails, tail_for, answer, channel, key, core, allocs, allow, v6, plain, size,
         unpack, head, runs) = self._loop_locals()
        send, flush = runs.send, runs.flush
        answered = limited = failed = other = read = 0
        try:
            for read in range(_BATCH):  # read: the datagrams read before this one
                try:
                    data, addr = recvfrom(size)
                except OSError as e:
                    if e.errno in _IGNORE or e.errno in _REFUSED:
                        return
                    raise
                if v6:
                    addr = addr[:2]
                if channel is not None and data and 0x40 <= data[0] < 0x80:  # TURN ChannelData: not rate limited
                    alloc = allocs.get(addr) if allocs is not None else None
                    if alloc is not None and len(data) >= 4:
                        number, length = unpack(data)
                        peer = alloc.channels.get(number)
                        credit = alloc.credit - length
                        if peer is not None and credit >= 0 and len(data) >= 4 + length:
                            alloc.credit = credit  # given back if it cannot be sent
                            send(alloc.relay_sendto, data[4:4 + length], peer, alloc)
                            continue
                    flush()  # in order with what the slow path sends
                    channel(data, addr, key)  # counts and drops it
                    other += 1
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
                            sendto(fast_response6(data, tail) if v6 else head + data[8:20] + tail, addr)
                            answered += 1
                        except OSError:
                            failed += 1  # e.g. ENOBUFS: the client retransmits
                        continue
                flush()
                answer(data, addr)
                other += 1
            read = _BATCH
        finally:
            _fold(proto, runs, answered, limited, failed, core, read - answered - limited - failed - other)


def _fold(proto, runs: Runs, answered: int, limited: int, failed: int, core=None, relayed: int = 0) -> None:
    """Send what the batch left in ``runs``, and add the batch's counts to
    the protocol's and the TURN core's (kept out of the loop).
    ``relayed``, the ChannelData relayed inline, is not counted per
    datagram: it is what the loop read less everything else it counted
    (less what ``runs`` could not send); the bytes relayed are the credit
    the allocations used."""
    runs.flush()
    relayed -= runs.failed
    runs.failed = 0
    if relayed:
        core.to_peer_packets += relayed
    proto.fast_answers += answered
    stats = proto.state.stats
    if limited:
        stats["rate_limited"] += limited
    if failed:
        stats["send_failed"] += failed


@implementer(IReadDescriptor)
class RelayPort:
    """An allocation's relayed socket, read by the reactor directly.

    Not a ``udp.Port``: that logs a line when each socket opens and closes
    (twice per allocation, whose start and end the core logs already, with
    counters) and does more per socket than a relayed address needs.  The
    protocol must be a :class:`natsalon.server.turn.relay.RelayProtocol`;
    :func:`listen_relay` makes one."""

    def __init__(self, reactor, sock: socket.socket, protocol, max_packet_size: int,
                 runs: Optional[Runs] = None) -> None:
        self.reactor = reactor
        #: datagrams to the client, sent in runs (shared by the relayed ports)
        self.runs = runs if runs is not None else Runs()
        self.socket = sock
        self.protocol = protocol
        self.maxPacketSize = max_packet_size
        self._fileno = sock.fileno()
        self._v6 = sock.family == socket.AF_INET6

    # -- what UdpRelays uses (as of an IListeningPort)
    def getHandle(self) -> socket.socket:
        return self.socket

    def getHost(self):
        host, port = self.socket.getsockname()[:2]
        return (IPv6Address if self._v6 else IPv4Address)("UDP", host, port)

    def stopListening(self) -> None:
        """Stop reading and close the socket; idempotent."""
        if self._fileno != -1:
            self.reactor.removeReader(self)
            self._fileno = -1
            self.socket.close()

    # -- IReadDescriptor
    def fileno(self) -> int:
        return self._fileno

    def logPrefix(self) -> str:
        return "RelayPort"

    def connectionLost(self, reason) -> None:
        self.stopListening()

    def doRead(self) -> None:
        proto = self.protocol
        alloc = proto.alloc
        core = proto.core
        from_peer = core.from_peer
        peers = alloc.peers
        client = alloc.client
        client_sendto = alloc.client_sendto
        recvfrom = self.socket.recvfrom
        pack = _HH.pack
        v6 = self._v6
        size = self.maxPacketSize
        credit0, bytes0 = alloc.credit, core.to_client_bytes
        runs = self.runs
        send, flush = runs.send, runs.flush
        other = read = 0
        try:
            for read in range(_BATCH):  # read: the datagrams read before this one
                try:
                    data, addr = recvfrom(size)
                except OSError as e:
                    if e.errno in _IGNORE or e.errno in _REFUSED:
                        return
                    raise
                if v6:
                    addr = addr[:2]
                number = peers.get(addr)
                if number is not None and client_sendto is not None:
                    credit = alloc.credit - len(data)
                    if credit >= 0:
                        alloc.credit = credit  # given back if it cannot be sent
                        send(client_sendto, pack(number, len(data)) + data, client, alloc, 4)
                        continue
                flush()  # in order with what the slow path sends
                try:
                    from_peer(alloc, data, addr)  # Data indication, TCP client, or counted and dropped
                except Exception:
                    log.failure("unexpected error relaying a {n}-byte datagram from a peer", n=len(data))
                other += 1
            read = _BATCH
        finally:
            # counted per batch, nothing per datagram: relayed inline is what
            # was read less what the core saw (it counts its own); the bytes,
            # both ways, are the credit the batch used
            flush()
            lost, runs.failed = runs.failed, 0
            core.to_client_packets += read - other - lost
            core.to_client_bytes = bytes0 + (credit0 - alloc.credit)


def listen_relay(reactor, port: int, protocol, interface: str = "", max_packet_size: int = 8192,
                 runs: Optional[Runs] = None):
    """A :class:`RelayPort` bound to ``(interface, port)``; raises
    ``CannotListenError`` as ``reactor.listenUDP`` does, and falls back to
    it on reactors that are not file-descriptor based."""
    if not hasattr(reactor, "addReader"):
        return reactor.listenUDP(port, protocol, interface=interface, maxPacketSize=max_packet_size)
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        if family == socket.AF_INET6:
            # an IPv6 relayed address relays IPv6 alone (on '::' the same port
            # number stays free for an IPv4 allocation, and no IPv4-mapped
            # peer can sneak past the per-family permissions)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((interface, port))
    except OSError as e:
        sock.close()
        raise CannotListenError(interface, port, e) from None
    relay = RelayPort(reactor, sock, protocol, max_packet_size, runs)
    reactor.addReader(relay)
    return relay


def listen_reflector(reactor, port: int, protocol, interface: str = "", max_packet_size: int = 8192):
    """Like ``reactor.listenUDP`` but with :class:`ReflectorPort`; falls
    back to ``listenUDP`` on reactors that are not file-descriptor based."""
    if not hasattr(reactor, "addReader"):
        return reactor.listenUDP(port, protocol, interface=interface, maxPacketSize=max_packet_size)
    p = ReflectorPort(port, protocol, interface, max_packet_size, reactor)
    p.startListening()
    return p
