"""``natsalon.connect(reactor, server, room, secret)``: meet the peer in a
room of the salon, punch a direct UDP path, return a :class:`Connection`.

    from twisted.internet import task
    import natsalon

    @defer.inlineCallbacks
    def main(reactor):
        conn = yield natsalon.connect(reactor, "salon.example.org", "our-room", b"shared secret")
        conn.set_receiver(lambda data: print("got", data))
        conn.send(b"hello")

The pieces: :class:`ClientSocket` (one UDP socket for salon transactions,
probes and payload frames), :class:`Joiner` (JOIN, cookie, poll, pushed
introduction), :class:`natsalon.punch.Puncher` and
:class:`natsalon.peer.Connection`.
"""

from __future__ import annotations

import ipaddress
from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple

from twisted.internet import defer, threads
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from . import salonwire as wire
from .aead import is_frame
from .peer import Connection
from .punch import Path, PunchFailed, Puncher
from .secret import RoomKeys, SessionKeys, derive, new_nonce, session_keys
from .stun import Address, Class, Method, StunDecodeError, decode
from .transaction import RetransmitPolicy, StunClient, StunTimeout

DEFAULT_PORT = 3478
JOIN_POLICY = RetransmitPolicy(rto=0.25, sends=7, last_wait=8, max_rto=2.0)


class ConnectFailed(Exception):
    """Base of the typed failures of :func:`connect`."""


class SalonUnreachable(ConnectFailed):
    """The salon did not answer our JOIN."""


class IntroductionRefused(ConnectFailed):
    """The salon refused the join (room full, too many joins, salon busy)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__("salon refused the join: %d %s" % (code, reason))
        self.code = code


class PeerNotVerified(ConnectFailed):
    """The salon introduced a peer that does not know the secret."""


class ConnectTimeout(ConnectFailed):
    """The overall timeout ran out."""


def parse_server(text: str, default_port: int = DEFAULT_PORT) -> Tuple[str, int]:
    """``HOST``, ``HOST:PORT``, ``[V6]:PORT`` or a bare IPv6 address."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, ""
    if not host:
        raise ValueError("no host in %r" % text)
    p = int(port) if port else default_port
    if not 0 < p < 65536:
        raise ValueError("port %d out of range" % p)
    return host, p


def lan_addresses(interface: str = "") -> List[str]:
    """This host's IPv4 addresses worth offering as LAN candidates
    (blocking: an interface scan; call it in a thread)."""
    if interface and not ipaddress.ip_address(interface).is_unspecified:
        return [interface]
    import ifaddr

    out = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if not isinstance(ip.ip, str):
                continue
            a = ipaddress.ip_address(ip.ip)
            if a.is_loopback or a.is_link_local or a.is_multicast or a.is_unspecified:
                continue
            out.append(ip.ip)
    return out[: wire.MAX_CANDIDATES]


class ClientSocket(DatagramProtocol):
    """One UDP socket: STUN transactions with the salon, pushed salon
    indications, punch probes and payload frames, told apart here."""

    log = Logger()
    noisy = False

    def __init__(self, clock) -> None:
        self.stun = StunClient(clock, self.write, JOIN_POLICY)
        self.on_salon: Callable[[object, tuple], None] = lambda msg, addr: None
        self.on_punch: Callable[[bytes, tuple], bool] = lambda data, addr: False
        self.on_frame: Callable[[bytes, tuple], None] = lambda data, addr: None

    def write(self, data: bytes, addr) -> None:
        if self.transport is None:
            raise OSError("socket closed")
        self.transport.write(data, tuple(addr))

    def datagramReceived(self, data: bytes, addr) -> None:
        try:
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


class Introduction(NamedTuple):
    observed: Optional[Address]  #: our public endpoint, as the salon saw it
    peer_address: Address  #: the peer's public endpoint, as the salon saw it
    peer: wire.PeerJoin  #: the peer's nonce and LAN candidates, verified with k_join


