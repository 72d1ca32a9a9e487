"""Hole punching: probe every candidate of the peer, keep the paths that
verify in both directions, pick the best.

:class:`Puncher` holds no socket: it is given ``send(data, addr)`` and a
clock, and is fed every datagram that looks like STUN through
:meth:`Puncher.datagram`.  Rules:

- every ``interval`` seconds, a PUNCH request (MESSAGE-INTEGRITY-SHA256 with
  the session's k_punch) goes to every candidate the salon gave us whose
  path is not verified yet, all at once, until ``timeout``;
- a request carries no timestamp, so the same bytes verify from any source:
  the transaction ids of the last :data:`_SEEN_REQUESTS` requests are kept
  and a request seen before is dropped before anything else (a replay gets
  no answer and no probe);
- a valid request from the peer is answered at once from the same socket
  (that answer is what opens the path for the peer) and, when it comes from
  an address we did not know (the peer's NAT gave that flow a new port: a
  peer-reflexive candidate), that address becomes a candidate, at most
  :data:`_MAX_PEER_REFLEXIVE` of them and none once a path is selected
  (requests from other unknown sources are dropped); a valid request also
  triggers a probe back to its source, so each side ends up with both
  halves even when the other stopped its schedule.  Peer-reflexive
  candidates are probed only that way (one triggered probe per new request
  of the peer), never by the schedule, so every packet we send them answers
  a fresh request of the peer;
- a path (a remote address) is *verified* when we got a valid response to a
  probe sent to it from it, **and** a valid probe from the peer came from it;
- a verified LAN path wins at once; a verified public path waits for a LAN
  path while LAN candidates are pending (and routable), twice its RTT (at
  least 50 ms, at most ``lan_grace``);
  among equals the lowest RTT wins.

Once a path is chosen, the puncher keeps answering and verifying probes (the
connection's keepalives use :meth:`Puncher.probe`), and its probes carry
:data:`~natsalon.wire.FLAG_CONNECTED` so the peer knows we are done.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Optional, Tuple

from twisted.internet import defer
from twisted.logger import Logger

from natsalon import wire
from natsalon.client.errors import PunchFailed
from natsalon.crypto.secret import SessionKeys
from natsalon.stun import Address

LAN = "lan"
DIRECT = "direct"
_MAX_PENDING = 512
_SEEN_REQUESTS = 256  #: request transaction ids remembered against replays
_MAX_PEER_REFLEXIVE = 4  #: candidates learnt from the source of a probe


@dataclass
class PathState:
    address: Address
    kind: str
    outbound: bool = False  #: a valid response to our probe came from it
    inbound: bool = False  #: a valid probe from the peer came from it
    rtt: Optional[float] = None
    last_heard: float = -1.0  #: last valid message from the peer on it
    last_probe: float = -1.0
    unreachable: bool = False  #: sending to it failed at once (no route)
    reflexive: bool = False  #: learnt from the source of a probe, not from the salon

    @property
    def verified(self) -> bool:
        return self.outbound and self.inbound


@dataclass(frozen=True)
class Path:
    address: Address
    kind: str  #: "lan" or "direct"
    rtt: float  #: seconds


_RANK = {LAN: 0, DIRECT: 1}


class Puncher:
    log = Logger()

    def __init__(self, clock, send: Callable[[bytes, tuple], None], session: SessionKeys,
                 my_nonce: bytes, peer_nonce: bytes, peer_public: Optional[Address],
                 peer_lan: Iterable[Address] = (), interval: float = 0.1, timeout: float = 10.0,
                 lan_grace: float = 0.5) -> None:
        self.clock = clock
        self.send = send
        self.session = session
        self.my_nonce = my_nonce
        self.peer_nonce = peer_nonce
        self.interval = interval
        self.timeout = timeout
        self.lan_grace = lan_grace
        self.paths: Dict[Address, PathState] = {}
        self._pending: "OrderedDict[bytes, Tuple[Address, float]]" = OrderedDict()
        self._seen: "OrderedDict[bytes, None]" = OrderedDict()
        self.replays = 0  #: requests dropped because their transaction id was seen before
        self.refused = 0  #: requests dropped from unknown sources (peer-reflexive limit)
        for addr in peer_lan:
            addr = Address(*addr)
            if addr != peer_public:
                self.paths.setdefault(addr, PathState(addr, LAN))
        if peer_public is not None:
            self.paths.setdefault(Address(*peer_public), PathState(Address(*peer_public), DIRECT))
        self.selected: Optional[Path] = None
        self.peer_connected = False
        self.probes_sent = 0
        self.on_heard: Optional[Callable[[Address], None]] = None
        self._deferred: Optional[defer.Deferred] = None
        self._tick_call = None
        self._timeout_call = None
        self._grace_call = None
        self._started = 0.0

    # -- lifecycle -------------------------------------------------------
    def start(self) -> defer.Deferred:
        """Start probing; the Deferred fires with the chosen :class:`Path`
        or fails with :class:`PunchFailed`."""
        self._deferred = defer.Deferred(lambda _: self.stop())
        self._started = self.clock.seconds()
        self._timeout_call = self.clock.callLater(self.timeout, self._give_up)
        self._tick()
        return self._deferred

    def stop(self) -> None:
        for name in ("_tick_call", "_timeout_call", "_grace_call"):
            call = getattr(self, name)
            if call is not None and call.active():
                call.cancel()
            setattr(self, name, None)

    def _tick(self) -> None:
        self._tick_call = None
        if self.selected is not None:
            return
        for p in list(self.paths.values()):
            if not p.verified and not p.unreachable and not p.reflexive:
                self.probe(p.address)
        self._tick_call = self.clock.callLater(self.interval, self._tick)

    def _give_up(self) -> None:
        self._timeout_call = None
        self.stop()
        d, self._deferred = self._deferred, None
        if d is not None and self.selected is None:
            half = [p for p in self.paths.values() if p.outbound or p.inbound]
            reason = "no path verified in both directions within %gs (%d candidates tried, %d half-open)" % (
                self.timeout, len(self.paths), len(half))
            d.errback(PunchFailed(reason))

    # -- sending ---------------------------------------------------------
    @property
    def flags(self) -> int:
        return wire.FLAG_CONNECTED if self.selected is not None else 0

    def probe(self, addr: Address) -> None:
        txid, data = wire.punch_request(self.my_nonce, self.session.k_punch, self.flags)
        now = self.clock.seconds()
        self._pending[txid] = (Address(*addr), now)
        while len(self._pending) > _MAX_PENDING:
            self._pending.popitem(last=False)
        p = self.paths.get(addr)
        if p is not None:
            p.last_probe = now
        self.probes_sent += 1
        try:
            self.send(data, tuple(addr))
        except OSError:
            # no route (e.g. a LAN address of another site): stop waiting for it
            if p is not None:
                p.unreachable = True

    # -- receiving ---------------------------------------------------------
    def datagram(self, data: bytes, addr) -> bool:
        """Offer a datagram; True if it was a valid probe or response of the peer."""
        try:
            punch = wire.parse_punch(data, self.session.k_punch, self.peer_nonce)
        except wire.WireError:
            return False
        src = Address(addr[0], addr[1])
        now = self.clock.seconds()
        p = self.paths.get(src)
        if punch.is_request:
            # a replay (the same request again, from anywhere): nothing at all
            if punch.txid in self._seen:
                self.replays += 1
                return True
            self._seen[punch.txid] = None
            while len(self._seen) > _SEEN_REQUESTS:
                self._seen.popitem(last=False)
            if p is None and not self._may_learn():
                self.refused += 1
                self.log.debug("probe from an unknown source refused ({n} peer-reflexive candidates, {state})",
                               n=self._reflexive_count(), state="selected" if self.selected else "punching")
                return True
        if punch.flags & wire.FLAG_CONNECTED:
            self.peer_connected = True
        if punch.is_request:
            try:
                self.send(wire.punch_response(punch.txid, self.my_nonce, src, self.session.k_punch, self.flags),
                          tuple(addr))
            except OSError:
                pass
            if p is None:
                p = self.paths[src] = PathState(src, DIRECT, reflexive=True)
            p.inbound = True
            p.last_heard = now
            if not p.outbound:
                # triggered check: each fresh request of the peer earns one
                # probe back at once (replays were dropped above), so a path
                # whose first probe met the peer's filter opens in one RTT,
                # not at the next scheduled round
                self.probe(src)
            elif self.selected is not None and now - p.last_probe >= self.interval / 2:
                self.probe(src)
        else:
            sent = self._pending.pop(punch.txid, None)
            if sent is None or sent[0] != src:
                return True  # ours, but stale or from elsewhere: not a proof
            if p is None:
                # we probed it, so it was a path (only paths are probed)
                p = self.paths[src] = PathState(src, DIRECT, reflexive=True)
            p.outbound = True
            p.last_heard = now
            rtt = now - sent[1]
            p.rtt = rtt if p.rtt is None else 0.8 * p.rtt + 0.2 * rtt
        if self.on_heard is not None:
            self.on_heard(src)
        self._consider()
        return True

    def _reflexive_count(self) -> int:
        return sum(1 for p in self.paths.values() if p.reflexive)

    def _may_learn(self) -> bool:
        """May a probe from an unknown source become a candidate?"""
        return self.selected is None and self._reflexive_count() < _MAX_PEER_REFLEXIVE

    # -- choosing ----------------------------------------------------------
    def best(self) -> Optional[PathState]:
        verified = [p for p in self.paths.values() if p.verified]
        if not verified:
            return None
        return min(verified, key=lambda p: (_RANK[p.kind], p.rtt if p.rtt is not None else 1e9))

    def _consider(self) -> None:
        if self.selected is not None or self._deferred is None:
            return
        best = self.best()
        if best is None:
            return
        lan_pending = any(p.kind == LAN and not p.verified and not p.unreachable for p in self.paths.values())
        if best.kind == LAN or not lan_pending:
            self._select(best)
        elif self._grace_call is None:
            # a LAN path, if there is one, answers faster than the public one
            grace = min(self.lan_grace, max(0.05, 2 * (best.rtt or 0.0)))
            self._grace_call = self.clock.callLater(grace, self._grace_over)

    def _grace_over(self) -> None:
        self._grace_call = None
        best = self.best()
        if best is not None and self.selected is None:
            self._select(best)

    def _select(self, p: PathState) -> None:
        self.selected = Path(p.address, p.kind, p.rtt or 0.0)
        self.stop()
        d, self._deferred = self._deferred, None
        # tell the peer at once that we are done (and give it a probe to answer)
        self.probe(p.address)
        if d is not None:
            d.callback(self.selected)

    def last_heard(self, addr: Address) -> float:
        p = self.paths.get(addr)
        return p.last_heard if p is not None else -1.0
