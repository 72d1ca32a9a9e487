"""``natsalon.connect(reactor, server, room, secret)``: meet the peer in a
room of the salon, punch a direct UDP path, return a
:class:`~natsalon.client.connection.Connection`.

    from twisted.internet import defer, task
    import natsalon

    @defer.inlineCallbacks
    def main(reactor):
        conn = yield natsalon.connect(reactor, "salon.example.org", "our-room", b"shared secret")
        conn.set_receiver(lambda data: print("got", data))
        conn.send(b"hello")

:func:`open_client` builds the same client without starting it (``twistd
natclient`` uses it): one UDP socket, the room keys, the candidates, and
the client machine (:mod:`natsalon.client.session`) that joins, punches,
keeps the path and re-joins after any fault.
"""

from __future__ import annotations

import ipaddress
from typing import Callable, List, NamedTuple, Optional, Tuple

from twisted.internet import defer, threads
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import CannotListenError
from twisted.internet.error import DNSLookupError
from twisted.internet.interfaces import IResolutionReceiver
from twisted.logger import Logger
from zope.interface import implementer

from natsalon import wire
from natsalon.client.connection import Connection
from natsalon.client.demux import ClientSocket, SocketPool
from natsalon.client.families import (
    Families, FamilySocket, family, ipv6_candidates, join_candidates, learn_reflexive, listen_v6_only,
)
from natsalon.client.probe import ProbeConfig
from natsalon.client.probe.measure import probe
from natsalon.client.probecache import DEFAULT_TTL, ProbeCache, cache_key
from natsalon.client.strategy import HardNat, NatKnowledge, StrategySettings
from natsalon.client.salonprobe import check_salon
from natsalon.client.salons import Salons
from natsalon.client.options import parse_turn
from natsalon.client.errors import (
    ConnectFailed, ConnectTimeout, IntroductionRefused, PeerNotVerified, PunchFailed, SalonUnreachable,
)
from natsalon.client.session import DESCRIPTIONS, ClientInputs, ClientMachine, Core, Settings
from natsalon.client.streamlink import SalonLink, StreamTarget, stream_connector
from natsalon.crypto.secret import derive
from natsalon.net.hostport import parse_server
from natsalon.net.interfaces import global_ipv6_addresses, lan_addresses
from natsalon.stun import Address


_log = Logger()


class Client(NamedTuple):
    """A client machine and the connection it keeps (see :func:`open_client`)."""

    machine: ClientInputs
    connection: Connection
    core: Core

    def start(self) -> None:
        self.machine.start()

    def when_connected(self, fail_after_failures: Optional[int] = None) -> defer.Deferred:
        return self.machine.when_connected(fail_after_failures)

    def stop(self) -> None:
        """Stop the machine and release the socket (``connection.close()``)."""
        self.connection.close()

    @property
    def phase_description(self) -> str:
        return DESCRIPTIONS[self.core.phase]


@defer.inlineCallbacks
def resolve_server(reactor, server):
    """``"HOST[:PORT]"`` or ``(host, port)`` -> ``(ip, port)``, resolving a name."""
    host, port = parse_server(server) if isinstance(server, str) else server
    try:
        ipaddress.ip_address(host)
    except ValueError:
        host = yield reactor.resolve(host)
    return host, port


def server_list(server) -> List[Tuple[str, int]]:
    """The salons named by ``server``: ``"HOST[:PORT][,HOST[:PORT]...]"``,
    one ``(host, port)``, or a sequence of either; ValueError if none."""
    if isinstance(server, str):
        out = [parse_server(part) for part in server.split(",") if part.strip()]
    elif len(server) == 2 and isinstance(server[0], str) and isinstance(server[1], int):
        out = [(server[0], server[1])]
    else:
        out = [one for item in server for one in server_list(item)]
    if not out:
        raise ValueError("no salon in %r" % (server,))
    return out


@implementer(IResolutionReceiver)
class _Addresses:
    """Collects a name's addresses (``reactor.nameResolver``)."""

    def __init__(self) -> None:
        self.addresses: List[str] = []
        self.done = defer.Deferred()

    def resolutionBegan(self, resolution) -> None:
        pass

    def addressResolved(self, address) -> None:
        self.addresses.append(address.host)

    def resolutionComplete(self) -> None:
        self.done.callback(self.addresses)


