"""The salon server: the reflector sockets and their housekeeping, wired
into one MultiService.  The tap module builds a :class:`SalonConfig` from
the command line and calls :func:`make_salon`; tests call it directly with
a :class:`twisted.internet.task.Clock`-driven reactor or a real one."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from functools import partial
from typing import Optional, Tuple

from twisted.application import internet, service
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from natsalon.server.introducer.cookies import CookieJar
from natsalon.server.introducer.handler import Introducer
from natsalon.server.introducer.redisrooms import RemoteVia
from natsalon.server.layout import PRIMARY, Family, Layout, hostport, twin_key
from natsalon.server.ratelimit import SourceLimiter
from natsalon.server.reflector import ReflectorProtocol, ServerState
from natsalon.server.introducer.rooms import MAX_MEMBERS, MEMBER_TIMEOUT, MemoryRooms
from natsalon.server.fastport import ReflectorPort, listen_reflector
from natsalon.server.udpservice import DatagramService

log = Logger()


@dataclass(frozen=True)
class SalonConfig:
    interface: str = "0.0.0.0"
    port: int = 3478
    alt_port: int = 3479
    alt_ip: Optional[str] = None
    advertise: Optional[str] = None
    advertise_alt: Optional[str] = None
    rate_limit: int = 200  # requests per second per source IP; 0 disables
    max_sources: int = 65536
    rcvbuf: int = 4 << 20
    #: answer attribute-less Binding requests with RESPONSE-ORIGIN and
    #: OTHER-ADDRESS too (for RFC 5780 clients such as
    #: turnutils_natdiscovery that send such a request first); costs the
    #: 1.6 reply/request byte ratio (2.8 with it, coturn's default)
    full_plain_answers: bool = False
    stats_interval: float = 60.0
    introducer: bool = True  # answer JOIN (rooms, introductions)
    max_rooms: int = 10000
    #: seconds a room member may go unseen (clients poll every second while
    #: they wait): three missed polls, then it is dropped on the next tick
    member_timeout: float = MEMBER_TIMEOUT
    max_members: int = MAX_MEMBERS  # members one room holds at once
    max_waiting_per_ip: int = 16  # members one source IP (IPv6: /64) holds in all rooms
    #: the TURN relay's settings (natsalon.server.turn.TurnConfig); None: off
    turn: Optional[object] = None
    #: rooms shared with other salons in this Redis
    #: (natsalon.server.introducer.redislink.RedisAddress); None: in memory
    rooms: Optional[object] = None
    redis_password: Optional[bytes] = None
    #: this salon's name among those sharing the rooms (unique per process)
    instance_id: str = "salon"
    #: cookie secrets, the first issues and all verify (shared by the
    #: salons sharing rooms); empty: a random one per process
    cookie_secrets: Tuple[bytes, ...] = ()
    #: the other IP family's sockets (``--interface`` given once per
    #: family); None: one family (and IPv4 on ``0.0.0.0`` beside ``::``)
    second: Optional[Family] = None

    def families(self) -> Tuple[Family, ...]:
        """The families served, the first one's (``interface``...) first."""
        first = Family(self.interface, self.alt_ip, self.advertise, self.advertise_alt)
        second = self.second
        if second is None and ipaddress.ip_address(self.interface) == ipaddress.IPv6Address("::"):
            second = Family("0.0.0.0")
        return (first,) if second is None else (first, second)


class _IPv6OnlyPort(ReflectorPort):
    """A ReflectorPort whose socket takes IPv6 only (IPV6_V6ONLY, set
    before it is bound): on ``::`` an IPv4 socket takes IPv4 beside it."""

    def createInternetSocket(self):
        skt = super().createInternetSocket()
        skt.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        return skt


def listen_ipv6_only(reactor, port: int, protocol, interface: str = "::"):
    """:func:`listen_reflector` for a ``::`` socket that leaves IPv4 to its twin."""
    if not hasattr(reactor, "addReader"):
        return reactor.listenUDP(port, protocol, interface=interface)
    listening = _IPv6OnlyPort(port, protocol, interface, 8192, reactor)
    listening.startListening()
    return listening


def _sockets(config: SalonConfig):
    """``(key, interface, port, listen)`` of each socket: per family, the
    RFC 5780 grid (two ports, times two IPs with an alternate IP); the
    second family's keys have its IP version as a third element
    (:func:`natsalon.server.layout.twin_key`).  With two families, IPv6
    sockets take IPv6 only."""
    families = config.families()
    ports = (config.port, config.alt_port)
    out = []
    for n, fam in enumerate(families):
        ips = (fam.interface, fam.alt_ip)
        listen = listen_ipv6_only if len(families) > 1 and fam.version == 6 else listen_reflector
        for i in (0, 1) if fam.alt_ip else (0,):
            for p in (0, 1):
                key = twin_key((i, p), fam.version) if n else (i, p)
                out.append((key, ips[i], ports[p], listen))
    return out


