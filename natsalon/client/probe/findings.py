"""What a probe run has found so far: the tests' results, the port samples,
which tests ran or could not, and what the server got wrong.

No sockets and no clock: the tests (:mod:`.measure`, through
:class:`~.run.ProbeRun`) fill a :class:`Findings` as answers arrive,
checking each answer against the server's advertised addresses here; the
report (:mod:`.report`) is built from it once every test is over.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

from twisted.logger import Logger

from natsalon.stun import Address, Attr, Message

if TYPE_CHECKING:
    from natsalon.client.probe.sockets import ProbeSocket

log = Logger()


@dataclass(eq=False)
class Bound:
    """A socket's binding towards the primary: its first answer."""

    sock: "ProbeSocket"
    mapped: Address
    rtt: float
    at: float  #: when the answer came (clock seconds)
    msg: Message
    source: Address


@dataclass
class Findings:
    """The record of one run against the server's ``primary`` address.

    ``results`` maps a test to what it measured: ``"R"``, ``"S1"``... a
    :class:`Bound` (or None: no answer); ``"m1"``..``"m4"`` the mapped
    addresses of the mapping test; ``"F1"``/``"F2"`` whether the filtering
    answer arrived; ``"hairpin"`` a bool; ``"lifetime"`` ``(alive_for,
    dead_after)`` idle seconds.
    """

    primary: Address
    results: Dict[str, object] = field(default_factory=dict)
    samples: List[Tuple[int, int]] = field(default_factory=list)  #: (local port, mapped port)
    tested: List[str] = field(default_factory=list)
    untested: List[str] = field(default_factory=list)  #: "test: reason"
    inconsistencies: List[str] = field(default_factory=list)
    other: Optional[Address] = None  #: the server's OTHER-ADDRESS
    rfc5780_off: bool = False  #: the server refused CHANGE-REQUEST (420)
    rtt: Optional[float] = None  #: the shortest round trip seen

    def inconsistent(self, text: str) -> None:
        if text not in self.inconsistencies:
            log.info("server inconsistency: {text}", text=text)
            self.inconsistencies.append(text)

    def cannot(self, test: str, reason: str) -> None:
        entry = "%s: %s" % (test, reason)
        if entry not in self.untested:
            self.untested.append(entry)

    def note_rtt(self, rtt: float) -> None:
        if rtt >= 0 and (self.rtt is None or rtt < self.rtt):
            self.rtt = rtt

    def note_other(self, other: Optional[Address]) -> None:
        """The OTHER-ADDRESS of an answer: the first one is kept, a different
        later one is an inconsistency."""
        if other is None:
            return
        if self.other is None:
            self.other = other
        elif other != self.other:
            self.inconsistent("OTHER-ADDRESS changes between answers: %s, %s" % (self.other, other))

    def has_alt_ip(self) -> bool:
        return self.other is not None and self.other.host != self.primary.host

    def grid(self) -> Dict[Address, Address]:
        """address -> the OTHER-ADDRESS it should advertise (RFC 5780 grid)."""
        o, p = self.other, self.primary
        if o is None:
            return {}
        a01, a10 = Address(p.host, o.port), Address(o.host, p.port)
        return {p: o, o: p, a01: a10, a10: a01}

    def check_response(self, label: str, msg: Message, source: Address,
                       expect_from: Optional[Address]) -> None:
        """Note where an answer's RESPONSE-ORIGIN, source and OTHER-ADDRESS
        disagree with each other or with the grid."""
        origin = msg.get(Attr.RESPONSE_ORIGIN, msg.get(Attr.SOURCE_ADDRESS))
        if origin is not None and origin != source:
            self.inconsistent("%s: RESPONSE-ORIGIN %s, but the answer came from %s" % (label, origin, source))
        if expect_from is not None and source != expect_from:
            self.inconsistent("%s: answer from %s, expected from %s" % (label, source, expect_from))
        other = msg.get(Attr.OTHER_ADDRESS, msg.get(Attr.CHANGED_ADDRESS))
        want = self.grid().get(source)
        if other is not None and want is not None and other != want:
            self.inconsistent("%s: OTHER-ADDRESS %s from %s, expected %s" % (label, other, source, want))
