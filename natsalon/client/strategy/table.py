"""The decision table: from the two NAT summaries of a pair, the punching
strategy both sides choose.  Pure: no clock, no socket.

Each side's summary (:class:`natsalon.wire.NatSummary`, carried in its
authenticated JOIN) is first reduced to a **class**:

=========  =====================================================================
class      summary
=========  =====================================================================
unknown    not known (no probe, UDP blocked, an old peer), or mapping unknown
easy       endpoint-independent mapping, filtering endpoint-independent or
           address-dependent (open host, full cone, restricted cone)
filtering  endpoint-independent mapping, filtering address-and-port-dependent
           or unknown (port-restricted cone, symmetric UDP firewall)
seq        mapping not endpoint-independent, sequential (or preserving)
           port allocation: the next flows' ports can be predicted
random     mapping not endpoint-independent, random or unknown allocation
=========  =====================================================================

Then one table, symmetric (``decide(a, b)`` and ``decide(b, a)`` name the
same strategy, with the roles swapped)::

                easy    filtering   seq         random      unknown
    easy        plain   plain       plain       plain       plain
    filtering   plain   plain       predicted   birthday    plain
    seq         plain   predicted   predicted   none        plain
    random      plain   birthday    none        none        plain
    unknown     plain   plain       plain       plain       plain

- ``plain``: the candidates from the salon, nothing more.  Wherever one
  side is ``easy`` its filter lets the other's new mapping in; where a
  side is unknown nothing better is known.
- ``predicted``: a ``filtering`` side **sweeps** the seq side's next ports
  (``base + step*k`` for k = 1, 2, ..., widening windows: 16, 32, 64, ...
  256 ports, at a bounded rate); the seq side punches plainly (its one new
  flow to the peer's public endpoint takes one of those ports).  Seq
  against seq: each side probes the other's next ``window`` ports
  before anything else, one side in order and the other every second port,
  so some flow of one side meets a flow of the other even when other flows
  took ports in between (:func:`ordered_ports`).
- ``birthday``: the ``random`` side **sprays**: it opens many extra sockets,
  each sending to the peer's public endpoint (mappings whose filter admits
  the peer); the ``filtering`` side **sweeps** random ports of the random
  side's public IP at a bounded rate, within a packet budget and a deadline.
- ``none``: no practical direct path (a random symmetric NAT against any
  symmetric NAT): punch plainly (a LAN path may still exist) for a short
  time and fail with the reason, well before the punch timeout.

Where the filtering side's filter is not known yet (its filtering test had
not answered when it joined: it may well be easy), ``predicted`` and
``birthday`` start as ``plain`` and the extra work begins only after a
short head start without a verified path.
"""

from __future__ import annotations

import enum
from typing import NamedTuple, Optional, Tuple

from natsalon.wire.nat import AD, EI, PRESERVING, SEQUENTIAL, UNKNOWN, NatSummary


class Strategy(str, enum.Enum):
    PLAIN = "plain"
    PREDICTED = "predicted"
    BIRTHDAY = "birthday"
    NONE = "none"


class NatClass(str, enum.Enum):
    UNKNOWN = "unknown"
    EASY = "easy"
    FILTERING = "filtering"
    SEQ = "seq"
    RANDOM = "random"


class Role(str, enum.Enum):
    """What one side does beyond plain punching."""

    PLAIN = "plain"  #: nothing more
    SWEEP_SEQUENTIAL = "sweep-sequential"  #: probe the peer's predicted ports, widening windows
    ORDERED = "ordered"  #: probe the peer's next ports in order, before anything else (seq vs seq)
    SWEEP_RANDOM = "sweep-random"  #: probe random ports of the peer's public IP
    SPRAY = "spray"  #: open many sockets, each probing the peer's public endpoint
    GIVE_UP = "give-up"  #: plain for a short while, then "no direct path"


def classify(s: NatSummary) -> NatClass:
    if not s.known or s.mapping == UNKNOWN:
        return NatClass.UNKNOWN
    if s.mapping == EI:
        return NatClass.EASY if s.filtering in (EI, AD) else NatClass.FILTERING
    if s.allocation in (SEQUENTIAL, PRESERVING):
        return NatClass.SEQ
    return NatClass.RANDOM


_P, _PR, _B, _N = Strategy.PLAIN, Strategy.PREDICTED, Strategy.BIRTHDAY, Strategy.NONE
_ORDER = (NatClass.EASY, NatClass.FILTERING, NatClass.SEQ, NatClass.RANDOM, NatClass.UNKNOWN)
_ROWS = (
    # easy  filtering  seq  random  unknown
    (_P,    _P,        _P,  _P,     _P),   # easy
    (_P,    _P,        _PR, _B,     _P),   # filtering
    (_P,    _PR,       _PR, _N,     _P),   # seq
    (_P,    _B,        _N,  _N,     _P),   # random
    (_P,    _P,        _P,  _P,     _P),   # unknown
)
#: (my class, peer's class) -> strategy: the table above, as data
TABLE = {(a, b): _ROWS[i][j] for i, a in enumerate(_ORDER) for j, b in enumerate(_ORDER)}

