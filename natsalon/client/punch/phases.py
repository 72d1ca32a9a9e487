"""The puncher's lifecycle: its phases, the one table of their transitions,
what each phase lets a datagram do, and the pending calls each phase owns.
No socket; the clock is injected.

::

    phase           event      -> phase          action
    IDLE            start         PUNCHING       probe every candidate now, arm tick and timeout
                                                 (and choose at once if a pair verified while IDLE)
    PUNCHING        nominate      NOMINATED      arm the LAN grace (a verified non-host pair waits)
    NOMINATED       nominate      NOMINATED      (nothing: the grace already runs)
    PUNCHING        select        KEEPING_ALIVE  fire start()'s Deferred with the best path
    NOMINATED       select        KEEPING_ALIVE  (a host pair verified, or the grace ran out)
    PUNCHING        timeout       FAILED         fail start()'s Deferred with PunchFailed
    NOMINATED       timeout       KEEPING_ALIVE  a verified pair exists: take the best
    IDLE, PUNCHING,
    NOMINATED,
    KEEPING_ALIVE   stop          STOPPED        fail a pending Deferred with CancelledError
    FAILED          stop          FAILED         (nothing: already inert)
    STOPPED         stop          STOPPED        (nothing)

Anything else (``start`` twice, say) raises :class:`PhaseError` before any
action runs.  Pending calls belong to phases (:data:`OWNERS`): ``tick`` and
``timeout`` to PUNCHING and NOMINATED, ``grace`` to NOMINATED; a transition
cancels every call its new phase does not own, so no action has to.

A table rather than an automat machine: most of what the phases decide is
what a datagram of the peer may do (:data:`RULES`), on the hot path; with
automat every datagram would be an input routed through the machine, and
the transitions themselves are these few lines.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Callable, Dict, FrozenSet, Tuple

from twisted.logger import Logger

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall


class Phase(str, Enum):
    IDLE = "idle"  #: built, not started: answers and learns, chooses nothing
    PUNCHING = "punching"  #: probing candidates until a pair verifies or the timeout
    NOMINATED = "nominated"  #: a non-host pair verified; host pairs pending get the LAN grace
    KEEPING_ALIVE = "keeping-alive"  #: a path is selected; answers and verifies keepalive probes
    FAILED = "failed"  #: the timeout ran out with no verified pair: inert
    STOPPED = "stopped"  #: stop() (or start()'s Deferred cancelled): inert


class PhaseEvent(str, Enum):
    START = "start"
    NOMINATE = "nominate"
    SELECT = "select"
    TIMEOUT = "timeout"
    STOP = "stop"


class PhaseError(RuntimeError):
    """An event the current phase has no transition for (a bug of the caller)."""


_I, _P, _N, _K, _F, _S = Phase
#: (phase, event) -> (next phase, name of the Puncher method run after entering it)
TRANSITIONS: Dict[Tuple[Phase, PhaseEvent], Tuple[Phase, str]] = {
    (_I, PhaseEvent.START): (_P, "_begin"),
    (_P, PhaseEvent.NOMINATE): (_N, "_arm_grace"),
    (_N, PhaseEvent.NOMINATE): (_N, "_nothing"),
    (_P, PhaseEvent.SELECT): (_K, "_deliver"),
    (_N, PhaseEvent.SELECT): (_K, "_deliver"),
    (_P, PhaseEvent.TIMEOUT): (_F, "_give_up"),
    (_N, PhaseEvent.TIMEOUT): (_K, "_deliver"),
    (_I, PhaseEvent.STOP): (_S, "_cancel_result"),
    (_P, PhaseEvent.STOP): (_S, "_cancel_result"),
    (_N, PhaseEvent.STOP): (_S, "_cancel_result"),
    (_K, PhaseEvent.STOP): (_S, "_cancel_result"),
    (_F, PhaseEvent.STOP): (_F, "_nothing"),
    (_S, PhaseEvent.STOP): (_S, "_nothing"),
}

#: pending call name -> the phases that own it
OWNERS: Dict[str, FrozenSet[Phase]] = {
    "tick": frozenset({_P, _N}),
    "timeout": frozenset({_P, _N}),
    "grace": frozenset({_N}),
}


@dataclass(frozen=True)
class Rules:
    """What a valid datagram of the peer may do in a phase."""

    active: bool  #: send (answers, probes) and record evidence on pairs; else inert
    learns: bool  #: a request from an unknown source may become a peer-reflexive candidate
    chooses: bool  #: a newly verified pair may end the punching
    connected: bool  #: our probes and answers carry FLAG_CONNECTED


RULES: Dict[Phase, Rules] = {
    _I: Rules(active=True, learns=True, chooses=False, connected=False),
    _P: Rules(active=True, learns=True, chooses=True, connected=False),
    _N: Rules(active=True, learns=True, chooses=True, connected=False),
    _K: Rules(active=True, learns=False, chooses=False, connected=True),
    _F: Rules(active=False, learns=False, chooses=False, connected=False),
    _S: Rules(active=False, learns=False, chooses=False, connected=False),
}


class Lifecycle:
    """The current phase and the pending calls it owns."""

    log = Logger()

    def __init__(self, clock, actions: object) -> None:
        self.clock = clock
        self.actions = actions
        self.phase = Phase.IDLE
        self.calls: Dict[str, "IDelayedCall"] = {}

    @property
    def rules(self) -> Rules:
        return RULES[self.phase]

    def fire(self, event: PhaseEvent) -> None:
        """Take the transition of ``event``: cancel the calls the new phase
        does not own, enter it, run its action."""
        try:
            new, action = TRANSITIONS[self.phase, event]
        except KeyError:
            raise PhaseError("no transition from %s on %s" % (self.phase.value, event.value)) from None
        for name in [n for n in self.calls if new not in OWNERS[n]]:
            call = self.calls.pop(name)
            if call.active():
                call.cancel()
        old, self.phase = self.phase, new
        if old is not new:
            self.log.debug("punch phase {old} -> {new} on {event}", old=old.value, new=new.value,
                           event=event.value)
        getattr(self.actions, action)()

    def owns(self, name: str) -> bool:
        """Does the current phase own the pending call ``name``?"""
        return self.phase in OWNERS[name]

    def call_later(self, name: str, delay: float, f: Callable[[], None]) -> None:
        """Schedule ``f`` as the call ``name`` of the current phase (which must own it)."""
        if not self.owns(name):
            raise PhaseError("%s does not own a %s call" % (self.phase.value, name))
        old = self.calls.get(name)
        if old is not None and old.active():
            old.cancel()
        self.calls[name] = self.clock.callLater(delay, self._run, name, f)

    def _run(self, name: str, f: Callable[[], None]) -> None:
        self.calls.pop(name, None)
        f()