def _relay_bind(config: SalonConfig, version: int) -> str:
    """Where the relayed sockets bind: the salon's interface of the relay
    IP's family (a '::' salon serving IPv4 too binds them on 0.0.0.0)."""
    for fam in config.families():
        if ipaddress.ip_address(fam.interface).version == version or (
                version == 4 and fam.interface == "::"):
            if ipaddress.ip_address(fam.interface).is_unspecified:
                return "0.0.0.0" if version == 4 else "::"
            return fam.interface
    return "0.0.0.0" if version == 4 else "::"


class SalonService(service.MultiService):
    """The running salon.  ``state.layout`` holds the advertised socket
    addresses once the service has started."""

    def __init__(self, reactor, config: SalonConfig, rooms=None) -> None:
        """``rooms``: an ``IRoomRegistry`` (e.g. one shared through Redis by
        several salons); the default is an in-memory registry."""
        super().__init__()
        self.reactor = reactor
        self.config = config
        limiter = SourceLimiter(config.rate_limit, config.max_sources) if config.rate_limit else None
        self.state = ServerState(limiter=limiter)
        self.state.fast_plain = not config.full_plain_answers
        self.introducer = None
        self.shared = None
        if config.introducer:
            self._make_introducer(rooms)
        self.protocols = []
        self.sockets = {}
        for key, interface, port, listen in _sockets(config):
            proto = ReflectorProtocol(key, self.state, rcvbuf=config.rcvbuf)
            svc = DatagramService(reactor, port, proto, interface, listen=listen)
            svc.setServiceParent(self)
            self.protocols.append(proto)
            self.sockets[key] = svc
        self.turn = None
        if config.turn is not None:
            self._make_turn()
        tick = internet.TimerService(1.0, self._tick)
        tick.clock = reactor
        tick.setServiceParent(self)
        self._since_report = 0.0

    def _make_introducer(self, rooms) -> None:
        """The introducer over ``rooms``, or over the registry the config
        names (memory by default, Redis when rooms are shared)."""
        config, reactor = self.config, self.reactor
        if rooms is None and config.rooms is not None:
            from natsalon.server.introducer.shared import SharedRooms

            self.shared = SharedRooms(
                reactor, config.rooms, config.instance_id, self._push, password=config.redis_password,
                stats=self.state.stats, max_rooms=config.max_rooms, member_timeout=config.member_timeout,
                max_members=config.max_members, max_per_source=config.max_waiting_per_ip)
            self.shared.setServiceParent(self)
            rooms = self.shared.rooms
        if rooms is None:
            rooms = MemoryRooms(config.max_rooms, config.member_timeout, config.max_members,
                                config.max_waiting_per_ip)
        cookies = None
        if config.cookie_secrets:
            cookies = CookieJar(config.cookie_secrets[0], previous=config.cookie_secrets[1:])
        self.introducer = Introducer(reactor, rooms, cookies=cookies, push=self._push, stats=self.state.stats)
        self.state.handlers.update(self.introducer.handlers())

    def _make_turn(self) -> None:
        """The TURN relay.  With the introducer, introductions carry room
        credentials for it, signed with a secret derived from the cookie
        secrets (:func:`natsalon.server.turn.auth.room_secret`: the first
        signs, all verify, so salons sharing cookie secrets agree)."""
        from natsalon.server.turn.auth import room_credentials, room_secret
        from natsalon.server.turn.relay import TurnService

        config = self.config
        relay_ip = config.turn.relay_ip or config.advertise or config.interface
        bind = _relay_bind(config, ipaddress.ip_address(relay_ip).version)
        other = config.turn.second_relay_ip
        second = (_relay_bind(config, ipaddress.ip_address(other).version), other) if other else None
        room_secrets = ()
        if self.introducer is not None:
            cookies = self.introducer.cookies
            room_secrets = tuple(room_secret(s) for s in (cookies.secret,) + tuple(cookies.previous))
        self.turn = TurnService(self.reactor, self.state, config.turn, bind, relay_ip, room_secrets=room_secrets,
                                 second=second)
        self.turn.setServiceParent(self)
        if room_secrets:
            self.introducer.turn_credentials = partial(room_credentials, room_secrets[0])

    #: how many sets of ephemeral ports to try when the others' twins are taken
    EPHEMERAL_TRIES = 8

    def _bind(self) -> None:
        """Bind every socket not bound yet, then set the layout.  The
        primary sockets first: the others (the alternate IP's, the other
        family's) use the same two ports (the RFC 5780 grid).  When those
        were ephemeral (port 0) and a twin's port is taken on its address,
        all are let go and another pair is drawn."""
        ephemeral = 0 in (self.config.port, self.config.alt_port)
        for tries_left in range(self.EPHEMERAL_TRIES - 1 if ephemeral else 0, -1, -1):
            try:
                ports = self._bind_grid()
                break
            except CannotListenError:
                if not tries_left:
                    raise
                for key, svc in self.sockets.items():
                    svc.unbind(at_once=True)
                    svc.port = self.config.port if key[1] == 0 else self.config.alt_port
        families = self.config.families()
        second = families[1] if len(families) > 1 else None
        self.state.layout = Layout(families[0].advertised(), ports,
                                   second.advertised() if second else (None, None), second.version if second else 0)

    def _bind_grid(self) -> Tuple[int, int]:
        ports = tuple(self.sockets[(0, p)].bind().getHost().port for p in (0, 1))
        for key, svc in self.sockets.items():
            if key not in ((0, 0), (0, 1)):
                svc.port = ports[key[1]]
                svc.bind()
        return ports

    def privilegedStartService(self) -> None:
        """Under twistd: bind every socket before privileges are dropped; a
        socket that cannot be bound ends start-up with one clear line."""
        try:
            self._bind()
        except CannotListenError as e:
            for svc in self.sockets.values():
                svc.unbind()
            raise SystemExit("natsalon: cannot listen on %s: %s" % (hostport(e.interface, e.port), e.socketError))
        service.MultiService.privilegedStartService(self)

    def startService(self) -> None:
        self._bind()
        service.MultiService.startService(self)
        log.info(
            "natsalon serving STUN on {sockets}; advertised {advertised}; rate limit {rate}; introducer {introducer}",
            sockets=", ".join(hostport(s.interface, s.bound_port) for s in self.sockets.values()),
            advertised=self.state.layout.describe(),
            rate="%d/s per source" % self.config.rate_limit if self.config.rate_limit else "off",
            introducer=self._describe_introducer(),
        )
        missing = [f for f in self.config.families() if not f.alt_ip]
        if missing:
            log.info("no --alt-ip{of}: clients can learn their public address but not classify their NAT "
                     "(RFC 5780 needs a second IP address); give one with --interface IP1 --alt-ip IP2",
                     of="" if len(missing) == len(self.config.families()) else
                     " for IPv%d" % missing[0].version)

    def _describe_introducer(self) -> str:
        if self.introducer is None:
            return "off"
        if self.shared is None:
            return "on"
        return "on (rooms shared in %s as instance %s)" % (self.shared.address, self.shared.instance)

    def stopService(self):
        if self.introducer is not None:
            self.introducer.stop()
        return service.MultiService.stopService(self)

    def _push(self, reply) -> None:
        if isinstance(reply.via, RemoteVia):  # a member waiting on another salon
            if self.shared is not None:
                self.shared.send(reply)
            return
        via = reply.via
        if via and via[0] == "tcp":  # joined over a TURN stream (UDP blocked): down that connection, if open
            write = self.turn.relays.writers.get(via) if self.turn is not None else None
            if write is not None:
                write(reply.data, reply.to)
            return
        # the socket it joined on, or the primary one of the same family
        transport = self.state.transports.get(via) or self.state.transports.get(PRIMARY + tuple(via[2:]))
        if transport is not None:
            self.state.write(transport, reply.data, reply.to)

    def _tick(self) -> None:
        if self.introducer is not None:
            # not returned: a registry that answers later must not hold up
            # the tick (the introducer skips prunes while one runs)
            self.introducer.prune()
        if self.state.limiter is not None:
            self.state.limiter.new_window()
        self.flush_stats()
        self._since_report += 1.0
        if self._since_report >= self.config.stats_interval:
            self._since_report = 0.0
            log.info("stats: {summary}", summary=self.state.stats.summary())

    def flush_stats(self) -> None:
        """Fold the sockets' own counters into ``state.stats`` (the tick
        does this every second)."""
        for proto in self.protocols:
            proto.flush_stats()

    @property
    def layout(self) -> Layout:
        return self.state.layout


def make_salon(reactor, config: SalonConfig, rooms=None) -> SalonService:
    return SalonService(reactor, config, rooms)