class Joiner:
    """Join a room: fetch the cookie, join, poll while waiting, and finish
    on the introduction (a response to a poll, or a pushed indication)."""

    def __init__(self, clock, sock: ClientSocket, server: Tuple[str, int], keys: RoomKeys, nonce: bytes,
                 candidates: Sequence[Address], poll: float = 1.0, policy: RetransmitPolicy = JOIN_POLICY) -> None:
        self.clock = clock
        self.sock = sock
        self.server = server
        self.keys = keys
        self.nonce = nonce
        self.candidates = tuple(candidates)
        self.poll = poll
        self.policy = policy
        self.cookie: Optional[bytes] = None
        self.observed: Optional[Address] = None
        self.waiting = False
        self._cookies = 0
        self._d: Optional[defer.Deferred] = None
        self._req: Optional[defer.Deferred] = None
        self._poll_call = None

    def start(self) -> defer.Deferred:
        self._d = defer.Deferred(lambda _: self._stop())
        self.sock.on_salon = self._indication
        self._attempt()
        return self._d

    def _stop(self) -> None:
        if self._poll_call is not None and self._poll_call.active():
            self._poll_call.cancel()
        self._poll_call = None
        req, self._req = self._req, None
        if req is not None and not req.called:
            req.cancel()

    def _finish(self, result) -> None:
        d, self._d = self._d, None
        self._stop()
        if d is not None:
            if isinstance(result, Exception):
                d.errback(result)
            else:
                d.callback(result)

    def _attempt(self) -> None:
        self._poll_call = None
        if self._d is None:
            return
        msg, _ = wire.join_request(self.keys.room_id, self.nonce, self.candidates, self.keys.k_join, self.cookie)
        req = self._req = self.sock.stun.request(msg, self.server, policy=self.policy, sha256_key=self.keys.k_join)
        req.addCallbacks(self._answer, self._no_answer)

    def _no_answer(self, f) -> None:
        if f.check(defer.CancelledError):
            return
        if f.check(StunTimeout):
            self._finish(SalonUnreachable("no answer from the salon at %s:%d" % self.server))
        else:
            self._finish(ConnectFailed(str(f.value)))

    def _answer(self, response) -> None:
        self._req = None
        if self._d is None:
            return
        try:
            ans = wire.parse_join_answer(response.message)
        except wire.WireError as e:
            self._finish(ConnectFailed("bad answer from the salon: %s" % e))
            return
        if ans.status == "cookie":
            self._cookies += 1
            if self._cookies > 5:
                self._finish(ConnectFailed("the salon keeps refusing our cookie"))
                return
            self.cookie = ans.cookie
            self._attempt()
        elif ans.status == "waiting":
            # the cookie worked: a later refusal (the salon's secret rolled
            # over while we waited) starts a new count
            self._cookies = 0
            self.waiting = True
            self.observed = ans.observed
            self._poll_call = self.clock.callLater(self.poll, self._attempt)
        elif ans.status == "introduced":
            self._introduced(ans)
        else:
            self._finish(IntroductionRefused(ans.error.code, ans.error.reason))

    def _indication(self, msg, addr) -> None:
        if self._d is None or (addr[0], addr[1]) != tuple(self.server):
            return
        try:
            ans = wire.parse_join_answer(msg)
        except wire.WireError:
            return
        if ans.status == "introduced" and ans.nonce == self.nonce and ans.room_id == self.keys.room_id:
            self._introduced(ans)

    def _introduced(self, ans: wire.JoinAnswer) -> None:
        try:
            peer = wire.verify_peer_join(ans.peer_raw, self.keys.k_join, self.keys.room_id)
        except wire.WireError as e:
            self._finish(PeerNotVerified(str(e)))
            return
        if peer.nonce == self.nonce:
            self._finish(PeerNotVerified("the salon introduced us to ourselves"))
            return
        self._finish(Introduction(ans.observed or self.observed, ans.peer_address, peer))


class Session(NamedTuple):
    puncher: Puncher
    keys: SessionKeys
    path: Path


