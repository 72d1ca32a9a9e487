"""NS-NAT: what a client knows of its own NAT, carried in its JOIN.

The peer reads it from the JOIN the salon hands over (verbatim, so it is
covered by the JOIN's MESSAGE-INTEGRITY-SHA256 made with k_join: the salon
cannot alter it), and both sides choose the same punching strategy from
the two summaries (:mod:`natsalon.client.strategy`).  The attribute is
comprehension-optional (0xC0AA): a peer or salon that does not know it
ignores it, and a JOIN without it means "unknown".

Eight bytes::

    version (1)   flags (1: bit 0 known, bit 1 pending)   mapping (1)   filtering (1)
    allocation (1)   step (1, 0 = unknown, capped at 255)   last mapped port (2)

pending: the member's join-time probe still runs and it will publish its
summary in an updated JOIN (its first JOIN does not wait for the probe);
without it an unknown NAT is final (no probe, or the probe failed).
mapping / filtering: 0 unknown, 1 endpoint-independent, 2 address-dependent,
3 address-and-port-dependent.  allocation: 0 unknown, 1 preserving,
2 sequential, 3 random.

NS-SALON-RTT (0xC0AD, comprehension-optional, also covered by the JOIN's
integrity): the member's smoothed round trip to the salon, four bytes, in
microseconds (0 or absent: unknown; a longer value is read by its first
four bytes).  The peer uses it to time the first shot of a predicted or
birthday strategy (:mod:`natsalon.client.strategy.timing`).  No sockets,
no clock.
"""

from __future__ import annotations

import struct
from typing import NamedTuple, Optional

from natsalon.wire.common import WireError

#: the STUN attribute type of the summary (comprehension-optional range)
NS_NAT = 0xC0AA
VERSION = 1
SIZE = 8
_FORMAT = struct.Struct("!BBBBBBH")
_KNOWN = 0x1
_PENDING = 0x2

#: behaviour names, as :mod:`natsalon.client.probe.classify` spells them
UNKNOWN = "unknown"
EI = "endpoint-independent"
AD = "address-dependent"
APD = "address-and-port-dependent"
BEHAVIOURS = (UNKNOWN, EI, AD, APD)
#: port allocation names
PRESERVING, SEQUENTIAL, RANDOM = "preserving", "sequential", "random"
ALLOCATIONS = (UNKNOWN, PRESERVING, SEQUENTIAL, RANDOM)


class NatSummary(NamedTuple):
    """A client's NAT as its join-time probe saw it."""

    known: bool = False
    mapping: str = UNKNOWN
    filtering: str = UNKNOWN
    allocation: str = UNKNOWN
    step: Optional[int] = None  #: port step of sequential allocation
    last_port: Optional[int] = None  #: the highest mapped port the probe saw
    pending: bool = False  #: not known yet: the member publishes it in an updated JOIN

    def to_json(self) -> dict:
        return {"known": self.known, "mapping": self.mapping, "filtering": self.filtering,
                "allocation": self.allocation, "step": self.step, "last_port": self.last_port}


UNKNOWN_NAT = NatSummary()
#: what a member's JOIN says while its join-time probe runs
PENDING_NAT = NatSummary(pending=True)


def pack_nat(summary: NatSummary) -> bytes:
    for value, names in ((summary.mapping, BEHAVIOURS), (summary.filtering, BEHAVIOURS),
                         (summary.allocation, ALLOCATIONS)):
        if value not in names:
            raise WireError("NS-NAT: unknown value %r" % (value,))
    step = min(255, max(0, summary.step or 0))
    port = summary.last_port or 0
    if not 0 <= port <= 0xFFFF:
        raise WireError("NS-NAT: port %d out of range" % port)
    flags = (_KNOWN if summary.known else 0) | (_PENDING if summary.pending and not summary.known else 0)
    return _FORMAT.pack(VERSION, flags, BEHAVIOURS.index(summary.mapping),
                        BEHAVIOURS.index(summary.filtering), ALLOCATIONS.index(summary.allocation), step, port)


def unpack_nat(raw: Optional[bytes]) -> NatSummary:
    """The summary in an NS-NAT value; None (no attribute) is unknown.  A
    later version with a longer value is read by its first eight bytes."""
    if raw is None:
        return UNKNOWN_NAT
    if len(raw) < SIZE:
        raise WireError("NS-NAT of %d bytes (want %d)" % (len(raw), SIZE))
    version, flags, mapping, filtering, allocation, step, port = _FORMAT.unpack_from(raw)
    if version < VERSION:
        raise WireError("NS-NAT version %d" % version)
    if mapping >= len(BEHAVIOURS) or filtering >= len(BEHAVIOURS) or allocation >= len(ALLOCATIONS):
        raise WireError("NS-NAT with an unknown code")
    return NatSummary(bool(flags & _KNOWN), BEHAVIOURS[mapping], BEHAVIOURS[filtering], ALLOCATIONS[allocation],
                      step or None, port or None, bool(flags & _PENDING) and not flags & _KNOWN)


#: the STUN attribute type of the member's round trip to the salon
NS_SALON_RTT = 0xC0AD
_RTT = struct.Struct("!I")


def pack_rtt(seconds: float) -> bytes:
    """An NS-SALON-RTT value (microseconds, capped at 2**32 - 1)."""
    return _RTT.pack(min(0xFFFFFFFF, max(0, int(round(seconds * 1e6)))))


def unpack_rtt(raw: Optional[bytes]) -> Optional[float]:
    """Seconds in an NS-SALON-RTT value; None when absent or 0."""
    if raw is None:
        return None
    if len(raw) < _RTT.size:
        raise WireError("NS-SALON-RTT of %d bytes (want %d)" % (len(raw), _RTT.size))
    micros, = _RTT.unpack_from(raw)
    return micros / 1e6 if micros else None
