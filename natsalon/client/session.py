"""The client's lifecycle as one explicit state machine (automat), the
single supervisor behind both :func:`natsalon.connect` and ``twistd
natclient``.

States (the data each one owns, cancelled on every way out)::

    Idle
    Joining       [Attempt: the Joiner's JOIN transaction / cookie exchange]
    Waiting       [Attempt: the same Joiner, polling every second]
    Punching      [Punch: the Puncher probing the peer's candidates, and the
                   Relay racing it (a TURN allocation at the salon, when the
                   introduction carried credentials)]
    Connected     [Live: the verified session and its Keepalive, and the
                   Relay, its Upgrade and its RelayWatch while the path
                   is relayed]
    BackingOff    [IDelayedCall: the retry, after backoff with jitter]
    Stopped

Inputs and transitions::

    Idle         start                 -> Joining
    Joining      _waiting(attempt)     -> Waiting      (the salon registered us)
    Joining      _introduced(intro)    -> Punching     (the peer was already there)
    Waiting      _introduced(intro)    -> Punching
    Joining      _failed(failure)      -> BackingOff   (no salon, refused, peer not verified)
    Waiting      _failed(failure)      -> BackingOff
    Punching     _verified(session)    -> Connected
    Punching     _failed(failure)      -> BackingOff   (PunchFailed)
    Connected    _path_lost(silent)    -> Joining      (re-join at once with a fresh nonce)
    Connected    _peer_left            -> Joining      (the peer said goodbye: re-join at once)
    Punching     _peer_left            -> Joining
    BackingOff   _retry                -> Joining
    any          stop                  -> Stopped      (LEAVE to the salon; goodbye to the peer)
    Stopped      start                 -> Joining
    any          when_connected(n)     -> (same)       a Deferred: the Connection now or
                                                         when next connected; fails after
                                                         n failed attempts in a row, or
                                                         with CancelledError on stop

An upgrade from a relayed path to a direct one is no transition: the
``Connected`` state's Live moves the Connection to the direct pair
(:meth:`Connection.move`: same keys and counters), emits ``upgraded`` and
releases the allocation shortly after.  Nor is a lost relay (the TURN
server restarted): the Live's :class:`~natsalon.client.recovery.RelayWatch`
allocates again, re-signals the new relayed address through the salon
and moves the Connection to the new relayed pair (``relay-lost``, then
``relay-recovered``); only if that fails too does the keepalive end the path.

"Path lost" and "re-joining" are the ``Connected -> Joining`` transition:
the :class:`~natsalon.client.connection.Connection` object stays, only
its path goes and comes back.  ``core.phase`` mirrors the state for
status reports and error messages (never for decisions).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Callable, List, NamedTuple, Optional, Protocol, Sequence, Tuple

from automat import TypeMachineBuilder
from twisted.application.internet import backoffPolicy
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from natsalon import wire
from natsalon.client.connection import Connection
from natsalon.client.demux import ClientSocket
from natsalon.client.errors import SalonUnreachable
from natsalon.client.join import Introduction, Joiner
from natsalon.client.keepalive import Keepalive
from natsalon.client.punch import RELAY, CandidateKind, Path, Puncher
from natsalon.client.punch import Phase as PunchPhase
from natsalon.client.options import TurnServer
from natsalon.client.recovery import RelayWatch
from natsalon.client.relay import Relay, RelayRace, relay_server
from natsalon.client.salons import Salons
from natsalon.client.upgrade import Upgrade
from natsalon.client.strategy import HardNat, Role, Runner, SalonRtt, Strategy, coordinated_wait, decide
from natsalon.client.strategy.exchange import OwnSummary, SummaryExchange
from natsalon.client.strategy.runner import Kickoff
from natsalon.client.strategy.table import Pending, early
from natsalon.wire.nat import PENDING_NAT
from natsalon.client.errors import PunchFailed
from natsalon.crypto.secret import RoomKeys, SessionKeys, new_nonce, session_keys
from natsalon.stun import Address


class Phase(enum.Enum):
    IDLE = "idle"
    JOINING = "joining"
    WAITING = "waiting"
    PUNCHING = "punching"
    CONNECTED = "connected"
    BACKING_OFF = "backing-off"
    STOPPED = "stopped"


#: what a phase means to a person (timeouts say "timed out while ...")
DESCRIPTIONS = {
    Phase.IDLE: "not started",
    Phase.JOINING: "joining the room (no answer from the salon)",
    Phase.WAITING: "waiting for the peer in the room (the peer must use the same room and the same "
                   "secret: a different secret means a different room)",
    Phase.PUNCHING: "punching a path to the peer",
    Phase.CONNECTED: "connected",
    Phase.BACKING_OFF: "waiting to try again",
    Phase.STOPPED: "stopped",
}


@dataclass(frozen=True)
class Settings:
    """Timings of the machine; defaults are the command line's."""

    punch_timeout: float = 10.0  #: seconds of punching per attempt
    interval: float = 0.1  #: seconds between punch rounds
    poll: float = 1.0  #: seconds between polls while waiting
    #: seconds between keepalive probes: a dead peer is noticed after
    #: dead_after intervals of silence, at the tick after (10 to 15 s by default)
    keepalive: float = 5.0
    dead_after: int = 2  #: keepalive intervals of silence that end a path
    #: seconds of direct punching without a verified pair before the relay
    #: joins the race (at once when the plan is strategy none)
    relay_after: float = 3.0
    #: seconds between JOINs that tell the salon our relayed address and
    #: ask for the peer's, until we know it
    relay_signal: float = 0.25
    relay: bool = True  #: use the salon's TURN relay when it hands out credentials
    #: while relayed: seconds between probes of the direct candidates, and
    #: for how long (0: no upgrade to direct)
    upgrade_interval: float = 1.0
    upgrade_budget: float = 120.0
    #: seconds the allocation outlives an upgrade (the peer may still send
    #: through it until its own direct pair verifies, about one RTT later)
    release_after: float = 2.0
    #: while relayed through our allocation: seconds between probes of the
    #: path, and seconds of silence after which the allocation is checked
    #: (relay lost: :mod:`natsalon.client.recovery`)
    relay_check: float = 1.0
    relay_silence: float = 2.0
    #: seconds to wait after the n-th failed attempt in a row
    retry: Callable[[int], float] = field(default_factory=lambda: backoffPolicy(1.0, 30.0, 1.5))