def _lookup(reactor, host: str, port: int, version: int) -> defer.Deferred:
    """A name's addresses of one IP family (a list, maybe empty)."""
    receiver = _Addresses()
    reactor.nameResolver.resolveHostName(receiver, host, port,
                                         addressTypes=[IPv4Address if version == 4 else IPv6Address],
                                         transportSemantics="UDP")
    return receiver.done


@defer.inlineCallbacks
def resolve_servers(reactor, server):
    """Every ``(ip, port)`` of the salons ``server`` names (see
    :func:`server_list`), in order, a name giving each of its IPv4
    addresses, or its IPv6 ones when it has no IPv4 address (an IPv6-only
    salon); fails with DNSLookupError for a name without any."""
    out = []
    for host, port in server_list(server):
        try:
            ipaddress.ip_address(host)
            out.append((host, port))
            continue
        except ValueError:
            pass
        ips = yield _lookup(reactor, host, port, 4)
        if not ips:
            ips = yield _lookup(reactor, host, port, 6)
        if not ips:
            raise DNSLookupError("no address for the salon %r" % host)
        out.extend((ip, port) for ip in ips)
    return list(dict.fromkeys(out))


@defer.inlineCallbacks
def resolve_server6(reactor, server, server6=None):
    """The salon's IPv6 ``(ip, port)`` for an IPv4 client socket:
    ``server6`` (``"HOST[:PORT]"`` or ``(host, port)``; a name gives its
    first IPv6 address), else the first IPv6 address of the first salon's
    name (AAAA); None when there is none."""
    if server6 is not None:
        host, port = parse_server(server6) if isinstance(server6, str) else server6
    else:
        host, port = server_list(server)[0]
    try:
        return (host, port) if ipaddress.ip_address(host).version == 6 else None
    except ValueError:
        pass
    ips = yield _lookup(reactor, host, port, 6)
    if not ips and server6 is not None:
        raise DNSLookupError("no IPv6 address for the salon %r" % host)
    return (ips[0], port) if ips else None


@defer.inlineCallbacks
def open_client(reactor, server, room, secret, *, port: int = 0, interface: str = "", lan: bool = True,
                encrypt: bool = True, settings: Settings = Settings(),
                on_event: Optional[Callable[[dict], None]] = None, hard_nat: bool = True,
                strategy: StrategySettings = StrategySettings(), turn=None, salon_tls=None, salon_ca=None,
                server6=None, ipv6: bool = True,
                probe_cache: Optional[str] = None):
    """Resolve the salon, derive the room keys (scrypt, in a thread), bind
    the client's UDP socket and build the machine; fires with a
    :class:`Client` that has not started yet.  ``hard_nat``: probe our NAT
    at each join, tell the peer, and punch symmetric NATs by the strategy
    both sides choose (:mod:`natsalon.client.strategy`, tuned by
    ``strategy``); False: plain punching only, as an old client.
    ``turn``: another TURN server than the salon's for the relay fallback,
    a :class:`~natsalon.client.options.TurnServer` or its
    ``turn:USER:PASS@HOST[:PORT]`` URI.  ``server`` may name several
    salons sharing their rooms (``"a,b"``, a list, or a name with several
    addresses): the client moves to the next when one fails
    (:mod:`natsalon.client.salons`).  When UDP does not reach the (first)
    salon, the join and the relay go over TCP to the salon's port, or over
    TLS to ``salon_tls`` (``(host, port)``; the certificate must name
    ``host``; ``salon_ca``: a PEM file of the CA to trust instead of the
    system's): :mod:`natsalon.client.streamlink`.  ``server6``, ``ipv6``:
    both IP families, see :func:`_families`.  ``probe_cache``: a file
    that keeps the join-time probe's result for the next process
    (:mod:`natsalon.client.probecache`; its ``default_path()`` is the usual
    place); None: none."""
    salons = Salons((yield resolve_servers(reactor, server)))
    server_addr = salons.current
    primary = family(server_addr[0])
    interface = interface or ("::" if primary == 6 else "")
    turn = yield _turn_server(reactor, turn)
    # scrypt takes tens of milliseconds of CPU: keep it off the reactor thread
    keys = yield threads.deferToThread(derive, room, secret)
    lan = lan and primary == 4
    ips = (yield threads.deferToThread(lan_addresses, interface, wire.MAX_CANDIDATES)) if lan else []
    sock = ClientSocket(reactor)
    listening = reactor.listenUDP(port, sock, interface=interface)
    local_port = listening.getHost().port
    families, v6, hosts6 = yield _families(reactor, sock, server, primary, port, local_port, server6, ipv6)
    conn = _connection(reactor, sock, encrypt, local_port, on_event)
    link = yield _salon_link(reactor, sock, server_addr, interface, salon_tls, salon_ca)
    candidates = join_candidates([Address(ip, local_port) for ip in ips], v6)
    core = Core(reactor, sock, server_addr, keys, candidates, conn, settings,
                emit=lambda event: conn.on_event(event),
                hardnat=_hard_nat(reactor, sock, salons, interface, ips or hosts6, strategy, probe_cache)
                if hard_nat else None,
                turn=turn, salons=salons, link=link, families=families)
    return _client(reactor, core, interface, listening)


