"""What a probe run may do and how long it waits: :class:`ProbeConfig`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

from natsalon.stun.client import RetransmitPolicy

DEFAULT_LIFETIME_INTERVALS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 45, 60, 90, 120, 180, 240, 300)


@dataclass(frozen=True)
class ProbeConfig:
    #: longest wait for the server's first answer (seconds): the bound for "udp-blocked"
    timeout: float = 2.0
    #: first retransmission timeout towards the primary address (doubling)
    first_rto: float = 0.1
    #: floor of the retransmission timeout of the tests once the RTT is known
    min_rto: float = 0.04
    #: sends of a test that may get no answer (RFC 8489 Rc)
    quick_sends: int = 6
    #: extra fresh sockets for port-allocation samples
    port_samples: int = 3
    hairpin: bool = False
    lifetime: bool = False
    #: idle intervals tried for the binding lifetime (seconds, increasing)
    lifetime_intervals: Tuple[float, ...] = DEFAULT_LIFETIME_INTERVALS
    #: longest idle interval tried
    lifetime_max: float = 300.0

    def first_policy(self) -> RetransmitPolicy:
        """Sends at 0, rto, 3 rto, 7 rto... while before ``timeout``; gives up at ``timeout``."""
        offsets, t, rto = [], 0.0, self.first_rto
        while t < self.timeout and len(offsets) < 16:
            offsets.append(t)
            t += rto
            rto *= 2
        return RetransmitPolicy(rto=self.first_rto, sends=len(offsets), max_rto=1e9,
                                last_wait=(self.timeout - offsets[-1]) / self.first_rto)

    def quick_policy(self, rtt: Optional[float]) -> RetransmitPolicy:
        """``quick_sends`` sends from an RTO of twice the RTT (at least
        ``min_rto``), capped at 4 RTO, then a last wait of 4 RTO: about 0.76 s
        on a LAN, and a wrong "no answer" needs all sends or answers lost."""
        rto = max(self.min_rto, 2 * (rtt if rtt is not None else self.first_rto))
        return RetransmitPolicy(rto=rto, sends=self.quick_sends, last_wait=4.0, max_rto=4 * rto)