class Session(NamedTuple):
    """A verified session: what ``Punching`` hands to ``Connected``."""

    puncher: Puncher
    keys: SessionKeys
    path: Path
    relay: Optional[Relay] = None  #: our allocation, kept while the path is relayed
    intro: Optional[Introduction] = None  #: the introduction (a lost relay is re-signalled with it)


class ClientInputs(Protocol):
    def start(self) -> None:
        """Start joining (from Idle or Stopped)."""

    def stop(self) -> None:
        """Stop: cancel the current state's pending work; waiters fail with CancelledError."""

    def when_connected(self, fail_after_failures: Optional[int] = None) -> defer.Deferred:
        """The :class:`Connection` once a path is verified (now if it is)."""

    def _waiting(self, attempt: "Attempt") -> None:
        """The salon registered us; we wait for the peer."""

    def _introduced(self, intro: Introduction) -> None:
        """The salon introduced a peer that knows the secret."""

    def _verified(self, session: Session) -> None:
        """A path to the peer verified both ways."""

    def _failed(self, failure: Failure) -> None:
        """The attempt failed (no salon, refused, peer not verified, punching failed)."""

    def _path_lost(self, silent: float) -> None:
        """Nothing valid heard from the peer on the path for too long."""

    def _retry(self) -> None:
        """The backoff delay is over."""

    def _peer_left(self) -> None:
        """The peer said it ends the session (an authenticated LEAVING probe)."""