def _connection(reactor, sock: ClientSocket, encrypt: bool, local_port: int, on_event) -> Connection:
    """The connection the user holds, fed the frames the socket receives."""
    conn = Connection(reactor, sock, encrypt=encrypt)
    conn.local_port = local_port
    if on_event is not None:
        conn.on_event = on_event
    sock.on_frame = conn.frame_received
    return conn


def _client(reactor, core: Core, interface: str, listening) -> Client:
    """The machine over ``core``, with the salon check, and what closing
    the connection lets go of (the sockets, the link)."""
    link, families, conn = core.link, core.families, core.connection

    def check():
        # the first salon's silence or refusal may open a stream to it (the
        # link); another salon's refusal moves the Joiner on
        probe = check_salon(reactor, core.server, interface)
        return link.checked(probe) if tuple(core.server) == link.server else probe

    core.check_salon = check
    machine = ClientMachine(core)

    def closed() -> None:
        machine.stop()
        link.close()
        listening.stopListening()
        families.close()

    conn.on_close = closed
    return Client(machine, conn, core)


@defer.inlineCallbacks
def _turn_server(reactor, turn):
    """``--turn`` parsed, its host resolved to an IP (None stays None)."""
    if isinstance(turn, str):
        turn = parse_turn(turn)
    if turn is not None:
        turn = turn._replace(host=(yield resolve_server(reactor, (turn.host, turn.port)))[0])
    return turn


