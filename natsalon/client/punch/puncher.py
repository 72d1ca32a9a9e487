"""The :class:`Puncher`: candidate pairs (:mod:`.candidates`) driven through
the phases of :mod:`.phases`.  The rules it follows are told in
:mod:`natsalon.client.punch`."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, Optional, Tuple

from twisted.internet import defer
from twisted.logger import Logger

from natsalon import wire
from natsalon.client.errors import PunchFailed
from natsalon.client.punch.candidates import (
    DIRECT,
    LAN,
    RELAY,
    Candidate,
    CandidateKind,
    CandidatePair,
    LocalSocket,
    PairEvent,
    PairState,
)
from natsalon.client.punch.nomination import Nomination
from natsalon.client.punch.phases import Lifecycle, Phase, PhaseEvent
from natsalon.crypto.secret import SessionKeys
from natsalon.stun import Address

__all__ = ["Puncher", "Path", "LAN", "DIRECT", "RELAY"]

#: defaults of the Puncher's limits (constructor arguments: birthday punching raises them)
_MAX_PENDING = 512  #: probes awaiting a response, oldest forgotten first
_SEEN_REQUESTS = 256  #: request transaction ids remembered against replays
_MAX_PEER_REFLEXIVE = 4  #: candidates learnt from the source of a probe

#: seconds of RTT within which an IPv6 pair and an IPv4 pair tie (IPv6
#: wins the tie, as happy eyeballs prefers it) ...
V6_TIE = 0.005
#: ... or this share of the IPv6 pair's RTT when that is more (noise on a
#: long path should not flip the choice)
V6_TIE_SHARE = 0.1

#: how far a pair got, to show the most advanced one per address in :attr:`Puncher.paths`
_PROGRESS = {PairState.FAILED: 0, PairState.WAITING: 1, PairState.IN_PROGRESS: 2,
             PairState.SUCCEEDED_ONE_WAY: 3, PairState.VERIFIED: 4}


@dataclass(frozen=True)
class Path:
    """The path :meth:`Puncher.start` chose."""

    address: Address  #: the peer's address on it
    kind: str  #: "lan" (a host candidate), "relay" (through a TURN relay) or "direct" (any other)
    rtt: float  #: seconds
    candidate_kind: Optional[CandidateKind] = None  #: host, srflx, prflx, ...
    local: Optional[LocalSocket] = field(default=None, compare=False)  #: the local socket it runs from
    #: how it was found: "plain", "predicted" or "birthday" (:mod:`natsalon.client.strategy`)
    strategy: str = field(default="plain", compare=False)
    probes: int = field(default=0, compare=False)  #: probes we sent until it was chosen
    sockets: int = field(default=1, compare=False)  #: local sockets we punched from


class Puncher:
    """Punch a path to the peer: see :mod:`natsalon.client.punch`.

    ``send`` is the default local socket's ``send(data, addr)``; candidates
    added with another :class:`LocalSocket` are probed from that socket, and
    :meth:`datagram` is told which socket a datagram arrived on."""

    log = Logger()

    def __init__(self, clock, send: Callable[[bytes, tuple], None], session: SessionKeys,
                 my_nonce: bytes, peer_nonce: bytes, peer_public: Optional[Address],
                 peer_lan: Iterable[Address] = (), interval: float = 0.1, timeout: float = 10.0,
                 lan_grace: float = 0.5, max_pending: int = _MAX_PENDING, seen_requests: int = _SEEN_REQUESTS,
                 max_peer_reflexive: int = _MAX_PEER_REFLEXIVE) -> None:
        self.clock = clock
        self.max_pending = max_pending
        self.seen_requests = seen_requests
        self.max_peer_reflexive = max_peer_reflexive
        #: reported in the chosen :class:`Path` (the strategy runner sets them)
        self.strategy = "plain"
        self.sockets_used = 1
        #: called once by :meth:`stop` (e.g. to close the extra sockets of a strategy)
        self.on_stop: list = []
        self.default_socket = LocalSocket(send)
        self.session = session
        self.my_nonce = my_nonce
        self.peer_nonce = peer_nonce
        self.interval = interval
        self.timeout = timeout
        self.lan_grace = lan_grace
        self.pairs: Dict[Tuple[LocalSocket, Address], CandidatePair] = {}
        self._pending: "OrderedDict[bytes, Tuple[LocalSocket, Address, float, CandidateKind]]" = OrderedDict()
        self._seen: "OrderedDict[bytes, None]" = OrderedDict()
        self.replays = 0  #: requests dropped because their transaction id was seen before
        self.refused = 0  #: requests dropped from unknown sources (peer-reflexive limit)
        self.ignored = 0  #: valid messages of the peer that came once FAILED or STOPPED
        self.selected: Optional[Path] = None
        self.selected_pair: Optional[CandidatePair] = None
        self.peer_connected = False
        self.probes_sent = 0
        self.on_heard: Optional[Callable[[Address], None]] = None
        #: called when the peer says it ends the session (a valid LEAVING probe)
        self.on_peer_left: Optional[Callable[[], None]] = None
        #: who chooses the path (:mod:`.nomination`): the side of the lower nonce
        self.nomination = Nomination(controlling=session.role == 0)
        #: called with the new :class:`Path` when, keeping a path alive, we
        #: follow the peer's nomination to another pair (controlled side)
        self.on_moved: Optional[Callable[[Path], None]] = None
        self._deferred: Optional[defer.Deferred] = None
        self._lifecycle = Lifecycle(clock, self)
        public = Address(*peer_public) if peer_public is not None else None
        for addr in peer_lan:
            if Address(*addr) != public:
                self.add_candidate(addr, CandidateKind.HOST)
        if public is not None:
            self.add_candidate(public, CandidateKind.SRFLX)

    # -- state -------------------------------------------------------------
    @property
    def phase(self) -> Phase:
        return self._lifecycle.phase

    @property
    def send(self) -> Callable[[bytes, tuple], None]:
        """The default local socket's send callable."""
        return self.default_socket.send

    @send.setter
    def send(self, send: Callable[[bytes, tuple], None]) -> None:
        self.default_socket.send = send

    @property
    def paths(self) -> Dict[Address, CandidatePair]:
        """A snapshot, one pair per remote address: the most advanced one
        when several local sockets probe it (:attr:`pairs` has them all)."""
        view: Dict[Address, CandidatePair] = {}
        for p in self.pairs.values():
            known = view.get(p.address)
            if known is None or _PROGRESS[p.state] > _PROGRESS[known.state]:
                view[p.address] = p
        return view

    def add_candidate(self, address, kind: CandidateKind, local: Optional[LocalSocket] = None) -> CandidatePair:
        """A candidate of the peer, probed from ``local`` (default: the
        constructor's socket) by the schedule's next round, unless it is
        peer-reflexive; a pair already known is returned as it is."""
        local = local or self.default_socket
        address = Address(*address)
        pair = self.pairs.get((local, address))
        if pair is None:
            pair = self.pairs[local, address] = CandidatePair(local, Candidate(address, kind))
        return pair

    def drop_candidate(self, address, local: Optional[LocalSocket] = None) -> bool:
        """Forget the pair to ``address`` from ``local`` (default: the
        constructor's socket) unless it verified; True if one went."""
        key = (local or self.default_socket, Address(*address))
        pair = self.pairs.get(key)
        if pair is None or pair.verified:
            return False
        del self.pairs[key]
        return True

    def last_heard(self, addr: Address, local: Optional[LocalSocket] = None) -> float:
        """When the peer was last heard on the path to ``addr`` (-1 if never)."""
        pair = self._pair_for(Address(*addr), local)
        return pair.last_heard if pair is not None else -1.0

    def _pair_for(self, addr: Address, local: Optional[LocalSocket]) -> Optional[CandidatePair]:
        """The pair to ``addr`` from ``local``; without ``local``, the
        selected pair, else the default socket's, else any."""
        if local is not None:
            return self.pairs.get((local, addr))
        if self.selected_pair is not None and self.selected_pair.address == addr:
            return self.selected_pair
        pair = self.pairs.get((self.default_socket, addr))
        if pair is None:
            pair = next((p for p in self.pairs.values() if p.address == addr), None)
        return pair

    # -- lifecycle (transitions in natsalon.client.punch.phases) -----------
    def start(self) -> defer.Deferred:
        """Start probing; the Deferred fires with the chosen :class:`Path`
        or fails with :class:`PunchFailed` (with CancelledError on stop()
        or cancel())."""
        self._lifecycle.fire(PhaseEvent.START)
        return self._deferred

    def stop(self) -> None:
        """Stop for good: nothing is sent or learnt afterwards."""
        self._lifecycle.fire(PhaseEvent.STOP)
        hooks, self.on_stop = self.on_stop, []
        for hook in hooks:
            hook()

    def _begin(self) -> None:
        self._deferred = defer.Deferred(lambda _: self.stop())
        self._lifecycle.call_later("timeout", self.timeout, lambda: self._lifecycle.fire(PhaseEvent.TIMEOUT))
        self._tick()
        self._consider()  # a pair verified before start()

    def _tick(self) -> None:
        for pair in list(self.pairs.values()):
            if pair.scheduled:
                self._send_probe(pair.local, pair.address, pair)
        if self._lifecycle.owns("tick"):
            self._lifecycle.call_later("tick", self.interval, self._tick)

    def probe_new(self) -> None:
        """While punching, probe every pair not probed yet now rather than
        at the next round (candidates of a plan that joins the punching)."""
        if not self._lifecycle.owns("tick"):
            return
        for pair in list(self.pairs.values()):
            if pair.state is PairState.WAITING and pair.scheduled:
                self._send_probe(pair.local, pair.address, pair)

    def _arm_grace(self) -> None:
        # a LAN path, if there is one, answers faster than the public one
        best = self.best()
        grace = min(self.lan_grace, max(0.05, 2 * (best.rtt or 0.0)))
        self._lifecycle.call_later("grace", grace, lambda: self._lifecycle.fire(PhaseEvent.SELECT))

    def _deliver(self) -> None:
        p = self.selected_pair = self.best()
        self.selected = Path(p.address, p.path_kind, p.rtt or 0.0, p.kind, p.local, self.strategy,
                             self.probes_sent, self.sockets_used)
        self.log.debug("punch selected {kind} path to {addr}", kind=p.kind.value, addr=p.address)
        # tell the peer at once that we are done (and give it a probe to answer)
        self._send_probe(p.local, p.address, p)
        if not self._deferred.called:
            self._deferred.callback(self.selected)

    def move(self, pair: CandidatePair) -> Path:
        """Select another verified ``pair`` while keeping a path alive (an
        upgrade from a relayed path to a direct one); returns its Path."""
        if not pair.verified:
            raise ValueError("only a verified pair can carry the path")
        self.selected_pair = pair
        self.selected = Path(pair.address, pair.path_kind, pair.rtt or 0.0, pair.kind, pair.local, self.strategy,
                             self.probes_sent, self.sockets_used)
        return self.selected

    def _follow(self) -> None:
        """Keeping a direct path alive, the controlled side moves to
        another verified pair the peer nominated (:mod:`.nomination`)."""
        nominated = self.nomination.chosen()
        current = self.selected_pair
        if nominated is None or current is None or nominated is current or current.relayed:
            return
        path = self.move(nominated)
        self.log.debug("following the peer's nomination to {addr}", addr=nominated.address)
        if self.on_moved is not None:
            self.on_moved(path)

    def _give_up(self) -> None:
        half = sum(1 for p in self.pairs.values() if p.state is PairState.SUCCEEDED_ONE_WAY)
        reason = "no path verified in both directions within %gs (%d candidates tried, %d half-open)" % (
            self.timeout, len(self.pairs), half)
        self._deferred.errback(PunchFailed(reason))

    def _cancel_result(self) -> None:
        if self._deferred is not None and not self._deferred.called:
            self._deferred.errback(defer.CancelledError())

    def _nothing(self) -> None:
        pass

    # -- sending -----------------------------------------------------------
    @property
    def flags(self) -> int:
        return wire.FLAG_CONNECTED if self._lifecycle.rules.connected else 0

    def probe(self, addr: Address, local: Optional[LocalSocket] = None,
              kind: CandidateKind = CandidateKind.PRFLX) -> None:
        """Probe ``addr`` (keepalives use this) from ``local``, by default
        from the socket of the pair to it; nothing once FAILED or STOPPED.
        A valid response from an address that is no candidate yet makes it
        one of ``kind`` (a strategy's guessed ports are PREDICTED)."""
        addr = Address(*addr)
        pair = self._pair_for(addr, local)
        self._send_probe(local or (pair.local if pair is not None else self.default_socket), addr, pair, kind)

    def goodbye(self) -> None:
        """Tell the peer we end the session (a clean exit): one LEAVING
        probe to the selected path, or to every live candidate while
        punching.  Call it before :meth:`stop`; nothing once inert."""
        if not self._lifecycle.rules.active:
            return
        chosen = self.selected_pair
        pairs = [chosen] if chosen is not None else [p for p in self.pairs.values() if p.state is not PairState.FAILED]
        for pair in pairs:
            _, data = wire.punch_request(self.my_nonce, self.session.k_punch, self.flags | wire.FLAG_LEAVING)
            try:
                pair.local.send(data, tuple(pair.address))
            except OSError:
                pass

    def _send_probe(self, local: LocalSocket, addr: Address, pair: Optional[CandidatePair],
                    kind: CandidateKind = CandidateKind.PRFLX) -> None:
        if not self._lifecycle.rules.active:
            return
        flags = self.flags | self.nomination.flag(pair, self.selected_pair)
        txid, data = wire.punch_request(self.my_nonce, self.session.k_punch, flags)
        now = self.clock.seconds()
        self._pending[txid] = (local, addr, now, pair.kind if pair is not None else kind)
        while len(self._pending) > self.max_pending:
            self._pending.popitem(last=False)
        if pair is not None:
            pair.last_probe = now
            pair.apply(PairEvent.PROBE_SENT)
        self.probes_sent += 1
        try:
            local.send(data, tuple(addr))
        except OSError as e:
            # no route (e.g. a LAN address of another site): stop waiting for it
            self.log.debug("probe to {addr} failed: {error}", addr=addr, error=e)
            if pair is not None:
                pair.apply(PairEvent.SEND_FAILED)

    # -- receiving ---------------------------------------------------------
    def datagram(self, data: bytes, addr, local: Optional[LocalSocket] = None) -> bool:
        """Offer a datagram that arrived on ``local`` (default: the
        constructor's socket); True if it was a valid probe or response of
        the peer.  Once FAILED or STOPPED such a message is still claimed
        (True) but changes nothing and is not answered."""
        try:
            punch = wire.parse_punch(data, self.session.k_punch, self.peer_nonce)
        except wire.WireError:
            return False
        local = local or self.default_socket
        src = Address(addr[0], addr[1])
        if not self._lifecycle.rules.active:
            self.ignored += 1
            self.log.debug("punch {phase}: message from {src} ignored", phase=self.phase.value, src=src)
        elif punch.is_request:
            self._request(punch, src, local)
        else:
            self._response(punch, src, local)
        return True

    def _request(self, punch: wire.Punch, src: Address, local: LocalSocket) -> None:
        # a replay (the same request again, from anywhere): nothing at all
        if self._replayed(punch.txid):
            return
        if punch.flags & wire.FLAG_LEAVING:
            # the peer ends the session (authenticated, not a replay): no answer
            self.log.debug("the peer left (from {src})", src=src)
            if self.on_peer_left is not None:
                self.on_peer_left()
            return
        pair = self.pairs.get((local, src))
        if pair is None and not self._may_learn():
            self.refused += 1
            self.log.debug("probe from an unknown source refused ({n} peer-reflexive candidates, {phase})",
                           n=self._reflexive_count(), phase=self.phase.value)
            return
        self._note_flags(punch)
        flags = self.flags | self.nomination.flag(pair, self.selected_pair)
        try:
            local.send(wire.punch_response(punch.txid, self.my_nonce, src, self.session.k_punch, flags),
                       tuple(src))
        except OSError:
            pass
        if pair is None:
            self.log.debug("peer-reflexive candidate {src}", src=src)
            pair = self.add_candidate(src, CandidateKind.PRFLX, local)
        self.nomination.heard(pair, punch.flags)
        now = self.clock.seconds()
        pair.heard(PairEvent.REQUEST, now)
        if not pair.verified:
            # triggered check: each fresh request of the peer earns one
            # probe back at once (replays were dropped above), so a path
            # whose first probe met the peer's filter opens in one RTT,
            # not at the next scheduled round
            self._send_probe(local, src, pair)
        elif self._lifecycle.rules.connected and now - pair.last_probe >= self.interval / 2:
            self._send_probe(local, src, pair)
        self._heard(src)

    def _response(self, punch: wire.Punch, src: Address, local: LocalSocket) -> None:
        self._note_flags(punch)
        sent = self._pending.pop(punch.txid, None)
        if sent is None or sent[0] is not local or sent[1] != src:
            return  # ours, but stale or from elsewhere: not a proof
        # we probed it, so it is a pair (or an address probed with probe())
        pair = self.pairs.get((local, src)) or self.add_candidate(src, sent[3], local)
        self.nomination.heard(pair, punch.flags)
        now = self.clock.seconds()
        pair.heard(PairEvent.RESPONSE, now, rtt=now - sent[2])
        self._heard(src)

    def _replayed(self, txid: bytes) -> bool:
        if txid in self._seen:
            self.replays += 1
            return True
        self._seen[txid] = None
        while len(self._seen) > self.seen_requests:
            self._seen.popitem(last=False)
        return False

    def _note_flags(self, punch: wire.Punch) -> None:
        if punch.flags & wire.FLAG_CONNECTED:
            self.peer_connected = True

    def _heard(self, src: Address) -> None:
        if self.on_heard is not None:
            self.on_heard(src)
        if self._lifecycle.rules.chooses:
            self._consider()
        elif self._lifecycle.rules.connected:
            self._follow()

    def _reflexive_count(self) -> int:
        return sum(1 for p in self.pairs.values() if p.kind is CandidateKind.PRFLX)

    def _may_learn(self) -> bool:
        """May a probe from an unknown source become a candidate?"""
        return self._lifecycle.rules.learns and self._reflexive_count() < self.max_peer_reflexive

    # -- choosing ----------------------------------------------------------
    def best(self) -> Optional[CandidatePair]:
        """The pair the peer nominated once it verified (controlled side),
        else the preferred verified pair (:func:`preference`)."""
        nominated = self.nomination.chosen()
        if nominated is not None:
            return nominated
        verified = [p for p in self.pairs.values() if p.verified]
        if not verified:
            return None
        return min(verified, key=preference)

    def _consider(self) -> None:
        """A verified host pair, or the best verified pair when no host pair
        is pending, ends the punching; otherwise the LAN grace runs.  The
        controlled side takes the peer's nomination at once (:mod:`.nomination`)."""
        best = self.best()
        if best is None:
            return
        if self.nomination.chosen() is not None:
            self._lifecycle.fire(PhaseEvent.SELECT)
            return
        host_pending = any(p.kind is CandidateKind.HOST and p.pending for p in self.pairs.values())
        # happy eyeballs: an IPv4 path waits the grace for a pending IPv6 one
        v6_pending = not is_v6(best) and any(is_v6(p) and p.pending and not p.relayed for p in self.pairs.values())
        if best.kind is CandidateKind.HOST or not (host_pending or v6_pending):
            self._lifecycle.fire(PhaseEvent.SELECT)
        else:
            self._lifecycle.fire(PhaseEvent.NOMINATE)


def is_v6(pair: CandidatePair) -> bool:
    """Does the pair run over IPv6?"""
    return ":" in pair.address.host


def preference(pair: CandidatePair) -> Tuple[int, float]:
    """Sort key among verified pairs, best first: host before the rest,
    relayed last (:attr:`CandidatePair.rank`), then the lower RTT, an IPv6
    pair counting :data:`V6_TIE` (5 ms) or :data:`V6_TIE_SHARE` (10 %) of
    its RTT less, whichever is more (IPv6 wins a tie)."""
    rtt = pair.rtt if pair.rtt is not None else 1e9
    return pair.rank, rtt - max(V6_TIE, V6_TIE_SHARE * rtt) if is_v6(pair) else rtt