@dataclass
class Core:
    clock: object
    socket: ClientSocket
    server: Tuple[str, int]
    keys: RoomKeys
    candidates: Sequence[Address]
    connection: Connection
    settings: Settings = field(default_factory=Settings)
    emit: Callable[[dict], None] = lambda event: None
    phase: Phase = Phase.IDLE
    failures: int = 0  #: failed attempts in a row
    connects: int = 0  #: paths verified so far
    introduced_at: Optional[float] = None
    observed: Optional[Address] = None
    waiters: List[Tuple[defer.Deferred, Optional[int]]] = field(default_factory=list)
    #: (nonce, leave token) of our latest JOIN, until a LEAVE gives it up
    member: Optional[Tuple[bytes, bytes]] = None
    #: () -> Deferred failing with SalonUnreachable at an ICMP port unreachable
    check_salon: Optional[Callable[[], defer.Deferred]] = None
    #: the join-time NAT probe and the extra sockets of hard-NAT strategies
    #: (:class:`natsalon.client.strategy.HardNat`); None: plain punching only
    hardnat: Optional[HardNat] = None
    #: another TURN server than the salon's (``--turn``: host resolved to an
    #: IP, port, credentials); None: the salon's, with the credentials its
    #: introduction carries
    turn: Optional[TurnServer] = None
    #: the way to the salon when UDP may not get there
    #: (:class:`natsalon.client.streamlink.SalonLink`); None: the socket, over UDP
    link: Optional[object] = None
    #: the salons sharing the room (``--server a,b``): each attempt joins
    #: their current one, and the Joiner moves on when it fails; ``server``
    #: follows; None: ``server`` alone
    salons: Optional[Salons] = None
    #: the IP families' sockets (:class:`natsalon.client.families.Families`):
    #: each punch pairs the peer's addresses with the socket of their family;
    #: None: the client socket's family alone
    families: Optional[object] = None
    #: our smoothed round trip to the salon (first tries of our JOINs), sent in them
    salon_rtt: SalonRtt = field(default_factory=SalonRtt)
    #: our NAT summary for the current membership, once the join-time probe gives it
    own_nat: OwnSummary = field(default_factory=OwnSummary)
    log: Logger = field(default_factory=Logger)

    @property
    def salon(self):
        """What the join, the relay and the LEAVE talk to the salon through."""
        return self.link if self.link is not None else self.socket

    @property
    def salon_transport(self) -> str:
        """``"udp"``, or ``"tcp"``/``"tls"`` once the salon is reached over a stream."""
        return self.link.transport if self.link is not None else "udp"

    def leave_salon(self) -> None:
        """Tell the salon our latest membership is over (one datagram; if
        it is lost the salon drops us after three missed polls anyway)."""
        if self.member is None:
            return
        nonce, token = self.member
        self.member = None
        try:
            self.salon.write(wire.leave_request(self.keys.room_id, nonce, token), self.server)
        except OSError:
            pass

    def settle(self, result) -> None:
        """Fire every ``when_connected`` waiter with ``result``."""
        self.waiters, waiting = [], self.waiters
        for d, _ in waiting:
            d.callback(result)

    def count_failure(self, failure: Failure) -> None:
        """Fail the waiters whose ``fail_after_failures`` is reached."""
        keep = []
        for d, remaining in self.waiters:
            if remaining is not None and remaining <= 1:
                d.callback(failure)
            else:
                keep.append((d, None if remaining is None else remaining - 1))
        self.waiters = keep


class Attempt:
    """One join: a fresh nonce, the token its LEAVE will reveal, and its
    Joiner (data of Joining and Waiting).  With hard-NAT support the
    join-time probe runs meanwhile and nothing waits for it: our JOINs say
    our NAT is pending until the probe's summary comes, which then goes in
    an updated JOIN (at once while we wait in the room; once introduced,
    :class:`~natsalon.client.strategy.SummaryExchange` sends it) and in
    ``core.own_nat``."""

    def __init__(self, machine: ClientInputs, core: Core) -> None:
        s = core.settings
        core.leave_salon()  # the membership of an earlier attempt, if any
        self.nonce = new_nonce()
        self.token = wire.new_leave_token()
        core.member = (self.nonce, self.token)
        self.core = core
        if core.salons is not None:
            core.server = core.salons.current
        hard = core.hardnat is not None
        self.joiner = Joiner(core.clock, core.salon, core.server, core.keys, self.nonce, core.candidates,
                             poll=s.poll, on_waiting=lambda: machine._waiting(self),
                             leave_hash=wire.leave_hash(self.token), plain=not core.connection.encrypt,
                             salons=core.salons, on_switch=self._switched,
                             nat=PENDING_NAT if hard else None, rtt=core.salon_rtt if hard else None)
        core.emit({"event": "joined", "room_id": core.keys.room_id.hex()[:8]})
        self.own = core.own_nat = OwnSummary()
        self.knowing: Optional[defer.Deferred] = None
        if hard:
            self.knowing = core.hardnat.knowledge.summary()
            self.knowing.addCallbacks(self._know, lambda f: f.trap(defer.CancelledError))
        self.deferred = self.joiner.start()
        self.deferred.addCallbacks(machine._introduced, _unless_cancelled(machine._failed))
        self.check = None
        self._check(core.server)

    def _know(self, nat: wire.NatSummary) -> None:
        self.knowing = None
        self.joiner.update(nat)
        self.own.set(nat)

    def _check(self, server) -> None:
        """Listen for an ICMP port unreachable from ``server`` (core.check_salon)."""
        if self.core.check_salon is None:
            return
        self.check = self.core.check_salon()
        self.check.addErrback(self._unreachable, server)

    def _unreachable(self, f: Failure, server) -> None:
        if f.check(SalonUnreachable):
            self.joiner.unreachable(f.value, server)

    def _switched(self, server) -> None:
        """The Joiner moved to another salon: the machine talks to it now."""
        core = self.core
        core.server = server
        core.emit({"event": "salon", "server": "%s:%d" % server})
        if self.check is not None:
            self.check.cancel()
        self._check(server)

    def cancel(self) -> None:
        self.deferred.cancel()
        if self.knowing is not None:
            self.knowing.cancel()
        if self.check is not None:
            self.check.cancel()


