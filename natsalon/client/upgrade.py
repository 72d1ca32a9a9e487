"""Upgrade to direct: while the connection runs over a relayed path,
:class:`Upgrade` keeps probing the peer's direct candidates (the pairs
the puncher already knows that do not go through a relay) at a slower
pace, ``interval`` seconds apart, for at most ``budget`` seconds.  The
peer's puncher answers them and probes back (a triggered check), so a
pair that opens verifies both ways as during punching; the first one that
does is handed to ``on_direct(pair)`` (checked after every valid message
of the peer, not only at the ticks: the move happens within the round trip
that verified it).  The clock is injected; it holds no other state.
"""

from __future__ import annotations

from typing import Callable, Optional

from twisted.internet import task

from natsalon.client.punch import CandidatePair, PairState, Puncher


class Upgrade:
    def __init__(self, clock, puncher: Puncher, interval: float, budget: float,
                 on_direct: Callable[[CandidatePair], None]) -> None:
        self.clock = clock
        self.puncher = puncher
        self.interval = interval
        self.budget = budget
        self.on_direct = on_direct
        self.started: Optional[float] = None
        self.probes = 0
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = clock
        self._heard: Optional[Callable] = None

    def start(self) -> None:
        self.started = self.clock.seconds()
        # chained onto the puncher's hook: a verification is seen at once
        self._heard = self.puncher.on_heard
        self.puncher.on_heard = self._on_heard
        self._loop.start(self.interval, now=False)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()
        if self._heard is not None or self.puncher.on_heard == self._on_heard:
            self.puncher.on_heard, self._heard = self._heard, None

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

    def _tick(self) -> None:
        if self._check():
            return
        if self.clock.seconds() - self.started >= self.budget:
            self.stop()
            return
        for pair in self._direct():
            self.probes += 1
            self.puncher.probe(pair.address, pair.local)