@defer.inlineCallbacks
def _families(reactor, sock: ClientSocket, server, primary: int, port: int, local_port: int, server6,
              ipv6: bool):
    """``(Families, our IPv6 candidates, this host's global IPv6
    addresses)``: an IPv6-only client's host candidates; beside an IPv4
    client socket, when this host has a global IPv6 address or ``server6``
    is given, an IPv6-only socket (on ``port`` too) and the endpoint the
    salon's IPv6 address sees from it (a name's AAAA is looked up only on
    a host with IPv6: a Binding without a route would only wait)."""
    hosts6 = (yield threads.deferToThread(global_ipv6_addresses, wire.MAX_CANDIDATES // 2)) if ipv6 else []
    if primary == 6:
        bound = sock.transport.getHost().host
        if bound != "::":  # --interface: that address alone
            hosts6 = [bound] if bound in hosts6 else []
        return Families(6), ipv6_candidates(hosts6, local_port), hosts6
    if not ipv6 or (not hosts6 and server6 is None):
        return Families(4), [], hosts6
    server6 = yield resolve_server6(reactor, server, server6)
    second = FamilySocket(sock, reactor)
    try:
        second.port = listen_v6_only(reactor, port, second)
    except CannotListenError as e:
        _log.info("no IPv6 socket ({error}): IPv4 only", error=e.socketError)
        return Families(4), [], hosts6
    reflexive = (yield learn_reflexive(second, server6)) if server6 is not None else None
    return Families(4, second), ipv6_candidates(hosts6, second.port.getHost().port, reflexive), hosts6


@defer.inlineCallbacks
def _salon_link(reactor, sock: ClientSocket, server_addr, interface: str, salon_tls, salon_ca):
    """The salon over UDP, over a stream when UDP does not get there: TCP
    to its port, or TLS to ``salon_tls``."""
    if salon_tls is None:
        target = StreamTarget("tcp", server_addr[0], server_addr[1])
    else:
        ip, port = yield resolve_server(reactor, salon_tls)
        target = StreamTarget("tls", ip, port, name=salon_tls[0], ca=salon_ca)
    return SalonLink(reactor, sock, server_addr, stream_connector(reactor, target, interface), kind=target.kind)


def _hard_nat(reactor, sock: ClientSocket, salons: Salons, interface: str, ips,
              strategy: StrategySettings, cache_path: Optional[str] = None) -> HardNat:
    """The join-time probe against the salon in use and the extra-socket
    pools, on the client socket's interface."""
    bind = interface or "0.0.0.0"  # open_client gives "::" to an IPv6-only client

    def listen(proto):
        return reactor.listenUDP(0, proto, interface=bind)

    def run_probe(on_early):
        local_ips = list(ips) + ([interface] if interface not in ("", "::") else [])
        return probe(reactor, salons.current, ProbeConfig(), local_ips=local_ips, listen=listen, on_early=on_early)

    knowledge = NatKnowledge(reactor, run_probe)
    if cache_path:  # kept for the next process too, as long (keyed by the first salon)
        key = cache_key(tuple(salons.current), list(ips) + ([interface] if interface else []))
        knowledge = NatKnowledge(reactor, run_probe, ttl=DEFAULT_TTL, cache=ProbeCache(cache_path), key=key)
    return HardNat(knowledge, lambda: SocketPool(sock, listen), strategy)


@defer.inlineCallbacks
def connect(reactor, server, room, secret, *, port: int = 0, interface: str = "", timeout: float = 30.0,
            punch_timeout: float = 10.0, keepalive: float = 5.0, dead_after: int = 2, encrypt: bool = True,
            lan: bool = True, on_event: Optional[Callable[[dict], None]] = None, hard_nat: bool = True,
            turn=None, salon_tls=None, salon_ca=None, server6=None, ipv6: bool = True,
            probe_cache: Optional[str] = None):
    """Meet the peer in ``room`` at the salon ``server`` ("HOST[:PORT]", a
    (host, port) tuple, or several salons sharing their rooms:
    "HOST[:PORT],HOST[:PORT]", a list, a name with several addresses) with
    the shared ``secret``; fires with a
    :class:`~natsalon.client.connection.Connection` whose path is verified
    both ways, or fails with a :class:`~natsalon.client.errors.ConnectFailed`
    subclass (:class:`SalonUnreachable`, :class:`IntroductionRefused`,
    :class:`PeerNotVerified`, :class:`PunchFailed`, :class:`ConnectTimeout`)
    on the first failed attempt.  Once connected, the connection keeps its
    path and re-joins the room after any fault until ``close()``.  When no
    direct path verifies, the connection is relayed through the salon's
    TURN relay (if it runs one), or through ``turn``
    (``turn:USER:PASS@HOST[:PORT]``); ``path.kind`` says which.
    ``server6``: the salon's IPv6 address, to learn our IPv6 endpoint
    (``ipv6=False``: IPv4 only; see :func:`open_client`)."""
    started = reactor.seconds()
    settings = Settings(punch_timeout=min(punch_timeout, timeout), keepalive=keepalive, dead_after=dead_after)
    client = yield open_client(reactor, server, room, secret, port=port, interface=interface, lan=lan,
                               encrypt=encrypt, settings=settings, on_event=on_event, hard_nat=hard_nat,
                               turn=turn, salon_tls=salon_tls, salon_ca=salon_ca, server6=server6, ipv6=ipv6,
                               probe_cache=probe_cache)
    remaining = max(0.1, timeout - (reactor.seconds() - started))
    client.start()
    d = client.when_connected(fail_after_failures=1)
    d.addTimeout(remaining, reactor)
    try:
        conn = yield d
    except defer.TimeoutError:
        phase = client.phase_description
        client.stop()
        raise ConnectTimeout("timed out after %gs while %s" % (timeout, phase)) from None
    except BaseException:
        client.stop()
        raise
    conn.info = {
        "elapsed": reactor.seconds() - started,
        "punch": reactor.seconds() - (client.core.introduced_at or started),
        "observed": client.core.observed,
        "strategy": conn.path.strategy,
        "probes": conn.path.probes,
        "sockets": conn.path.sockets,
        "transport": client.core.salon_transport,  #: how the salon was reached: udp, tcp or tls
    }
    return conn


__all__ = ["connect", "open_client", "Client", "Connection", "ConnectFailed", "SalonUnreachable",
           "IntroductionRefused", "PeerNotVerified", "ConnectTimeout", "PunchFailed"]