class Punch:
    """Punching after an introduction (data of Punching): the puncher, and
    the strategy both sides choose from their NAT summaries
    (:mod:`natsalon.client.strategy`) with its :class:`Runner`.  When a
    summary of the pair is still pending (:func:`~natsalon.client.strategy.table.early`)
    a :class:`SummaryExchange` completes the pair: meanwhile we punch
    plainly and add the strategy's work once it is known, or (HOLD) send
    nothing over IPv4 until then.  The IPv6 socket has its own mappings
    and filter, so a HOLD does not hold it: its pairs are armed and
    punched at the introduction (``v6_first``), and the IPv4 plan joins
    them when it is known (:meth:`_join_ipv4`)."""

    def __init__(self, machine: ClientInputs, core: Core, intro: Introduction) -> None:
        s, kit = core.settings, core.hardnat
        self.core, self.intro = core, intro
        self.started = core.clock.seconds()
        self.keys = session_keys(core.keys, intro.nonce, intro.peer.nonce)
        self.relaying = s.relay and (core.turn is not None or intro.turn is not None)
        plan, self.pending = early(intro.nat, intro.peer.nat) if kit is not None else (None, Pending.DECIDED)
        self.plan = plan or decide(intro.nat, intro.peer.nat)  # plain, while pending
        bare = self.plan.role is Role.ORDERED or self.pending is Pending.HOLD
        self.puncher = Puncher(core.clock, core.socket.write, self.keys, intro.nonce, intro.peer.nonce,
                               None if bare else intro.peer_address, () if bare else intro.peer.candidates,
                               interval=s.interval, timeout=self._timeout(self.plan))
        core.socket.on_punch = self.puncher.datagram
        self.puncher.on_peer_left = lambda: _peer_said_goodbye(machine, core)
        self.runner: Optional[Runner] = None
        self.race: Optional[RelayRace] = None
        self.kickoff = Kickoff(core.clock, self.puncher)
        self.deferred = self.kickoff.deferred
        self.exchange: Optional[SummaryExchange] = None
        self.v6_first = False  #: HOLD, but the IPv6 pairs punched since the introduction
        self._v4_call = None  #: the IPv4 plan's start while v6_first
        if self.pending is not Pending.DECIDED:
            self.exchange = SummaryExchange(core, intro, core.own_nat, self._pair, deadline=kit.settings.summary_wait)
        if self.pending is not Pending.HOLD:
            self._adopt(self.plan, intro.nat, intro.peer.nat, coordinated_wait(self.plan, intro, kit))
        else:
            self._punch_ipv6_now()
        if self.exchange is not None:
            self.exchange.start()
        self.deferred.addCallbacks(self._found, self._no_path)
        self.deferred.addCallbacks(lambda path: machine._verified(Session(self.puncher, self.keys, path,
                                                                          self._keep_relay(path), intro)),
                                   _unless_cancelled(machine._failed))

    def _timeout(self, plan) -> float:
        s, kit = self.core.settings, self.core.hardnat
        if plan.strategy is Strategy.NONE and kit is not None and not self.relaying:
            return min(s.punch_timeout, kit.settings.none_after)
        return s.punch_timeout

    def _pair(self, mine: wire.NatSummary, peer: wire.NatSummary, together: bool) -> None:
        """Both summaries known (after the introduction): the plan, timed
        from the salon moment that completed the pair if there was one."""
        plan = decide(mine, peer)
        ex, intro = self.exchange, self.intro
        timed = intro._replace(salon_rtt=ex.my_rtt, peer=intro.peer._replace(salon_rtt=ex.peer_rtt))
        wait = coordinated_wait(plan, timed, self.core.hardnat) if together else 0.0
        self.core.log.debug("NAT summaries complete: {strategy}", strategy=plan.strategy.value)
        if not self.kickoff.fired or self.v6_first or plan.strategy is not Strategy.PLAIN:
            self._adopt(plan, mine, peer, wait)

    def _punch_ipv6_now(self) -> None:
        """HOLD (the IPv4 plan waits for the NAT summaries): the IPv6 pairs,
        from the IPv6 socket, are armed and punched at once."""
        core, intro = self.core, self.intro
        families = core.families
        if families is None or getattr(families, "second", None) is None:
            return
        if families.arm(self.puncher, intro.peer_address, intro.peer.candidates, core.settings.punch_timeout):
            self.v6_first = True
            self.puncher.on_stop.append(self._drop_ipv4)
            self.kickoff.at(0)

    def _adopt(self, plan, mine: wire.NatSummary, peer: wire.NatSummary, wait: float) -> None:
        """Punch by ``plan``: from its start if punching has not started
        (then in ``wait`` seconds), else by adding its work (in ``wait``)."""
        core, kit, intro = self.core, self.core.hardnat, self.intro
        self.plan = plan
        if kit is not None:
            self.runner = Runner(core.clock, self.puncher, plan, intro.peer_address, intro.peer.candidates, peer,
                                 kit.pool, kit.settings, my_nat=mine)
        self._announce(plan, wait)
        if self.v6_first:
            self._join_ipv4(plan, wait)
        elif self.kickoff.fired:
            self.runner.head_start += wait
            self.runner.prepare()
            self.runner.start()
            return
        else:
            self._plain_ipv4(plan)
            self.puncher.timeout = self._timeout(plan)
            if core.families is not None:  # the peer's addresses of each family from our socket of that family
                core.families.arm(self.puncher, intro.peer_address, intro.peer.candidates,
                                  core.settings.punch_timeout)
            if self.runner is not None:
                self.runner.prepare()
                self.kickoff.after = self.runner.start
            self.kickoff.at(wait)
        if self.relaying:  # direct punching gets its relay_after from its start, held or not
            self.race = RelayRace(core, self.puncher, intro, self.started)
            # no UDP to the salon: no direct path either, the relay at once
            direct = plan.strategy is not Strategy.NONE and core.salon_transport == "udp"
            self.race.start(core.settings.relay_after if direct else 0.0)

    def _plain_ipv4(self, plan) -> None:
        """After a HOLD the puncher was built bare: the peer's addresses, as
        the Puncher's own, unless the plan orders its ports (the runner
        adds them)."""
        if plan.role is Role.ORDERED or self.pending is not Pending.HOLD:
            return
        public = Address(*self.intro.peer_address)
        for addr in self.intro.peer.candidates:
            if Address(*addr) != public:
                self.puncher.add_candidate(addr, CandidateKind.HOST)
        self.puncher.add_candidate(public, CandidateKind.SRFLX)
        if self.core.families is not None:  # IPv6 ones stay with the IPv6 socket
            self.core.families.arm(self.puncher, self.intro.peer_address, self.intro.peer.candidates)

    def _join_ipv4(self, plan, wait: float) -> None:
        """The IPv4 plan joins the IPv6 punching (v6_first) in ``wait``
        seconds: its candidates and the runner's work, probed at once;
        nothing if a path was chosen (or the punch ended) meanwhile."""
        def go() -> None:
            self._v4_call = None
            if self.puncher.phase not in (PunchPhase.PUNCHING, PunchPhase.NOMINATED):
                return
            self._plain_ipv4(plan)
            if self.runner is not None:
                self.runner.prepare()
                self.runner.start()
            self.puncher.probe_new()

        self._drop_ipv4()
        if wait > 0:
            self._v4_call = self.core.clock.callLater(wait, go)
        else:
            go()

    def _drop_ipv4(self) -> None:
        call, self._v4_call = self._v4_call, None
        if call is not None and call.active():
            call.cancel()

    def _announce(self, plan, wait: float) -> None:
        if plan.strategy is Strategy.PLAIN:
            return
        event = {"event": "strategy", "strategy": plan.strategy.value, "role": plan.role.value,
                 "nat": plan.mine.value, "peer_nat": plan.peer.value}
        if plan.reason:
            event["reason"] = plan.reason
        if wait:
            event["wait_ms"] = round(wait * 1000, 1)
        self.core.log.info("punching strategy {strategy} ({role})", strategy=event["strategy"], role=event["role"])
        self.core.emit(event)

    def _keep_relay(self, path: Path) -> Optional[Relay]:
        return self.race.keep(path) if self.race is not None else None

    def stop_relay(self) -> None:
        """Cancel the relay's pending work and release the allocation."""
        if self.race is not None:
            self.race.stop()

    def _found(self, path: Path) -> Path:
        self._stop_exchange()
        if path.kind == RELAY and self.race is not None:
            self.race.won(path)
        if self.runner is not None:
            self.runner.finish(path)
        if path.strategy != Strategy.PLAIN.value:
            self.core.emit({"event": "punched", "strategy": path.strategy, "probes": path.probes,
                            "sockets": path.sockets,
                            "punch_ms": round((self.core.clock.seconds() - self.started) * 1000, 1)})
        return path

    def _no_path(self, f: Failure) -> Failure:
        self._stop_exchange()
        self.stop_relay()
        if f.check(PunchFailed) and self.race is not None and self.race.error is not None:
            f = Failure(PunchFailed("%s; relay: %s" % (f.getErrorMessage(), self.race.error)))
        if f.check(PunchFailed) and self.plan.strategy is Strategy.NONE:
            return Failure(PunchFailed("%s (strategy none; %s)" % (self.plan.reason, f.getErrorMessage())))
        return f

    def _stop_exchange(self) -> None:
        if self.exchange is not None:
            self.exchange.stop()

    def cancel(self) -> None:
        self._stop_exchange()
        self.deferred.cancel()
        self.puncher.stop()
        self.stop_relay()

    def goodbye(self) -> None:
        self.puncher.goodbye()


