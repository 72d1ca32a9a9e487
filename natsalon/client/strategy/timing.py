"""When to fire: the round trip to the salon, and the moment both sides of
a predicted or birthday pair start punching (as libp2p's DCUtR does, with
the salon as the relay that measures nothing itself).

Why ``(max(rtt_A, rtt_B) - rtt_X) / 2``.  The salon sends both
introductions at one instant ``T`` (the newcomer's as the answer to its
JOIN, the waiting member's as an indication pushed while it handles that
JOIN), so side X holds its introduction at ``T + rtt_X / 2`` (half its
round trip to the salon: the one-way delay, taken as symmetric).  The
latest of the two has it at ``T + max(rtt_A, rtt_B) / 2``; if each side
fires then, both NATs open their new mappings at the same moment and
neither side's first probes meet a NAT that has not opened its mapping
yet.  So X waits ``(max(rtt_A, rtt_B) - rtt_X) / 2`` after its
introduction: the nearer side waits, the farther one fires at once.  Each
side uses the two values carried in the JOINs the salon handed over (its
own as it sent it, the peer's as verified with k_join), so both compute
the same instant.  An unknown value (an older peer) means no wait, and the
wait is capped (``cap``): a value carried in a JOIN should not hold
punching up for long.

The round trip is sampled from the JOIN transactions (request to answer),
only from first tries (Karn: an answer after a retransmission cannot say
which send it answers) and smoothed like TCP's SRTT (RFC 6298: 1/8 of each
new sample).  Pure: no clock, no socket.
"""

from __future__ import annotations

from typing import Optional


def first_try(elapsed: float, rtt: float, rto: float) -> bool:
    """Whether an answer came to the request's first send: ``elapsed``
    since the request was made, ``rtt`` since its latest send.  Every send
    is scheduled when the request is made, the second ``rto`` after it, so
    the answer to a retransmission has ``elapsed - rtt >= rto``; anything
    less is the first send's, even one a busy reactor sent late (a
    tenth of ``rto`` is left for rounding)."""
    return elapsed - rtt < rto * 0.9


class SalonRtt:
    """The smoothed round trip to the salon, in seconds (None: no sample yet)."""

    def __init__(self, gain: float = 0.125) -> None:
        self.gain = gain
        self.value: Optional[float] = None
        self.samples = 0

    def sample(self, rtt: float) -> None:
        if rtt < 0:
            return
        self.samples += 1
        self.value = rtt if self.value is None else self.value + self.gain * (rtt - self.value)


#: waits shorter than this are not worth a timer (and no timer is that exact)
MIN_WAIT = 0.001


def fire_wait(mine: Optional[float], peer: Optional[float], cap: float = 0.5) -> float:
    """Seconds to wait after our introduction before the first shot, for
    our round trip to the salon ``mine`` and the peer's ``peer`` (see the
    module docstring); 0 when either is unknown or the wait is under
    :data:`MIN_WAIT`."""
    if mine is None or peer is None:
        return 0.0
    wait = min(cap, max(0.0, (max(mine, peer) - mine) / 2))
    return wait if wait >= MIN_WAIT else 0.0
