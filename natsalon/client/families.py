"""Both IP families: the client's IPv6 socket beside its IPv4 one.

A dual-stack client keeps one UDP socket per family.  The IPv4 socket is
the client socket (:class:`~natsalon.client.demux.ClientSocket`: the JOIN,
the relay, the punching); the IPv6 one is a :class:`FamilySocket`, bound
IPv6-only (``IPV6_V6ONLY``, so both may take the same port), which:

- learns our IPv6 server-reflexive endpoint with one STUN Binding to the
  salon's IPv6 address (:func:`learn_reflexive`; NAT66 makes it differ
  from the host address, a firewall does not);
- is one more :class:`~natsalon.client.punch.LocalSocket` of the puncher,
  as the relay's allocation is (:mod:`natsalon.client.relay`): what it
  receives goes to the client socket's consumers (payload frames, punch
  probes tagged with its ``local``), and a path found through it keeps
  sending from it (:meth:`Connection.send` uses the path's socket).

The JOIN carries the candidates of both families (:func:`join_candidates`:
the IPv6 ones first, at most half of ``MAX_CANDIDATES``).  After an
introduction, :meth:`Families.arm` pairs each address of the peer with the
local socket of its family only: IPv6 addresses are probed from the IPv6
socket, and as ``srflx`` (a global IPv6 address is public: its path is
``direct``, not ``lan``); addresses of a family we have no socket for are
dropped.  Both families are then punched at once by the same puncher,
which prefers the lower RTT and IPv6 on a tie (:mod:`natsalon.client.punch`).

An IPv6-only client (its salon given by an IPv6 address) has one socket,
IPv6; :meth:`Families.arm` still drops the peer's IPv4 addresses and
makes its IPv6 ones ``srflx``.
"""

from __future__ import annotations

import socket
from typing import Dict, List, Optional, Sequence

from twisted.internet import defer, udp
from twisted.logger import Logger

from natsalon import wire
from natsalon.client.demux import ClientSocket, ExtraSocket
from natsalon.client.punch import CandidateKind, LocalSocket, Path, Puncher
from natsalon.client.stunsocket import Transactions
from natsalon.stun import Address, Attr, Class, Message, Method
from natsalon.stun.client import RetransmitPolicy, StunTimeout, new_transaction_id

#: the Binding that learns our IPv6 reflexive endpoint: about 2.5 s in all
BINDING_POLICY = RetransmitPolicy(rto=0.25, sends=4, last_wait=1, max_rto=1.0)


def family(host: str) -> int:
    """4 or 6: the IP family of an address."""
    return 6 if ":" in host else 4


def path_family(path: Path) -> int:
    """The IP family a path runs over (the ``family`` of ``connected``)."""
    return family(path.address.host)


class _V6OnlyPort(udp.Port):
    """A UDP port whose socket takes IPv6 only (set before it is bound)."""

    def createInternetSocket(self):
        skt = super().createInternetSocket()
        skt.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        return skt


def listen_v6_only(reactor, port: int, protocol, interface: str = "::"):
    """``reactor.listenUDP`` on an IPv6-only socket (a reactor without file
    descriptors, a test's, gets a plain ``listenUDP``)."""
    if not hasattr(reactor, "addReader"):
        return reactor.listenUDP(port, protocol, interface=interface)
    listening = _V6OnlyPort(port, protocol, interface, 8192, reactor)
    listening.startListening()
    return listening


class FamilySocket(ExtraSocket):
    """The client's IPv6 socket: STUN answers go to its own transactions,
    everything else to the client socket's consumers, tagged with
    :attr:`local`."""

    log = Logger()

    def __init__(self, owner: ClientSocket, clock, name: str = "ipv6") -> None:
        super().__init__(owner, name)
        self.stun = Transactions(clock, self.write, BINDING_POLICY)

    def datagramReceived(self, data: bytes, addr) -> None:
        addr = (addr[0], addr[1])
        try:
            if self.stun.datagram(data, addr):
                return
        except Exception:
            self.log.failure("error handling a datagram")
            return
        self.owner.extra_datagram(data, addr, self.local)

    def stopProtocol(self) -> None:
        self.stun.cancel_all()


@defer.inlineCallbacks
def learn_reflexive(sock: FamilySocket, server) -> defer.Deferred:
    """Our endpoint as ``server`` (the salon's IPv6 address) sees it, by a
    Binding request from ``sock``; None when it does not answer."""
    msg = Message(Method.BINDING, Class.REQUEST, new_transaction_id())
    try:
        response = yield sock.stun.request(msg, tuple(server))
    except (StunTimeout, OSError):
        return None
    mapped = response.message.get(Attr.XOR_MAPPED_ADDRESS)
    return Address(mapped.host, mapped.port) if mapped is not None else None


def ipv6_candidates(hosts: Sequence[str], port: int, reflexive: Optional[Address] = None) -> List[Address]:
    """Our IPv6 candidates: the reflexive endpoint (when it is none of the
    host endpoints), then each global host address with ``port``."""
    out = [Address(ip, port) for ip in hosts]
    if reflexive is not None and reflexive not in out:
        out.insert(0, reflexive)
    return out


def join_candidates(v4: Sequence[Address], v6: Sequence[Address], limit: int = wire.MAX_CANDIDATES) -> List[Address]:
    """The candidates a JOIN carries: IPv6 ones first (at most half of
    ``limit``), then the IPv4 LAN ones in the room left."""
    v6 = list(v6)[:limit // 2]
    return v6 + list(v4)[:limit - len(v6)]


class Families:
    """Which local socket probes which family of the peer's addresses
    (data of the client machine's Core; :meth:`arm` is called on each
    punch).  ``primary``: the client socket's family; ``second``: the
    IPv6 socket beside an IPv4 client socket (None: one family)."""

    log = Logger()

    def __init__(self, primary: int, second: Optional[FamilySocket] = None) -> None:
        self.primary = primary
        self.second = second

    def sockets(self, puncher: Puncher) -> Dict[int, LocalSocket]:
        out = {self.primary: puncher.default_socket}
        if self.second is not None:
            out[10 - self.primary] = self.second.local
        return out

    def arm(self, puncher: Puncher, peer_public: Optional[Address], peer_lan: Sequence[Address],
            timeout: Optional[float] = None) -> int:
        """Pair the peer's addresses with the socket of their family (before
        ``puncher.start()``): IPv6 ones as ``srflx``, from the IPv6 socket;
        those of a family without a socket dropped.  ``timeout``: the
        punching time the other family gets at least (the strategy's
        verdict is about the client socket's family).  Returns how many
        pairs run from the second socket."""
        sockets = self.sockets(puncher)
        found = [(Address(*a), CandidateKind.HOST) for a in peer_lan]
        if peer_public is not None:
            found.append((Address(*peer_public), CandidateKind.SRFLX))
        moved = 0
        for addr, kind in found:
            fam = family(addr.host)
            if fam == 4 and self.primary == 4:
                continue  # the puncher has it as it should
            puncher.drop_candidate(addr)
            local = sockets.get(fam)
            if local is None:
                continue
            puncher.add_candidate(addr, CandidateKind.SRFLX if fam == 6 else kind, local)
            moved += local is not puncher.default_socket
        if moved and timeout is not None:
            puncher.timeout = max(puncher.timeout, timeout)
        self.log.debug("IPv6 pairs: {n} from the second socket", n=moved)
        return moved

    def close(self) -> None:
        if self.second is not None and self.second.port is not None:
            self.second.port.stopListening()
            self.second.port = None