#: (strategy, my class) -> my role
_ROLES = {
    (_PR, NatClass.FILTERING): Role.SWEEP_SEQUENTIAL,
    (_B, NatClass.FILTERING): Role.SWEEP_RANDOM,
    (_B, NatClass.RANDOM): Role.SPRAY,
}

#: why there is no direct path, by the pair of classes (either order)
_NONE_REASONS = {
    frozenset((NatClass.RANDOM,)): "both NATs are symmetric with random port allocation",
    frozenset((NatClass.RANDOM, NatClass.SEQ)): "a symmetric NAT with random port allocation against a symmetric"
                                                " NAT (the sequential side cannot keep one port for birthday"
                                                " probes)",
}


class Plan(NamedTuple):
    """What this side does: the pair's strategy and this side's role in it."""

    strategy: Strategy
    role: Role
    mine: NatClass
    peer: NatClass
    reason: Optional[str] = None  #: why there is no direct path (strategy none)


def decide(mine: NatSummary, peer: NatSummary) -> Plan:
    """The plan for the side whose summary is ``mine``; the peer, calling
    ``decide(peer, mine)``, gets the same strategy."""
    a, b = classify(mine), classify(peer)
    strategy = TABLE[a, b]
    if strategy is _N:
        reason = "no direct path: %s; a relay is needed" % _NONE_REASONS[frozenset((a, b))]
        return Plan(strategy, Role.GIVE_UP, a, b, reason)
    if strategy is _PR and a is NatClass.SEQ:
        role = Role.ORDERED if b is NatClass.SEQ else Role.PLAIN
    else:
        role = _ROLES.get((strategy, a), Role.PLAIN)
    return Plan(strategy, role, a, b)


class Pending(str, enum.Enum):
    """What a side does while one summary of the pair is not known yet."""

    DECIDED = "decided"  #: both known (or the plan cannot depend on the missing one): punch by the plan
    PLAIN = "plain"  #: punch plainly meanwhile, add the strategy's work once both are known
    HOLD = "hold"  #: send nothing until both are known (or a deadline): the plan may need our first flows


def early(mine: NatSummary, peer: NatSummary) -> Tuple[Optional[Plan], Pending]:
    """While the pair's summaries come in (a member's first JOIN says
    ``pending`` and it publishes its summary, once, in an updated JOIN after
    its join-time probe; both sides end up with the same pair): the plan if
    it is already certain, and what to do meanwhile.

    - neither pending: :func:`decide` (an unknown NAT that is not pending
      is final: an old peer, a failed probe).
    - one pending, and every class it may turn out to be gives the same
      strategy against the other (an easy side): that plan at once.
    - the other side is ``seq`` or ``random``: HOLD.  Its strategy may be
      seq-against-seq (exact prediction: each side's first new flows must
      be the predicted ones, none spent on plain probes) or none (no
      direct path: said quickly, the relay at once).
    - otherwise (a ``filtering`` or unknown side, or both pending): PLAIN
      meanwhile; predicted and birthday tolerate plain probes sent before
      them.
    """
    if not mine.pending and not peer.pending:
        return decide(mine, peer), Pending.DECIDED
    if mine.pending and peer.pending:
        return None, Pending.PLAIN
    known = classify(peer if mine.pending else mine)
    if len({TABLE[known, c] for c in NatClass}) == 1:
        return decide(mine, peer), Pending.DECIDED
    if known in (NatClass.SEQ, NatClass.RANDOM):
        return None, Pending.HOLD
    return None, Pending.PLAIN


def ordered_ports(peer: NatSummary, public_port: int, count: int, shifted: bool) -> Tuple[int, ...]:
    """Seq against seq: the peer's ports our k-th new flow probes, k = 1 ..
    ``count``.  One side (``shifted`` False: the lower nonce) probes the
    peer's next ports in order, ``base + step*k``; the other every second
    one, ``base + step*(2k - 1)``.  Both NATs give each new flow the next
    port, but other flows may take some between a side's probe and its
    shots: dA ports on the in-order side, dB on the other.  The in-order
    side's flow i then leaves from the port after dA + i and goes to the
    peer's port i; the other's flow k leaves from dB + k and goes to 2k - 1.
    Flow i = dA + 2dB + 1 and flow k = dA + dB + 1 are each other's
    destination: they meet, for any drifts with dA + 2dB < ``count``.
    Without drift the first flows meet, as exact prediction did."""
    if not shifted:
        return predicted_ports(peer, public_port, count)
    base = max(peer.last_port or 0, public_port)
    step = peer.step or 1
    return tuple(p for p in (base + step * (2 * k - 1) for k in range(1, count + 1)) if 0 < p <= 0xFFFF)


def predicted_ports(peer: NatSummary, public_port: int, count: int, start: int = 1) -> Tuple[int, ...]:
    """The peer's next ``count`` ports from the ``start``-th on: after the
    highest it was seen to use (its summary's last mapped port, or its
    public endpoint's port if later), at its step; within 1..65535."""
    base = max(peer.last_port or 0, public_port)
    step = peer.step or 1
    return tuple(p for p in (base + step * k for k in range(start, start + count)) if 0 < p <= 0xFFFF)
