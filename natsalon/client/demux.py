"""One UDP socket, four kinds of datagram: :class:`ClientSocket` tells
apart payload frames (:mod:`natsalon.crypto.aead`), answers to our STUN
transactions with the salon, punch probes of the peer, and introductions the
salon pushes, and hands each to its consumer."""

from __future__ import annotations

from typing import Callable, Dict, List, Optional

from twisted.internet.error import CannotListenError, InvalidAddressError
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from natsalon.client.punch.candidates import LocalSocket
from natsalon.client.stunsocket import Transactions
from natsalon.crypto.aead import is_frame
from natsalon.stun import Class, Method, StunDecodeError, decode
from natsalon.stun.client import RetransmitPolicy

#: JOIN retransmissions: fast at first (a lost JOIN costs little), about 14 s in all
JOIN_POLICY = RetransmitPolicy(rto=0.25, sends=7, last_wait=8, max_rto=2.0)


class ClientSocket(DatagramProtocol):
    """One UDP socket: STUN transactions with the salon, pushed salon
    indications, punch probes and payload frames, told apart here."""

    log = Logger()
    noisy = False

    def __init__(self, clock) -> None:
        self.stun = Transactions(clock, self.write, JOIN_POLICY)
        self.on_salon: Callable[[object, tuple], None] = lambda msg, addr: None
        #: ``(data, addr)``, or ``(data, addr, local)`` for a datagram of an extra socket
        self.on_punch: Callable[..., bool] = lambda data, addr, local=None: False
        self.on_frame: Callable[[bytes, tuple], None] = lambda data, addr: None
        #: peer address -> the send of the extra socket whose path leads there
        #: (a path found by birthday punching runs from one of the pool's sockets)
        self.routes: Dict[tuple, Callable[[bytes, tuple], None]] = {}
        #: TURN server address -> ``datagram(data, addr) -> bool`` of our
        #: allocation there (:class:`natsalon.client.relay.Relay`): offered
        #: every datagram from that address first
        self.relays: Dict[tuple, Callable[[bytes, tuple], bool]] = {}

    def write(self, data: bytes, addr) -> None:
        addr = tuple(addr)
        if self.routes:
            route = self.routes.get(addr)
            if route is not None:
                route(data, addr)
                return
        if self.transport is None:
            raise OSError("socket closed")
        try:
            self.transport.write(data, addr)
        except InvalidAddressError as e:
            # an address of the other IP family: no route from this socket
            raise OSError("no route from this socket: %s" % e) from None

    def extra_datagram(self, data: bytes, addr, local: LocalSocket) -> None:
        """A datagram that arrived on an extra socket: a payload frame or a
        punch probe (nothing else is expected there)."""
        try:
            if is_frame(data):
                self.on_frame(data, addr)
            else:
                self.on_punch(data, addr, local)
        except Exception:
            self.log.failure("error handling a datagram")

    def datagramReceived(self, data: bytes, addr) -> None:
        try:
            if len(addr) > 2:  # IPv6: (host, port, flowinfo, scope_id)
                addr = (addr[0], addr[1])
            if self.relays:
                relay = self.relays.get(addr)
                if relay is not None and relay(data, addr):
                    return
            if is_frame(data):
                self.on_frame(data, addr)
            elif self.stun.datagram(data, addr):
                pass
            elif not self.on_punch(data, addr) and len(data) >= 20 and not data[0] & 0xC0:
                try:
                    msg = decode(data)
                except StunDecodeError:
                    return
                if msg.method == Method.JOIN and msg.cls == Class.INDICATION:
                    self.on_salon(msg, addr)
        except Exception:
            self.log.failure("error handling a datagram")

    def stopProtocol(self) -> None:
        self.stun.cancel_all()


class ExtraSocket(DatagramProtocol):
    """One extra UDP socket of a :class:`SocketPool`: what arrives goes to
    the owner's :meth:`ClientSocket.extra_datagram`, tagged with ``local``."""

    noisy = False

    def __init__(self, owner: ClientSocket, name: str) -> None:
        self.owner = owner
        self.local = LocalSocket(self.write, name)
        self.port = None

    def write(self, data: bytes, addr) -> None:
        if self.transport is None:
            raise OSError("socket closed")
        try:
            self.transport.write(data, tuple(addr))
        except InvalidAddressError as e:
            raise OSError("no route from this socket: %s" % e) from None

    def datagramReceived(self, data: bytes, addr) -> None:
        self.owner.extra_datagram(data, (addr[0], addr[1]), self.local)


class SocketPool:
    """Extra sockets beside the client's own (birthday punching opens
    hundreds): ``listen(protocol)`` binds one (``reactor.listenUDP(0,
    protocol, interface=...)``) and returns its port.  :meth:`close`
    releases them all but the one a path runs from; :meth:`route` makes the
    client socket's writes to the peer leave from that one."""

    def __init__(self, owner: ClientSocket, listen: Callable[[DatagramProtocol], object]) -> None:
        self.owner = owner
        self.listen = listen
        self.sockets: List[ExtraSocket] = []
        self.opened = 0
        self._routed: Optional[tuple] = None

    def open(self) -> LocalSocket:
        """One more socket (raises OSError, e.g. out of file descriptors)."""
        sock = ExtraSocket(self.owner, "extra-%d" % (self.opened + 1))
        try:
            sock.port = self.listen(sock)
        except CannotListenError as e:
            raise OSError("cannot open another socket: %s" % (e.socketError,)) from None
        self.sockets.append(sock)
        self.opened += 1
        return sock.local

    def close(self, keep: Optional[LocalSocket] = None) -> None:
        """Close every socket but ``keep``'s (all of them by default)."""
        kept = []
        for sock in self.sockets:
            if keep is not None and sock.local is keep:
                kept.append(sock)
            elif sock.port is not None:
                sock.port.stopListening()
                sock.port = None
        self.sockets = kept
        if keep is None and self._routed is not None:
            self.owner.routes.pop(self._routed, None)
            self._routed = None

    def route(self, addr, local: LocalSocket) -> None:
        """Send what goes to ``addr`` from ``local`` (one of ours)."""
        self._routed = tuple(addr)
        self.owner.routes[self._routed] = local.send
