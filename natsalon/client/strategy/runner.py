"""Carrying a :class:`~natsalon.client.strategy.table.Plan` out, around a
:class:`~natsalon.client.punch.Puncher` that does the plain punching.

- :class:`Sweep`: probes a stream of guessed addresses of the peer (its
  predicted ports, or random ports of its public IP) from our default
  socket, at most ``rate`` per second, at most ``budget`` in all, until a
  pair verifies or the puncher ends.  Every probe is an ordinary
  authenticated PUNCH request: a guess that lands gets answered only by
  the peer, and a response from an address we guessed makes it a
  ``predicted`` candidate, which the usual rules then verify both ways.
- :class:`Spray`: opens extra sockets from a
  :class:`~natsalon.client.demux.SocketPool` (``rate`` per second), each
  probing the peer's public endpoint, so the NAT makes as many mappings
  whose filters admit the peer; each is probed again every ``refresh``
  seconds (the rate includes that).
- :class:`Runner`: the plan's role.  The sweep or spray starts at once
  when the filtering side's filter is known to depend on address and port;
  when it is not known (it may let plain punching through), predicted and
  birthday begin as plain punching and the sweep or spray starts after
  ``head_start`` seconds without a verified pair.  Seq against seq probes the peer's next ports
  (in order on one side, every second one on the other: :func:`.table.ordered_ports`)
  before anything else (:meth:`Runner.prepare`).  Once a path is chosen
  every extra socket but the path's is closed; the rest close when the
  puncher stops.

Tunables are :class:`StrategySettings`; the clock is injected.
"""

from __future__ import annotations

import os
import random
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Tuple

from twisted.internet import defer
from twisted.logger import Logger

from natsalon.client.punch import CandidateKind, LocalSocket, Path, Puncher
from natsalon.client.punch.phases import Phase
from natsalon.client.strategy.table import Plan, Role, Strategy, ordered_ports, predicted_ports
from natsalon.stun import Address
from natsalon.wire.nat import APD, NatSummary


@dataclass(frozen=True)
class StrategySettings:
    """How hard the strategies try.  Worst case on the wire: a side sends
    at most ``max(sweep_rate, spray_rate)`` packets per second more than
    plain punching (800 by default, plus plain's 10 per candidate)."""

    #: seconds of plain punching before predicted/birthday add anything, when the
    #: filtering side's filter was not known (it may be easy: plain may suffice)
    head_start: float = 0.3
    sweep_rate: float = 800.0  #: probes per second of a sweep
    sweep_budget: int = 4096  #: probes of one sweep at most
    windows: Tuple[int, ...] = (16, 32, 64, 128, 256)  #: predicted sweep: the growing windows of next ports
    #: seq vs seq: new flows of each side (:func:`.table.ordered_ports`):
    #: survives drifts dA + 2dB below it (on a LAN 64 new flows take under a
    #: millisecond; the rounds then probe them every interval, 640/s)
    ordered_window: int = 64
    spray_sockets: int = 256  #: birthday: extra sockets of the random side
    spray_rate: float = 640.0  #: birthday: probes per second of the spraying side (openings and refreshes)
    spray_refresh: float = 2.0  #: birthday: seconds between probes of one sprayed socket
    random_ports: Tuple[int, int] = (1024, 65535)  #: where a random symmetric NAT allocates
    none_after: float = 1.5  #: strategy none: seconds of plain punching (a LAN path?) before giving up
    max_pending: int = 8192  #: the puncher's probes awaiting an answer while sweeping
    max_peer_reflexive: int = 32  #: the puncher's learnt candidates while spraying
    #: predicted and birthday: fire at the moment both introductions have
    #: arrived (:mod:`.timing`); False: at once, as plain punching
    coordinate: bool = True
    max_wait: float = 0.5  #: seconds at most of that wait
    #: seconds after the introduction a pending NAT summary is waited for
    #: (:mod:`.exchange`); then it counts as unknown
    summary_wait: float = 2.0


def sequential_ports(base_ports: Tuple[int, ...], windows: Tuple[int, ...]) -> Iterator[int]:
    """``base_ports`` (the peer's next ports, in order) swept in widening
    windows, the nearest again each time: 16 first, then 32, ..., then the
    widest over and over."""
    while True:
        for w in windows:
            yield from base_ports[:w]


def random_ports(low: int, high: int, rng: Optional[random.Random] = None) -> Iterator[int]:
    """Every port of ``low..high`` once, in random order."""
    ports = list(range(low, high + 1))
    (rng or random.Random(os.urandom(16))).shuffle(ports)
    return iter(ports)


