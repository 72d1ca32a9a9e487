"""``natsalon.connect(reactor, server, room, secret)``: meet the peer in a
room of the salon, punch a direct UDP path, return a :class:`Connection`.

    from twisted.internet import task
    import natsalon

    @defer.inlineCallbacks
    def main(reactor):
        conn = yield natsalon.connect(reactor, "salon.example.org", "our-room", b"shared secret")
        conn.set_receiver(lambda data: print("got", data))
        conn.send(b"hello")
"""

from __future__ import annotations

import ipaddress
from typing import Callable, NamedTuple, Optional, Sequence, Tuple

from twisted.internet import defer, threads

from natsalon import wire
from natsalon.client.connection import Connection
from natsalon.client.demux import ClientSocket
from natsalon.client.errors import ConnectFailed, ConnectTimeout, IntroductionRefused, PeerNotVerified, PunchFailed, SalonUnreachable
from natsalon.client.join import Introduction, Joiner
from natsalon.client.punch import Path, Puncher
from natsalon.crypto.secret import RoomKeys, SessionKeys, derive, new_nonce, session_keys
from natsalon.net.hostport import parse_server
from natsalon.net.interfaces import lan_addresses
from natsalon.stun import Address


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
    :class:`natsalon.client.connection.Connection` whose path is verified both ways, or
    fails with a :class:`ConnectFailed` subclass (or
    :class:`natsalon.client.punch.PunchFailed`).  ``connection.info`` holds
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
        ips = (yield threads.deferToThread(lan_addresses, interface, wire.MAX_CANDIDATES)) if lan else []
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
           "PeerNotVerified", "ConnectTimeout", "PunchFailed"]
