"""The TURN relay's Twisted glue: no logic here, see :mod:`.core`.

:class:`TurnService` is a child of the salon service.  It registers the
TURN methods in the salon's ``ServerState.handlers`` and the ChannelData
hook (``ServerState.channel_data``), opens one relayed UDP socket per
allocation (:class:`UdpRelays`, ports from a range, errors as values),
listens for TURN over TCP on the salon's primary port (:mod:`.stream`) and,
given a certificate, for TURN over TLS (:mod:`.tls`), and runs the core's
sweep once a second.
"""

from __future__ import annotations

import errno
import ipaddress
import random
import socket
from functools import partial
from typing import Optional, Tuple

from twisted.application import internet, service
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from natsalon.server.binding import Reply
from natsalon.server.fastport import listen_relay
from natsalon.server.gso import Runs
from natsalon.server.turn.auth import RoomAuth
from natsalon.server.turn.core import Allocation, TurnConfig, TurnCore
from natsalon.server.turn.stream import TurnStreamFactory
from natsalon.server.turn.tls import TlsConfigError, TlsFactory, load_context
from natsalon.stun import Address, Method

#: the methods the salon hands to the TURN core
TURN_METHODS = (Method.ALLOCATE, Method.REFRESH, Method.SEND, Method.CREATE_PERMISSION, Method.CHANNEL_BIND)
#: relayed datagrams are read up to this size; the 4-byte ChannelData
#: header must still fit in one UDP datagram to the client
MAX_RELAYED = 65507 - 4
#: send and receive buffer of each relayed socket, and send buffer of the
#: salon's sockets, which carry the relayed data to UDP clients (bytes;
#: memory is used only while datagrams wait)
RELAY_BUFFER = 1 << 20
SALON_SEND_BUFFER = 4 << 20


class RelayProtocol(DatagramProtocol):
    """One allocation's relayed socket: every datagram goes to
    ``core.from_peer(allocation, data, addr)`` (bound once, no frame of
    ours in between).  On a :class:`~natsalon.server.fastport.RelayPort`
    the read loop relays a channel's datagrams itself and calls this for
    the rest."""

    noisy = False

    def __init__(self, core: TurnCore, alloc: Allocation) -> None:
        self.core = core
        self.alloc = alloc
        self.datagramReceived = partial(core.from_peer, alloc)


def _raw_sendto(transport):
    """The socket's own ``sendto`` (raises OSError), or the transport's
    ``write`` when there is no socket (test fakes)."""
    try:
        return transport.getHandle().sendto
    except AttributeError:
        return transport.write


def _sender(transport, alloc: Allocation):
    """``write(data, addr)`` for a UDP transport that drops the datagram on
    a send error (ENOBUFS, EAGAIN...) as a router would, counted in
    ``alloc.dropped``, rather than raise into the read loop and log per
    packet."""
    sendto = _raw_sendto(transport)

    def write(data, addr):
        try:
            sendto(data, addr)
        except OSError:
            alloc.dropped += 1

    return write


def _buffers(sock, size: int) -> None:
    """Large send and receive buffers: on loopback a datagram stays charged
    to its sender's send buffer until it is read, so the default (208 KiB,
    a few hundred datagrams) drops bursts to a receiver that is a little
    late."""
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, size)
        except (OSError, AttributeError):
            pass


def _by_family(first, second, second_v6: bool):
    """``write(data, addr)`` of a dual allocation: through ``second`` to
    peers of its family, else through ``first``."""

    def write(data, addr):
        return (second if (":" in addr[0]) == second_v6 else first)(data, addr)

    return write