class _Paced:
    """A task that sends a round of probes every ``interval`` while the
    puncher still punches; subclasses send the round in :meth:`_round`."""

    def __init__(self, clock, puncher: Puncher, rate: float, interval: float) -> None:
        self.clock = clock
        self.puncher = puncher
        self.per_tick = max(1, int(round(rate * interval)))
        self.interval = interval
        self.sent = 0
        self._call = None

    def start(self) -> None:
        self._tick()

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _tick(self) -> None:
        self._call = None
        if _punching(self.puncher) and self._round():
            self._call = self.clock.callLater(self.interval, self._tick)

    def _round(self) -> bool:
        """Send one round; False when there is nothing more to send."""
        raise NotImplementedError


class Sweep(_Paced):
    """Probe ``Address(host, port)`` for each port of ``ports``, paced."""

    def __init__(self, clock, puncher: Puncher, host: str, ports: Iterator[int], rate: float, budget: int,
                 interval: float) -> None:
        super().__init__(clock, puncher, rate, interval)
        self.host = host
        self.ports = ports
        self.budget = budget

    def _round(self) -> bool:
        for _ in range(self.per_tick):
            port = next(self.ports, None)
            if port is None or self.sent >= self.budget:
                return False
            self.sent += 1
            self.puncher.probe(Address(self.host, port), kind=CandidateKind.PREDICTED)
        return True


class Spray(_Paced):
    """Open ``count`` extra sockets, each probing ``target``; refresh them."""

    def __init__(self, clock, puncher: Puncher, pool, target: Address, count: int, rate: float, refresh: float,
                 interval: float) -> None:
        super().__init__(clock, puncher, rate, interval)
        self.pool = pool
        self.target = target
        self.count = count
        self.refresh = refresh
        self.failed: Optional[str] = None  #: why no more sockets could be opened
        self._due: "deque[Tuple[float, LocalSocket]]" = deque()

    def _round(self) -> bool:
        now = self.clock.seconds()
        budget = self.per_tick
        while budget and self._due and self._due[0][0] <= now:
            _, local = self._due.popleft()
            self._probe(local, now)
            budget -= 1
        while budget and self.pool.opened < self.count and self.failed is None:
            try:
                local = self.pool.open()
            except OSError as e:
                self.failed = str(e)
                break
            self.puncher.sockets_used = 1 + self.pool.opened
            self._probe(local, now)
            budget -= 1
        return True

    def _probe(self, local: LocalSocket, now: float) -> None:
        self.sent += 1
        self.puncher.probe(self.target, local)
        self._due.append((now + self.refresh, local))


def _punching(puncher: Puncher) -> bool:
    """Still worth probing: punching and nothing verified yet."""
    return puncher.selected is None and puncher.phase.value in ("idle", "punching") and puncher.best() is None


class Kickoff:
    """Starts ``puncher`` when :meth:`at` says: ``before()`` runs just
    before :meth:`Puncher.start` (candidates of a plan decided late),
    ``after()`` just after (the runner's start).  :attr:`deferred` fires
    like :meth:`Puncher.start`'s.  Until then the puncher is IDLE: it
    answers the peer's probes and learns, chooses nothing.  Cancelling
    :attr:`deferred`, or stopping the puncher, cancels the wait."""

    def __init__(self, clock, puncher: Puncher) -> None:
        self.clock = clock
        self.puncher = puncher
        self.before: Callable[[], None] = lambda: None
        self.after: Callable[[], None] = lambda: None
        self.fired = False
        self._call = None
        self.deferred = defer.Deferred(self._cancel)
        puncher.on_stop.append(self._stopped)

    def at(self, wait: Optional[float]) -> None:
        """Start in ``wait`` seconds (at once if 0; not yet if None), instead
        of any time said before; nothing once started."""
        if self.fired:
            return
        self._drop()
        if wait is None:
            return
        if wait <= 0:
            self._go()
        else:
            self._call = self.clock.callLater(wait, self._go)

    def _go(self) -> None:
        self._call = None
        if self.fired or self.puncher.phase is not Phase.IDLE:
            return
        self.fired = True
        self.before()
        started = self.puncher.start()
        self.after()
        started.chainDeferred(self.deferred)

    def _drop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _cancel(self, _) -> None:
        self._drop()
        self.puncher.stop()

    def _stopped(self) -> None:
        self._drop()
        if not self.fired and not self.deferred.called:
            self.fired = True
            self.deferred.errback(defer.CancelledError())


def start_punching(clock, puncher: Puncher, wait: float, then: Callable[[], None]) -> defer.Deferred:
    """Start ``puncher`` and call ``then`` after ``wait`` seconds (at once if
    0): a :class:`Kickoff`'s Deferred."""
    kickoff = Kickoff(clock, puncher)
    kickoff.after = then
    kickoff.at(wait)
    return kickoff.deferred