class Live:
    """A verified session in use (data of Connected)."""

    def __init__(self, machine: ClientInputs, core: Core, session: Session) -> None:
        self.session = session
        self.core = core
        s = core.settings
        self.keepalive = Keepalive(core.clock, session.puncher, session.path.address, s.keepalive, s.dead_after,
                                   lambda silent: self._dead(machine, core, silent))
        core.connection.attach(session.puncher, session.keys, session.path)
        session.puncher.on_moved = self._moved
        self.keepalive.start()
        self.upgrade: Optional[Upgrade] = None
        self.watch: Optional[RelayWatch] = None
        self._release = None
        if session.path.kind == RELAY and s.upgrade_budget > 0:
            self.upgrade = Upgrade(core.clock, session.puncher, s.upgrade_interval, s.upgrade_budget, self._upgraded,
                                   socket=core.socket)
            self.upgrade.start()
        if session.path.kind == RELAY and session.relay is not None and session.intro is not None:
            self.watch = RelayWatch(core, session.puncher, session.intro, session.relay, self._relay_recovered,
                                    check=s.relay_check, silence=s.relay_silence)
            self.watch.start()

    def _relay_recovered(self, pair, relay: Relay) -> None:
        """The relay was lost and a new allocation carries the path now."""
        path = self.session.puncher.move(pair)
        self.session = self.session._replace(path=path, relay=relay)
        self.core.connection.move(path)
        self.keepalive.address = path.address

    def _moved(self, path: Path) -> None:
        """The peer nominated another direct pair (we are the controlled
        side, :mod:`natsalon.client.punch.nomination`): the path follows."""
        core = self.core
        self.session = self.session._replace(path=path)
        core.connection.move(path)
        self.keepalive.address = path.address
        family = 6 if ":" in path.address.host else 4
        core.log.info("moved to the peer's {kind} path over IPv{family}", kind=path.kind, family=family)
        core.emit({"event": "moved", "path": path.kind, "peer": str(path.address), "family": family,
                   "rtt_ms": round(path.rtt * 1000, 1)})

    def _upgraded(self, pair) -> None:
        """A direct pair verified while relayed: traffic moves to it now,
        the allocation goes a little later."""
        core = self.core
        if self.watch is not None:
            self.watch.stop()  # a new allocation not yet carrying the path goes too
        path = self.session.puncher.move(pair)
        relay = self.session.relay
        self.session = self.session._replace(path=path, relay=None)
        core.connection.move(path)
        self.keepalive.address = path.address
        if relay is not None:
            self._release = core.clock.callLater(core.settings.release_after, self._release_now, relay)
        core.log.info("upgraded to a {kind} path", kind=path.kind)
        core.emit({"event": "upgraded", "path": path.kind, "peer": str(path.address),
                   "rtt_ms": round(path.rtt * 1000, 1), "probes": self.upgrade.probes if self.upgrade else 0})

    def _release_now(self, relay: Relay) -> None:
        self._release = None
        relay.close()

    @staticmethod
    def _dead(machine: ClientInputs, core: Core, silent: float) -> None:
        # said before the input, so "path-lost" comes before the re-join's events
        core.log.info("path lost ({silent:.1f}s of silence); re-joining", silent=silent)
        core.emit({"event": "path-lost", "silent_s": round(silent, 1)})
        machine._path_lost(silent)

    def cancel(self, connection: Connection) -> None:
        self.keepalive.stop()
        self.session.puncher.stop()
        connection.detach()
        if self.upgrade is not None:
            self.upgrade.stop()
        if self.watch is not None:
            self.watch.stop()
        relay = self.session.relay
        if relay is not None:
            relay.close()
        release, self._release = self._release, None
        if release is not None and release.active():
            release.cancel()
            release.args[0].close()

    def goodbye(self) -> None:
        self.session.puncher.goodbye()