class UdpRelays:
    """Opens and closes the relayed sockets (the core's *opener*):
    ``interface``/``relay_ip`` for the relay IP's family, ``second`` the
    ``(interface, relay_ip)`` of the other family (None: off)."""

    log = Logger()

    def __init__(self, reactor, state, interface: str, relay_ip: str, ports: Tuple[int, int] = (49152, 65535),
                 rng: Optional[random.Random] = None, attempts: int = 32,
                 second: Optional[Tuple[str, str]] = None) -> None:
        self.reactor = reactor
        self.state = state
        self.interface = interface
        self.relay_ip = relay_ip
        #: IP version -> (interface, relay IP)
        self.by_version = {_version(relay_ip): (interface, relay_ip)}
        if second is not None:
            self.by_version[_version(second[1])] = second
        self.ports = ports
        self.rng = rng or random.SystemRandom()
        self.attempts = attempts
        self.core: Optional[TurnCore] = None
        #: via -> write(data, addr) of the TCP connections (see .stream)
        self.writers: dict = {}
        #: what the relayed ports' read loops send to clients, in runs
        self.runs = Runs()

    def open(self, alloc: Allocation, even: bool = False, version: int = 0) -> Optional[Address]:
        interface, relay_ip = self.by_version.get(version) or (self.interface, self.relay_ip)
        client_write = self.writers.get(alloc.via)
        client_sendto = None
        if client_write is None:
            transport = self.state.transports.get(alloc.via)
            if transport is None:
                return None
            client_write = _sender(transport, alloc)
            client_sendto = _raw_sendto(transport)
        listening = self._listen(alloc, even, interface)
        if listening is None:
            return None
        alloc.client_write = client_write
        alloc.client_sendto = client_sendto
        if alloc.handle is None:
            alloc.handle = listening
            alloc.relay_write = _sender(listening, alloc)
            alloc.relay_sendto = _raw_sendto(listening)
        else:  # the second half of a dual allocation
            alloc.handle_extra = listening
            v6 = ":" in relay_ip
            alloc.relay_write = _by_family(alloc.relay_write, _sender(listening, alloc), v6)
            alloc.relay_sendto = _by_family(alloc.relay_sendto, _raw_sendto(listening), v6)
        return Address(relay_ip, listening.getHost().port)

    def _listen(self, alloc: Allocation, even: bool, interface: str):
        """A relayed socket for ``alloc`` on ``interface``, on a random port
        of the range, or None."""
        lo, hi = self.ports
        proto = RelayProtocol(self.core, alloc)
        for _ in range(min(self.attempts, hi - lo + 1)):
            port = self.rng.randint(lo, hi)
            if even and port % 2:
                port = port - 1 if port > lo else port + 1
                if not lo <= port <= hi:
                    return None
            try:
                listening = listen_relay(self.reactor, port, proto, interface, MAX_RELAYED, self.runs)
            except CannotListenError as e:
                if getattr(e.socketError, "errno", errno.EADDRINUSE) != errno.EADDRINUSE:
                    self.log.warn("cannot open a relayed socket: {err}", err=e.socketError)
                    return None
                continue
            try:
                _buffers(listening.getHandle(), RELAY_BUFFER)
            except AttributeError:  # not a socket (test fakes)
                pass
            return listening
        return None

    def close(self, alloc: Allocation) -> None:
        for listening in (alloc.handle, alloc.handle_extra):
            if listening is not None:
                listening.stopListening()
        alloc.handle = alloc.handle_extra = None


def _version(ip: str) -> int:
    return 6 if ":" in ip else 4