class Runner:
    """A plan's extra work around ``puncher``; ``pool()`` makes a
    :class:`~natsalon.client.demux.SocketPool` (only spraying needs one)."""

    log = Logger()

    def __init__(self, clock, puncher: Puncher, plan: Plan, peer_public: Address, peer_lan, peer_nat,
                 pool: Optional[Callable[[], object]], settings: StrategySettings = StrategySettings(),
                 my_nat: Optional[NatSummary] = None) -> None:
        self.clock = clock
        self.puncher = puncher
        self.plan = plan
        self.peer_public = Address(*peer_public)
        self.peer_lan = tuple(peer_lan)
        self.peer_nat = peer_nat
        # plain cannot work where the filtering side's filter is known to
        # depend on address and port: no head start then
        filtering_side = peer_nat if plan.role is Role.SPRAY else my_nat
        self.head_start = 0.0 if filtering_side is not None and filtering_side.filtering == APD else \
            settings.head_start
        self.make_pool = pool
        self.settings = settings
        self.pool = None
        self.work: List[object] = []  #: the running Sweep / Spray
        self._call = None
        if plan.strategy in (Strategy.PREDICTED, Strategy.BIRTHDAY):
            puncher.strategy = plan.strategy.value
        puncher.on_stop.append(self.stop)

    @property
    def probes(self) -> int:
        """Extra probes sent by the sweep or spray."""
        return sum(w.sent for w in self.work)

    def prepare(self) -> None:
        """Candidates before the puncher starts: seq vs seq probes the
        peer's next ports first, in order (the puncher was built without
        candidates), then its public endpoint and LAN addresses."""
        s, p = self.settings, self.puncher
        if self.plan.role is Role.ORDERED:
            shifted = p.my_nonce > p.peer_nonce  # the same choice on both sides
            for port in ordered_ports(self.peer_nat, self.peer_public.port, s.ordered_window, shifted):
                p.add_candidate(Address(self.peer_public.host, port), CandidateKind.PREDICTED)
            for addr in self.peer_lan:
                if Address(*addr) != self.peer_public:
                    p.add_candidate(addr, CandidateKind.HOST)
            p.add_candidate(self.peer_public, CandidateKind.SRFLX)
        if self.plan.role in (Role.SWEEP_RANDOM, Role.SWEEP_SEQUENTIAL):
            p.max_pending = max(p.max_pending, s.max_pending)
        if self.plan.role is Role.SPRAY:
            p.max_peer_reflexive = max(p.max_peer_reflexive, s.max_peer_reflexive)

    def start(self) -> None:
        if self.plan.role in (Role.SWEEP_RANDOM, Role.SWEEP_SEQUENTIAL, Role.SPRAY):
            self._call = self.clock.callLater(self.head_start, self._escalate)

    def _escalate(self) -> None:
        self._call = None
        if not _punching(self.puncher):
            return
        s, p, role = self.settings, self.puncher, self.plan.role
        host = self.peer_public.host
        if role is Role.SWEEP_SEQUENTIAL:
            nexts = predicted_ports(self.peer_nat, self.peer_public.port, max(s.windows))
            work = Sweep(self.clock, p, host, sequential_ports(nexts, s.windows), s.sweep_rate, s.sweep_budget,
                         p.interval)
        elif role is Role.SWEEP_RANDOM:
            work = Sweep(self.clock, p, host, random_ports(*s.random_ports), s.sweep_rate, s.sweep_budget,
                         p.interval)
        else:
            if self.make_pool is None:
                return
            self.pool = self.make_pool()
            work = Spray(self.clock, p, self.pool, self.peer_public, s.spray_sockets, s.spray_rate,
                         s.spray_refresh, p.interval)
        self.log.debug("{strategy}: {role} after {t}s of plain punching", strategy=self.plan.strategy.value,
                       role=role.value, t=self.head_start)
        self.work.append(work)
        work.start()

    def finish(self, path: Path) -> None:
        """A path is chosen: stop the extra work; of the extra sockets only
        the path's stays open (and the client's writes to the peer leave
        from it)."""
        self._stop_work()
        if self.pool is not None:
            keep = path.local if any(sock.local is path.local for sock in self.pool.sockets) else None
            self.pool.close(keep=keep)
            if keep is not None:
                self.pool.route(path.address, keep)

    def stop(self) -> None:
        """The puncher stopped: everything closes."""
        self._stop_work()
        if self.pool is not None:
            self.pool.close()

    def _stop_work(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        for w in self.work:
            w.stop()