def _peer_said_goodbye(machine: ClientInputs, core: Core) -> None:
    # said before the input, so "peer-left" comes before the re-join's events
    core.log.info("the peer left; re-joining")
    core.emit({"event": "peer-left"})
    machine._peer_left()


def _unless_cancelled(input_: Callable[[Failure], None]) -> Callable[[Failure], None]:
    """An errback feeding ``input_``, except for the CancelledError our own stop caused."""

    def errback(f: Failure) -> None:
        if not f.check(defer.CancelledError):
            input_(f)

    return errback


def _build():
    b = TypeMachineBuilder(ClientInputs, Core)
    Idle = b.state("Idle")

    def joining(m: ClientInputs, c: Core, *args) -> Attempt:
        c.phase = Phase.JOINING
        return Attempt(m, c)

    def waiting(m: ClientInputs, c: Core, attempt: Attempt) -> Attempt:
        c.phase = Phase.WAITING
        c.observed = attempt.joiner.observed
        c.log.info("waiting for the peer in the room")
        c.emit({"event": "waiting"})
        return attempt

    Joining = b.state("Joining", joining)
    Waiting = b.state("Waiting", waiting)
    Punching = b.state("Punching", _punching)
    Connected = b.state("Connected", _connected)
    BackingOff = b.state("BackingOff", _backing_off)
    Stopped = b.state("Stopped")

    Idle.upon(ClientInputs.start).to(Joining).returns(None)
    Stopped.upon(ClientInputs.start).to(Joining).returns(None)
    Joining.upon(ClientInputs._waiting, nodata=True).to(Waiting).returns(None)
    for s in (Joining, Waiting):
        s.upon(ClientInputs._introduced, nodata=True).to(Punching).returns(None)
        s.upon(ClientInputs._failed).to(BackingOff)(_attempt_failed)
    Punching.upon(ClientInputs._verified, nodata=True).to(Connected).returns(None)
    Punching.upon(ClientInputs._failed).to(BackingOff)(_attempt_failed)
    Connected.upon(ClientInputs._path_lost).to(Joining)(_path_lost)
    Connected.upon(ClientInputs._peer_left).to(Joining)(_left_connected)
    Punching.upon(ClientInputs._peer_left).to(Joining)(_left_punching)
    BackingOff.upon(ClientInputs._retry, nodata=True).to(Joining).returns(None)
    for s in (Joining, Waiting, BackingOff):
        s.upon(ClientInputs.stop).to(Stopped)(_stop_pending)
    Punching.upon(ClientInputs.stop).to(Stopped)(_stop_punching)
    Connected.upon(ClientInputs.stop).to(Stopped)(_stop_connected)
    for s in (Idle, Stopped):
        s.upon(ClientInputs.stop).to(Stopped)(_stop_idle)
    Idle.upon(ClientInputs.when_connected).loop()(_await)
    for s in (Joining, Waiting, Punching, BackingOff):
        s.upon(ClientInputs.when_connected, nodata=True).loop()(_await)
    Connected.upon(ClientInputs.when_connected).loop()(_now_connected)
    Stopped.upon(ClientInputs.when_connected).loop()(_never)
    return b.build()


