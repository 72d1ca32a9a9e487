"""Upgrade to direct: while the connection runs over a relayed path,
:class:`Upgrade` keeps probing the peer's direct candidates (the pairs
the puncher already knows that do not go through a relay) at a slower
pace, ``interval`` seconds apart, for at most ``budget`` seconds.  The
peer's puncher answers them and probes back (a triggered check), so a
pair that opens verifies both ways as during punching; the first one that
does is handed to ``on_direct(pair)`` (checked after every valid message
of the peer, not only at the ticks: the move happens within the round trip
that verified it).  The clock is injected; it holds no other state.

A NAT that changed while we were relayed (a symmetric NAT replaced by a
cone one, say) maps our probes to the peer from another port than the
one the peer knows, and the connected puncher takes no probe from a
source that is no candidate.  So while it runs, an Upgrade given the
client ``socket`` learns such sources itself: a genuine probe of the
peer (checked with k_punch and the peer's nonce, :func:`peer_request`)
from an unknown source on the client socket becomes a peer-reflexive
candidate (at most ``MAX_LEARNT``) before the puncher sees it, so it is
answered, probed back and may verify.  The peer's public addresses our
allocation hears it from (its NAT's mappings towards our relayed address,
alive while it sends there) are probed directly too: once that NAT is a
cone, they let us in.
"""

from __future__ import annotations

from typing import Callable, Optional

from twisted.internet import task

from natsalon import wire
from natsalon.client.punch import CandidateKind, CandidatePair, PairState, Puncher
from natsalon.stun import Address

#: peer-reflexive candidates an Upgrade learns on the client socket
MAX_LEARNT = 4


def peer_request(puncher: Puncher, data: bytes) -> bool:
    """Is ``data`` a genuine PUNCH request of the peer (not a LEAVING one)?"""
    try:
        punch = wire.parse_punch(data, puncher.session.k_punch, puncher.peer_nonce)
    except wire.WireError:
        return False
    return punch.is_request and not punch.flags & wire.FLAG_LEAVING


class Upgrade:
    def __init__(self, clock, puncher: Puncher, interval: float, budget: float,
                 on_direct: Callable[[CandidatePair], None], socket=None) -> None:
        self.clock = clock
        self.puncher = puncher
        self.interval = interval
        self.budget = budget
        self.on_direct = on_direct
        self.socket = socket  #: the ClientSocket whose new sources are learnt (None: none)
        self.started: Optional[float] = None
        self.probes = 0
        self.learnt = 0
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = clock
        self._heard: Optional[Callable] = None
        self._punch: Optional[Callable] = None

    def start(self) -> None:
        self.started = self.clock.seconds()
        # chained onto the puncher's hook: a verification is seen at once
        self._heard = self.puncher.on_heard
        self.puncher.on_heard = self._on_heard
        if self.socket is not None:
            self._punch, self.socket.on_punch = self.socket.on_punch, self._on_punch
        self._loop.start(self.interval, now=False)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()
        if self._heard is not None or self.puncher.on_heard == self._on_heard:
            self.puncher.on_heard, self._heard = self._heard, None
        if self._punch is not None:
            if self.socket.on_punch == self._on_punch:
                self.socket.on_punch = self._punch
            self._punch = None

    def _on_punch(self, data: bytes, addr, *local) -> bool:
        """The client socket's ``on_punch`` while running (``local``: an
        extra socket's or a relay's, passed on; only the client socket's
        own datagrams are learnt from)."""
        if not local and self.learnt < MAX_LEARNT:
            src = Address(addr[0], addr[1])
            if (self.puncher.default_socket, src) not in self.puncher.pairs and peer_request(self.puncher, data):
                self.learnt += 1
                self.puncher.add_candidate(src, CandidateKind.PRFLX)
        return self._punch(data, addr, *local)

    @property
    def running(self) -> bool:
        return self._loop.running

    def _direct(self):
        return [p for p in self.puncher.pairs.values() if not p.relayed and p.state is not PairState.FAILED]

    def _on_heard(self, src) -> None:
        if self._heard is not None:
            self._heard(src)
        if self._loop.running:
            self._check()

    def _check(self) -> bool:
        verified = [p for p in self._direct() if p.verified]
        if not verified:
            return False
        best = min(verified, key=lambda p: (p.rank, p.rtt if p.rtt is not None else 1e9))
        self.stop()
        self.on_direct(best)
        return True

    def _through_relay(self) -> None:
        """The peer's public addresses our allocation hears it from (its
        NAT's live mappings towards our relayed address) as direct
        candidates too: a NAT that became a cone lets our probes in there."""
        for pair in list(self.puncher.pairs.values()):
            if pair.local.relayed is not None and pair.kind is not CandidateKind.RELAY:
                if (self.puncher.default_socket, pair.address) not in self.puncher.pairs:
                    self.puncher.add_candidate(pair.address, CandidateKind.PRFLX)

    def _tick(self) -> None:
        if self._check():
            return
        if self.clock.seconds() - self.started >= self.budget:
            self.stop()
            return
        self._through_relay()
        for pair in self._direct():
            self.probes += 1
            self.puncher.probe(pair.address, pair.local)