class Rendezvous:
    """Join + punch, once per session (the first connect and every re-punch)."""

    def __init__(self, clock, sock: ClientSocket, server: Tuple[str, int], keys: RoomKeys,
                 candidates: Sequence[Address], punch_timeout: float = 10.0, interval: float = 0.1,
                 poll: float = 1.0) -> None:
        self.clock = clock
        self.sock = sock
        self.server = server
        self.keys = keys
        self.candidates = candidates
        self.punch_timeout = punch_timeout
        self.interval = interval
        self.poll = poll
        self._phase = "joining"
        self._joiner: Optional[Joiner] = None
        self.introduced_at: Optional[float] = None
        self.introduction: Optional[Introduction] = None

    @property
    def phase(self) -> str:
        if self._phase == "joining" and self._joiner is not None:
            if self._joiner.waiting:
                return "waiting for the peer in the room"
            return "joining the room (no answer from the salon)"
        return self._phase

    @defer.inlineCallbacks
    def run(self, punch_timeout: Optional[float] = None):
        nonce = new_nonce()
        self._phase = "joining"
        joiner = self._joiner = Joiner(self.clock, self.sock, self.server, self.keys, nonce, self.candidates,
                                       poll=self.poll)
        intro = yield joiner.start()
        self.introduction = intro
        self.introduced_at = self.clock.seconds()
        self._phase = "punching"
        skeys = session_keys(self.keys, nonce, intro.peer.nonce)
        puncher = Puncher(self.clock, self.sock.write, skeys, nonce, intro.peer.nonce, intro.peer_address,
                          intro.peer.candidates, interval=self.interval,
                          timeout=punch_timeout or self.punch_timeout)
        self.sock.on_punch = puncher.datagram
        path = yield puncher.start()
        self._phase = "connected"
        return Session(puncher, skeys, path)


@defer.inlineCallbacks
def connect(reactor, server, room, secret, *, port: int = 0, interface: str = "", timeout: float = 30.0,
            punch_timeout: float = 10.0, keepalive: float = 15.0, dead_after: int = 3, encrypt: bool = True,
            lan: bool = True, on_event: Optional[Callable[[dict], None]] = None):
    """Meet the peer in ``room`` at the salon ``server`` ("HOST[:PORT]" or
    a (host, port) tuple) with the shared ``secret``; fires with a
    :class:`natsalon.peer.Connection` whose path is verified both ways, or
    fails with a :class:`ConnectFailed` subclass (or
    :class:`natsalon.punch.PunchFailed`).  ``connection.info`` holds
    ``elapsed`` (s since the call) and ``punch`` (s from the introduction to
    the verified path)."""
    started = reactor.seconds()
    host, sport = parse_server(server) if isinstance(server, str) else server
    try:
        ipaddress.ip_address(host)
    except ValueError:
        host = yield reactor.resolve(host)
    server_addr = (host, sport)
    # scrypt takes tens of milliseconds of CPU: keep it off the reactor thread
    keys = yield threads.deferToThread(derive, room, secret)
    sock = ClientSocket(reactor)
    listening = reactor.listenUDP(port, sock, interface=interface)
    local_port = listening.getHost().port
    try:
        ips = (yield threads.deferToThread(lan_addresses, interface)) if lan else []
        candidates = [Address(ip, local_port) for ip in ips]
        rdv = Rendezvous(reactor, sock, server_addr, keys, candidates, punch_timeout=punch_timeout)
        remaining = max(0.1, timeout - (reactor.seconds() - started))
        d = rdv.run(punch_timeout=min(punch_timeout, remaining))
        d.addTimeout(remaining, reactor)
        try:
            session = yield d
        except defer.TimeoutError:
            raise ConnectTimeout("timed out after %gs while %s" % (timeout, rdv.phase)) from None
    except BaseException:
        listening.stopListening()
        raise

    conn = Connection(reactor, sock, lambda: rdv.run(), keepalive=keepalive, dead_after=dead_after,
                      encrypt=encrypt, on_close=listening.stopListening)
    if on_event is not None:
        conn.on_event = on_event
    sock.on_frame = conn.frame_received
    conn.attach(session.puncher, session.keys, session.path)
    conn.local_port = local_port
    conn.info = {
        "elapsed": reactor.seconds() - started,
        "punch": reactor.seconds() - (rdv.introduced_at or started),
        "observed": rdv.introduction.observed if rdv.introduction else None,
    }
    return conn


__all__ = ["connect", "Connection", "ConnectFailed", "SalonUnreachable", "IntroductionRefused",
           "PeerNotVerified", "ConnectTimeout", "PunchFailed", "parse_server"]