def _punching(m: ClientInputs, c: Core, intro: Introduction) -> Punch:
    c.phase = Phase.PUNCHING
    c.introduced_at = c.clock.seconds()
    c.observed = intro.observed or c.observed
    c.log.info("introduced; punching")
    c.emit({"event": "introduced", "peer": str(intro.peer_address)})
    c.emit({"event": "punching", "candidates": 1 + len(intro.peer.candidates)})
    return Punch(m, c, intro)


def _connected(m: ClientInputs, c: Core, session: Session) -> Live:
    c.phase = Phase.CONNECTED
    c.failures = 0
    live = Live(m, c, session)
    path = session.path
    c.log.info("connected: path {path}, rtt {rtt:.1f} ms; the salon over {transport}", path=path.kind,
               rtt=path.rtt * 1000, transport=c.salon_transport)
    if c.connects:
        relayed = path.kind == RELAY
        c.emit({"event": "connected", "path": path.kind, "peer": str(path.address),
                "server": "%s:%d" % (relay_server(c) if relayed else tuple(c.server)),
                "strategy": RELAY if relayed else path.strategy,
                "rtt_ms": round(path.rtt * 1000, 1), "repunched": True, "transport": c.salon_transport,
                "family": 6 if ":" in path.address.host else 4})
    c.connects += 1
    c.settle(c.connection)
    return live


