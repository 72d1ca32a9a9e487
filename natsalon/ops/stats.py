"""Counters the daemon keeps (what was answered, dropped and why)."""

from __future__ import annotations

from collections import Counter


class Stats(Counter):
    """A :class:`collections.Counter` of event names.  The hot path keeps its
    own plain integer counters and folds them in here (see
    ``ReflectorProtocol.flush_stats``), so reading stats is cheap and
    counting costs almost nothing per packet."""

    def summary(self) -> str:
        return ", ".join("%s=%d" % kv for kv in sorted(self.items())) or "nothing"
