"""A per-source-IP request limit with bounded memory.

A fixed window: each source may send ``limit`` requests per window; the
owner calls :meth:`SourceLimiter.new_window` once a window (a timer in the
protocol), which forgets every count.  At most ``max_sources`` sources are
tracked in a window; sources beyond that share one overflow budget of
``overflow_limit`` requests, so a flood from many (spoofed) addresses costs
bounded memory and cannot exhaust the answers for sources already seen.

An IPv6 source is counted by its /64 (:func:`source_key`): one host
usually holds a whole /64 and may pick any address in it (privacy
addresses), so a per-address limit would not limit it.
"""

from __future__ import annotations

import socket

#: the first 12 bytes of an IPv4-mapped IPv6 address (::ffff:a.b.c.d)
_V4_MAPPED = b"\x00" * 10 + b"\xff\xff"


def source_key(host: str):
    """What the limit counts for source ``host``: an IPv4 address itself,
    an IPv6 address's /64 (its first 8 bytes; an IPv4-mapped one: the IPv4
    address)."""
    if ":" not in host:
        return host
    try:
        raw = socket.inet_pton(socket.AF_INET6, host.split("%", 1)[0])
    except OSError:
        return host
    if raw[:12] == _V4_MAPPED:
        return socket.inet_ntop(socket.AF_INET, raw[12:])
    return raw[:8]


class SourceLimiter:
    def __init__(self, limit: int, max_sources: int = 65536, overflow_limit: int = 0) -> None:
        if limit <= 0:
            raise ValueError("limit must be positive (use no limiter to disable)")
        self.limit = limit
        self.max_sources = max_sources
        self.overflow_limit = overflow_limit or limit * 10
        self._counts: dict = {}
        self._overflow = 0

    def allow(self, source: str) -> bool:
        """Whether a request from ``source`` (an IP address) is answered
        in this window; counts it."""
        if ":" in source:
            source = source_key(source)
        counts = self._counts
        n = counts.get(source)
        if n is None:
            if len(counts) >= self.max_sources:
                self._overflow += 1
                return self._overflow <= self.overflow_limit
            counts[source] = 1
            return True
        if n >= self.limit:
            return False
        counts[source] = n + 1
        return True

    def new_window(self) -> None:
        self._counts.clear()
        self._overflow = 0

    def __len__(self) -> int:
        return len(self._counts)