def _backing_off(m: ClientInputs, c: Core, failure: Failure):
    c.phase = Phase.BACKING_OFF
    c.failures += 1
    delay = c.settings.retry(c.failures)
    c.log.warn("attempt failed ({reason}); retry {attempt} in {delay:.1f}s",
               reason=failure.getErrorMessage(), attempt=c.failures, delay=delay)
    return c.clock.callLater(delay, m._retry)


def _attempt_failed(m: ClientInputs, c: Core, pending: object, failure: Failure) -> None:
    if isinstance(pending, Punch):
        pending.puncher.stop()
        pending.stop_relay()
    if c.connects:
        c.emit({"event": "repunch-failed", "reason": failure.getErrorMessage()})
    c.count_failure(failure)


def _path_lost(m: ClientInputs, c: Core, live: Live, silent: float) -> None:
    live.cancel(c.connection)


def _stop_pending(m: ClientInputs, c: Core, pending: object) -> None:
    pending.cancel()
    _stop_idle(m, c)


def _stop_punching(m: ClientInputs, c: Core, punch: Punch) -> None:
    punch.goodbye()
    _stop_pending(m, c, punch)


def _stop_connected(m: ClientInputs, c: Core, live: Live) -> None:
    live.goodbye()
    live.cancel(c.connection)
    _stop_idle(m, c)


def _left_connected(m: ClientInputs, c: Core, live: Live) -> None:
    live.cancel(c.connection)


def _left_punching(m: ClientInputs, c: Core, punch: Punch) -> None:
    punch.cancel()


def _stop_idle(m: ClientInputs, c: Core) -> None:
    c.phase = Phase.STOPPED
    c.leave_salon()
    c.settle(Failure(defer.CancelledError()))


def _await(m: ClientInputs, c: Core, fail_after_failures: Optional[int] = None) -> defer.Deferred:
    d = defer.Deferred()
    c.waiters.append((d, fail_after_failures))
    return d


def _now_connected(m: ClientInputs, c: Core, live: Live, fail_after_failures: Optional[int] = None):
    return defer.succeed(c.connection)


def _never(m: ClientInputs, c: Core, fail_after_failures: Optional[int] = None) -> defer.Deferred:
    return defer.fail(defer.CancelledError())


ClientMachine = _build()
