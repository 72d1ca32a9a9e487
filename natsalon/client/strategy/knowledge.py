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
their schedule (about 0.76 s on a LAN).  The complete result
is kept ``ttl`` seconds: a later join whose early summary does not know
the filtering yet takes it from there.  The last mapped port is always
fresh (port prediction needs it), so every join probes.
"""

from __future__ import annotations

from typing import Callable, Optional

from twisted.internet import defer
from twisted.logger import Logger

from natsalon.wire.nat import UNKNOWN, UNKNOWN_NAT, NatSummary


class NatKnowledge:
    """``probe(on_early)`` starts a probe and returns a Deferred firing
    with its report (a :class:`~natsalon.client.probe.ProbeReport`) or a
    failure; ``on_early(summary)`` is called once, early."""

    log = Logger()

    def __init__(self, clock, probe: Callable[[Callable[[NatSummary], None]], defer.Deferred],
                 hold: float = 2.0, ttl: float = 120.0) -> None:
        self.clock = clock
        self.probe = probe
        self.hold = hold
        self.ttl = ttl
        self.final: Optional[NatSummary] = None  #: the last complete result
        self.final_at = -1.0
        self.probes = 0  #: probes started

    def summary(self) -> defer.Deferred:
        """Fires with the summary for the next JOIN (never fails; cancellable)."""
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

    def _probe_failed(self, failure) -> None:
        self.log.debug("join-time NAT probe failed: {reason}", reason=failure.getErrorMessage())
