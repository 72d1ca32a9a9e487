"""What the client knows of its own NAT when it joins: the join-time probe.

:meth:`NatKnowledge.summary` starts a probe of the NAT against the salon
(:func:`natsalon.client.probe.probe`, run from fresh sockets while the
client joins) and fires with the summary its JOIN will carry as soon as
the mapping and port-allocation tests are over (about two round trips to
the salon, plus a few milliseconds' grace for the filtering answers that
do come), or after ``hold`` seconds with what is known then.  The JOIN that
registers us waits for that (the first JOIN, which only fetches the
salon's cookie, does not: about one round trip of the two is hidden),
never for the filtering tests that get no answer, which must wait out
their schedule (about 0.76 s on a LAN).  Nothing waits for it: the JOIN
says "pending" until it comes (:mod:`.exchange`).

The complete result is kept ``ttl`` seconds, in memory and, with a
``cache`` (:class:`natsalon.client.probecache.ProbeCache`, keyed by
``key``: the salon and our interface addresses), in a file that the next
process reads at start.  A later join reuses it without probing, and its
first JOIN carries it; except behind a sequential symmetric NAT, whose
last mapped port must be fresh (port prediction needs it): there every
join probes, and an early summary that does not know the filtering yet
takes it from the kept result.
"""

from __future__ import annotations

from typing import Callable, Optional

from twisted.internet import defer
from twisted.logger import Logger

from natsalon.client.strategy.table import NatClass, classify
from natsalon.wire.nat import UNKNOWN, UNKNOWN_NAT, NatSummary


class NatKnowledge:
    """``probe(on_early)`` starts a probe and returns a Deferred firing
    with its report (a :class:`~natsalon.client.probe.ProbeReport`) or a
    failure; ``on_early(summary)`` is called once, early."""

    log = Logger()

    def __init__(self, clock, probe: Callable[[Callable[[NatSummary], None]], defer.Deferred],
                 hold: float = 2.0, ttl: float = 120.0, cache=None, key: str = "") -> None:
        self.clock = clock
        self.probe = probe
        self.hold = hold
        self.ttl = ttl
        self.cache = cache
        self.key = key
        self.final: Optional[NatSummary] = None  #: the last complete result
        self.final_at = -1.0
        self.probes = 0  #: probes started
        self.reused = 0  #: joins that reused a kept result instead of probing
        if cache is not None:
            found = cache.load(key, clock.seconds())
            if found is not None:
                self.final, self.final_at = found[0], clock.seconds() - found[1]

    def recent(self) -> Optional[NatSummary]:
        """The kept result if it is fresh and can be reused as it is (not
        a sequential symmetric NAT)."""
        if self.final is None or self.clock.seconds() - self.final_at > self.ttl:
            return None
        return None if classify(self.final) is NatClass.SEQ else self.final

    def summary(self) -> defer.Deferred:
        """Fires with the summary for the next JOIN (never fails; cancellable):
        a recent result at once, else the probe's."""
        recent = self.recent()
        if recent is not None:
            self.reused += 1
            self.log.debug("NAT: reusing {summary}", summary=recent)
            return defer.succeed(recent)
        def cancel(_) -> None:
            if timer.active():
                timer.cancel()

        result = defer.Deferred(cancel)
        timer = self.clock.callLater(self.hold, lambda: self._give(result, None, timer))

        def early(summary: NatSummary) -> None:
            self._give(result, summary, timer)

        self.probes += 1
        running = self.probe(early)
        running.addCallbacks(self._complete, self._probe_failed)
        running.addBoth(lambda _: self._give(result, None, timer))
        return result

    def _give(self, result: defer.Deferred, summary: Optional[NatSummary], timer) -> None:
        if result.called:
            return
        if timer.active():
            timer.cancel()
        result.callback(self._merge(summary))

    def _merge(self, summary: Optional[NatSummary]) -> NatSummary:
        cached = self.final if self.final is not None and self.clock.seconds() - self.final_at <= self.ttl else None
        if summary is None or not summary.known:
            return cached or summary or UNKNOWN_NAT
        if summary.filtering == UNKNOWN and cached is not None and cached.mapping == summary.mapping:
            summary = summary._replace(filtering=cached.filtering)
        return summary

    def _complete(self, report) -> None:
        if report.summary is not None and report.summary.known:
            self.final, self.final_at = report.summary, self.clock.seconds()
            self.log.debug("NAT: {summary}", summary=report.summary)
            if self.cache is not None:
                self.cache.store(self.key, report.summary, self.final_at)

    def _probe_failed(self, failure) -> None:
        self.log.debug("join-time NAT probe failed: {reason}", reason=failure.getErrorMessage())