class TurnService(service.MultiService):
    """TURN on the salon's STUN sockets.  ``relay_ip`` is the address the
    relayed sockets are advertised on; they bind ``interface``."""

    def __init__(self, reactor, state, config: TurnConfig, interface: str, relay_ip: str, rng=None,
                 room_secrets=(), second: Optional[Tuple[str, str]] = None) -> None:
        """``room_secrets``: the internal secrets of the room credentials
        (the first is the one the introducer signs with); they verify
        ``room-<id>`` users only, beside ``config.secrets``.  ``second``:
        ``(interface, relay_ip)`` of the other IP family (REQUESTED- and
        ADDITIONAL-ADDRESS-FAMILY); None: one family."""
        super().__init__()
        for ip in (relay_ip,) + ((second[1],) if second else ()):
            if ipaddress.ip_address(ip).is_unspecified:
                raise ValueError("TURN needs the relay's public IP: --advertise or a specific --interface")
        self.reactor = reactor
        self.state = state
        self.config = config
        self.relays = UdpRelays(reactor, state, interface, relay_ip, config.relay_ports, rng=rng, second=second)
        self.core = TurnCore(config, self.relays, stats=state.stats,
                             relay_ips={ip for _, ip in self.relays.by_version.values()})
        if room_secrets:
            self.core.room_auth = RoomAuth(room_secrets, config.realm)
        self.relays.core = self.core
        for method in TURN_METHODS:
            state.handlers[method] = self.handle
        state.channel_data = self.core.channel_data
        self.interface = interface
        self.tcp = None
        self.tls = None
        self.tls_context = None
        self.streams = TurnStreamFactory(reactor, state, self.core, self.relays, TURN_METHODS)
        sweep = internet.TimerService(config.sweep_interval, self._sweep)
        sweep.clock = reactor
        sweep.setServiceParent(self)

    def handle(self, msg, source: Address, via) -> Optional[Reply]:
        data = self.core.handle(msg, source, via, self.reactor.seconds())
        return None if data is None else Reply(via, (source.host, source.port), data)

    def _sweep(self) -> None:
        self.core.sweep(self.reactor.seconds())

    @staticmethod
    def salon_send_buffer(sock) -> None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SALON_SEND_BUFFER)
        except OSError:
            pass

    def load_tls(self) -> None:
        """Read the TLS certificate and key (once); a file that is missing
        or unusable ends start-up with one line."""
        cfg = self.config
        if cfg.tls_cert and self.tls_context is None:
            try:
                self.tls_context = load_context(cfg.tls_cert, cfg.tls_key)
            except TlsConfigError as e:
                raise SystemExit("natsalon: %s" % e) from None

    def privilegedStartService(self) -> None:
        # before twistd drops privileges: the certificate may be readable,
        # and the TLS port (443, say) bindable, only by root
        self.load_tls()
        self._listen_tls()
        super().privilegedStartService()

    def _listen_tls(self) -> None:
        if self.tls_context is not None and self.tls is None:
            self.tls = self._listen(self.config.tls_port, TlsFactory(self.streams, self.tls_context, self.state.stats),
                                    "TURN over TLS")
            if self.tls is not None:
                self.core.log.info("TURN over TLS on TCP port {port}", port=self.tls.getHost().port)

    def _listen(self, port: int, factory, what: str):
        try:
            return self.reactor.listenTCP(port, factory, interface=self.interface)
        except CannotListenError as e:
            self.core.log.error("{what} off: cannot listen on TCP port {port}: {err}", what=what, port=port,
                                err=e.socketError)
            return None

    def startService(self) -> None:
        self.load_tls()
        layout = self.state.layout
        if layout is not None:
            # the salon's own sockets are never peers: at their advertised
            # and bound addresses, and on loopback when bound to the wildcard
            own = self.core.service_addresses
            for key in layout.keys():
                addr = layout.address(key)
                if addr is not None:
                    own.add((addr.host, addr.port))
            interfaces = {i for i, _ in self.relays.by_version.values()}
            hosts = interfaces | ({"127.0.0.1", "::1"} if any(ipaddress.ip_address(i).is_unspecified
                                                            for i in interfaces) else set())
            own.update((h, p) for h in hosts for p in layout.ports)
        for transport in self.state.transports.values():
            try:
                self.salon_send_buffer(transport.getHandle())
            except AttributeError:  # not a socket (test fakes)
                pass
        super().startService()
        if self.config.tcp and layout is not None and self.tcp is None:
            self.tcp = self._listen(layout.ports[0], self.streams, "TURN over TCP")
        self._listen_tls()
        self.core.log.info("TURN relay on, realm {realm!r}, relayed ports {lo}-{hi} on {ip}; accepts {creds}",
                           realm=self.config.realm, lo=self.config.relay_ports[0], hi=self.config.relay_ports[1],
                           ip=" and ".join(sorted(ip for _, ip in self.relays.by_version.values())),
                           creds=self._describe_credentials())

    def _describe_credentials(self) -> str:
        kinds = ["room credentials"] if self.core.room_auth is not None else []
        n = len(self.core.auth.secrets)
        if n:
            kinds.append("%d shared secret%s" % (n, "" if n == 1 else "s"))
        return " and ".join(kinds) or "no credentials (nothing can be relayed)"

    def stopService(self):
        d = super().stopService()
        self.core.close_all()
        listening = [p for p in (self.tcp, self.tls) if p is not None]
        self.tcp = self.tls = None
        if listening:
            return defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in listening]
                                       + [defer.maybeDeferred(lambda: d)])
        return d
