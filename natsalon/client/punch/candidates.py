"""Candidates of the peer, the local sockets we probe them from, and the
state of each (local socket, candidate) pair.  No clock, no socket: plain
data and one transition table.

A pair moves on four events (columns) from its state (rows); ``in``/``out``
is the direction a one-way success knows about::

                     probe sent    send failed   request of the peer   response to our probe
    WAITING          IN_PROGRESS   FAILED        ONE_WAY(in)           ONE_WAY(out)
    IN_PROGRESS      IN_PROGRESS   FAILED        ONE_WAY(in)           ONE_WAY(out)
    ONE_WAY(in)      ONE_WAY(in)   FAILED        ONE_WAY(in)           VERIFIED
    ONE_WAY(out)     ONE_WAY(out)  FAILED        VERIFIED              ONE_WAY(out)
    VERIFIED         VERIFIED      VERIFIED      VERIFIED              VERIFIED
    FAILED           FAILED        FAILED        ONE_WAY(in)           ONE_WAY(out)

(``ONE_WAY`` is :attr:`PairState.SUCCEEDED_ONE_WAY`.)  A verified pair stays
verified (whether it still works is the connection's keepalives' business);
a failed pair is probed no more and no longer delays the choice, but a valid
message of the peer through it proves the route works after all and revives
it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Callable, Dict, Optional, Tuple

from natsalon.stun import Address

LAN = "lan"  #: :attr:`Path.kind <natsalon.client.punch.Path.kind>` of a host candidate
DIRECT = "direct"  #: :attr:`Path.kind <natsalon.client.punch.Path.kind>` of every other candidate
#: :attr:`Path.kind <natsalon.client.punch.Path.kind>` of a path through a TURN relay (either
#: side's: the peer's relayed address as candidate, or our allocation as local socket)
RELAY = "relay"


class CandidateKind(str, Enum):
    """Where a candidate address of the peer comes from."""

    HOST = "host"  #: an address of the peer's own interfaces (its LAN), from the salon
    SRFLX = "srflx"  #: the peer's public endpoint as the salon saw it
    PRFLX = "prflx"  #: learnt from the source of a valid probe of the peer (peer-reflexive)
    PREDICTED = "predicted"  #: a guessed port of the peer's NAT (port prediction, birthday punching)
    RELAY = "relay"  #: the peer's relayed address (a TURN allocation)

    @property
    def path_kind(self) -> str:
        """:data:`LAN` for host candidates, :data:`RELAY` for relayed ones,
        :data:`DIRECT` for the others."""
        return LAN if self is CandidateKind.HOST else RELAY if self is CandidateKind.RELAY else DIRECT

    @property
    def rank(self) -> int:
        """Preference among verified pairs, lowest first (then lowest RTT)."""
        return _RANK[self]


_RANK = {CandidateKind.HOST: 0, CandidateKind.SRFLX: 1, CandidateKind.PRFLX: 1, CandidateKind.PREDICTED: 1,
         CandidateKind.RELAY: 2}

#: kinds the schedule probes every interval; peer-reflexive candidates are
#: probed only as triggered checks (each answers a fresh request of the peer)
SCHEDULED = frozenset(CandidateKind) - {CandidateKind.PRFLX}


class PairState(str, Enum):
    WAITING = "waiting"  #: not probed yet
    IN_PROGRESS = "in-progress"  #: probed, nothing valid heard through it yet
    SUCCEEDED_ONE_WAY = "one-way"  #: one direction proven (see :attr:`CandidatePair.one_way`)
    VERIFIED = "verified"  #: a response to our probe came from it, and a probe of the peer did
    FAILED = "failed"  #: sending to it failed (no route), nothing proven


class Direction(str, Enum):
    INBOUND = "in"  #: a valid probe (request) of the peer came through the pair
    OUTBOUND = "out"  #: a valid response to our probe came through the pair


class PairEvent(str, Enum):
    PROBE_SENT = "probe-sent"
    SEND_FAILED = "send-failed"
    REQUEST = "request"  #: a fresh valid request of the peer came through the pair
    RESPONSE = "response"  #: a valid response to a probe sent through the pair came back through it


_W, _P, _1, _V, _F = (PairState.WAITING, PairState.IN_PROGRESS, PairState.SUCCEEDED_ONE_WAY, PairState.VERIFIED,
                      PairState.FAILED)
_IN, _OUT = Direction.INBOUND, Direction.OUTBOUND
_COLUMNS = (PairEvent.PROBE_SENT, PairEvent.SEND_FAILED, PairEvent.REQUEST, PairEvent.RESPONSE)
_ROWS: Dict[Tuple[PairState, Optional[Direction]], tuple] = {
    # (state, known direction):  probe sent    send failed   request        response
    (_W, None):                 ((_P, None),  (_F, None),   (_1, _IN),     (_1, _OUT)),
    (_P, None):                 ((_P, None),  (_F, None),   (_1, _IN),     (_1, _OUT)),
    (_1, _IN):                  ((_1, _IN),   (_F, None),   (_1, _IN),     (_V, None)),
    (_1, _OUT):                 ((_1, _OUT),  (_F, None),   (_V, None),    (_1, _OUT)),
    (_V, None):                 ((_V, None),  (_V, None),   (_V, None),    (_V, None)),
    (_F, None):                 ((_F, None),  (_F, None),   (_1, _IN),     (_1, _OUT)),
}
#: (state, one_way, event) -> (state, one_way): the table above, as data
PAIR_TRANSITIONS: Dict[Tuple[PairState, Optional[Direction], PairEvent], Tuple[PairState, Optional[Direction]]] = {
    (state, known, event): row[i] for (state, known), row in _ROWS.items() for i, event in enumerate(_COLUMNS)
}


class LocalSocket:
    """A local UDP socket the puncher sends from: a ``send(data, addr)``
    callable (which may raise :class:`OSError`) and a name for the logs.
    Compared by identity: two sockets are two sockets even with the same
    callable."""

    def __init__(self, send: Callable[[bytes, tuple], None], name: str = "default",
                 relayed: Optional[Tuple[str, int]] = None) -> None:
        self.send = send
        self.name = name
        #: the TURN server when this "socket" is a relay allocation (its
        #: pairs are relayed paths whatever the candidate's kind)
        self.relayed = relayed

    def __repr__(self) -> str:
        return "<LocalSocket %s>" % self.name


@dataclass(frozen=True)
class Candidate:
    address: Address
    kind: CandidateKind


@dataclass(eq=False)
class CandidatePair:
    """A candidate of the peer as probed from one local socket."""

    local: LocalSocket
    candidate: Candidate
    state: PairState = PairState.WAITING
    one_way: Optional[Direction] = None  #: the proven direction while SUCCEEDED_ONE_WAY
    rtt: Optional[float] = None  #: smoothed, from responses to our probes
    last_heard: float = -1.0  #: last valid message of the peer through the pair
    last_probe: float = -1.0  #: last probe we sent through the pair

    @property
    def address(self) -> Address:
        return self.candidate.address

    @property
    def kind(self) -> CandidateKind:
        return self.candidate.kind

    @property
    def verified(self) -> bool:
        return self.state is PairState.VERIFIED

    @property
    def relayed(self) -> bool:
        """Through a TURN relay (the peer's, or ours)?"""
        return self.kind is CandidateKind.RELAY or self.local.relayed is not None

    @property
    def path_kind(self) -> str:
        return RELAY if self.relayed else self.kind.path_kind

    @property
    def rank(self) -> int:
        """Preference among verified pairs, lowest first: relayed pairs last."""
        return CandidateKind.RELAY.rank if self.relayed else self.kind.rank

    @property
    def scheduled(self) -> bool:
        """Does the punching schedule probe it?"""
        return self.kind in SCHEDULED and self.state in (_W, _P, _1)

    @property
    def pending(self) -> bool:
        """May it still verify (neither verified nor failed)?"""
        return self.state in (_W, _P, _1)

    def apply(self, event: PairEvent) -> PairState:
        """Move along :data:`PAIR_TRANSITIONS`; returns the new state."""
        self.state, self.one_way = PAIR_TRANSITIONS[self.state, self.one_way, event]
        return self.state

    def heard(self, event: PairEvent, now: float, rtt: Optional[float] = None) -> None:
        """A valid request or response of the peer came through the pair."""
        self.apply(event)
        self.last_heard = now
        if rtt is not None:
            self.rtt = rtt if self.rtt is None else 0.8 * self.rtt + 0.2 * rtt
