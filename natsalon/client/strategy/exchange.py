"""The pair of NAT summaries, completed after the introduction.

A member's first JOIN does not wait for its join-time probe: it says
``pending`` (:data:`natsalon.wire.nat.PENDING_NAT`) and the member
publishes its summary once, when the probe ends, in an updated JOIN (the
salon replaces the member's JOIN, as for a relayed address).  An update
sent while still waiting in the room simply rides the Joiner's next JOIN.
Once introduced, :class:`SummaryExchange` completes the pair:

- our own summary pending at the introduction: when the probe ends, JOIN
  again with it and ``JOIN_FLAG_UPDATE``; the salon answers with the peer's
  current JOIN and, in the same instant, pushes ours to the peer (as it
  pushes a newcomer's JOIN), so both sides complete the pair at one salon
  moment and the RTT/2 timing of :mod:`.timing` applies to it as to an
  introduction;
- the peer's pending: wait for that push (our socket's salon indications),
  and as a fallback poll the salon every ``poll`` seconds after ``poll``
  seconds (a poll's answer is not a common moment: no wait then).

Both sides decide from the same pair: each member publishes one summary
per membership, and a summary once known for a nonce is kept (a later
JOIN of the peer without one, e.g. its relay re-JOIN, changes nothing).
After ``deadline`` seconds a summary still pending counts as unknown
(plain punching).  ``on_pair(mine, peer, together)`` is called once;
``together`` says the pair was completed at a common salon moment.
"""

from __future__ import annotations

from typing import Callable, List, Optional

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from natsalon import wire
from natsalon.client.demux import JOIN_POLICY
from natsalon.wire.join import JOIN_FLAG_UPDATE
from natsalon.wire.nat import UNKNOWN_NAT, NatSummary


class OwnSummary:
    """Our summary for one membership: None until the join-time probe gives
    it; :meth:`watch` callbacks are called once, with it."""

    def __init__(self) -> None:
        self.value: Optional[NatSummary] = None
        self._watchers: List[Callable[[NatSummary], None]] = []

    def set(self, nat: NatSummary) -> None:
        if self.value is not None:
            return
        self.value = nat
        watchers, self._watchers = self._watchers, []
        for f in watchers:
            f(nat)

    def watch(self, f: Callable[[NatSummary], None]) -> None:
        if self.value is not None:
            f(self.value)
        else:
            self._watchers.append(f)


class SummaryExchange:
    """See the module docstring.  ``core`` is the client machine's
    :class:`~natsalon.client.session.Core`, ``intro`` our
    :class:`~natsalon.client.join.Introduction`, ``own`` this membership's
    :class:`OwnSummary`."""

    log = Logger()

    def __init__(self, core, intro, own: OwnSummary,
                 on_pair: Callable[[NatSummary, NatSummary, bool], None],
                 poll: float = 0.25, deadline: float = 2.0) -> None:
        self.core = core
        self.intro = intro
        self.own = own
        self.on_pair = on_pair
        self.poll = poll
        self.deadline = deadline
        self.mine = intro.nat
        self.peer = intro.peer.nat
        self.cookie = intro.cookie
        self.done = False
        self.told: Optional[NatSummary] = None  #: our summary, once sent in an update
        #: the round trips to the salon the pair is timed with: ours as our
        #: JOINs carry it (measured now if the introduction's JOIN had none),
        #: the peer's as its latest JOIN does
        self.my_rtt: Optional[float] = intro.salon_rtt
        self.peer_rtt: Optional[float] = intro.peer.salon_rtt
        self.joins = 0  #: JOINs sent (updates and polls)
        self._calls: list = []
        self._req: Optional[defer.Deferred] = None

    def start(self) -> None:
        clock = self.core.clock
        self.core.salon.on_salon = self._indication
        if self.mine.pending:
            self.own.watch(self._own)
        if self.peer.pending:
            self._calls.append(clock.callLater(self.poll, self._poll))
        self._calls.append(clock.callLater(self.deadline, self._give_up))

    def stop(self) -> None:
        self.done = True
        for call in self._calls:
            if call.active():
                call.cancel()
        self._calls = []
        req, self._req = self._req, None
        if req is not None and not req.called:
            req.cancel()
        if self.core.salon.on_salon == self._indication:
            self.core.salon.on_salon = lambda msg, addr: None

    # -- sending ----------------------------------------------------------------
    def _own(self, nat: NatSummary) -> None:
        if not self.done:
            self.told = nat
            self._join(nat, JOIN_FLAG_UPDATE)

    def _poll(self) -> None:
        if self.done:
            return
        if self._req is None:
            self._join(self.told or self.mine, 0)
        self._calls.append(self.core.clock.callLater(self.poll, self._poll))

    def _join(self, nat: NatSummary, flags: int) -> None:
        core = self.core
        if core.member is None:
            return
        nonce, token = core.member
        flags |= 0 if core.connection.encrypt else wire.JOIN_FLAG_PLAIN
        if self.my_rtt is None:
            self.my_rtt = core.salon_rtt.value
        msg, _ = wire.join_request(core.keys.room_id, nonce, core.candidates, core.keys.k_join, self.cookie,
                                   leave_hash=wire.leave_hash(token), flags=flags, nat=nat, salon_rtt=self.my_rtt)
        self.joins += 1
        req = self._req = core.salon.stun.request(msg, core.server, policy=JOIN_POLICY, sha256_key=core.keys.k_join)
        req.addCallbacks(self._answered, self._failed, callbackArgs=(nat, flags))

    # -- receiving --------------------------------------------------------------
    def _answered(self, response, nat: NatSummary, flags: int) -> None:
        self._req = None
        try:
            ans = wire.parse_join_answer(response.message)
        except wire.WireError:
            return
        if ans.kind is wire.Answer.COOKIE:
            self.cookie = ans.cookie  # the salon's secret rolled over: at once with the new one
            self._join(nat, flags)
            return
        if ans.kind is not wire.Answer.INTRODUCED:
            return
        if not nat.pending:
            self.mine = nat
        self._learn(ans.peers, together=bool(flags & JOIN_FLAG_UPDATE))

    def _failed(self, f: Failure) -> None:
        self._req = None
        if not f.check(defer.CancelledError):
            self.log.debug("summary update: {error}", error=f.getErrorMessage())

    def _indication(self, msg, addr) -> None:
        if self.done or (addr[0], addr[1]) != tuple(self.core.server):
            return
        try:
            ans = wire.parse_join_answer(msg)
        except wire.WireError:
            return
        if ans.kind is wire.Answer.INTRODUCED and ans.nonce == self.intro.nonce:
            self._learn(ans.peers, together=True)

    def _learn(self, peers, together: bool) -> None:
        """The peer's JOIN among ``peers``: keep its summary once known."""
        for raw, _address in peers:
            try:
                peer = wire.verify_peer_join(raw, self.core.keys.k_join, self.core.keys.room_id)
            except wire.WireError:
                continue
            if peer.nonce == self.intro.peer.nonce and self.peer.pending and not peer.nat.pending:
                self.peer = peer.nat
                self.peer_rtt = peer.salon_rtt if peer.salon_rtt is not None else self.peer_rtt
        self._check(together)

    def _check(self, together: bool) -> None:
        if self.done or self.mine.pending or self.peer.pending:
            return
        self.stop()
        self.on_pair(self.mine, self.peer, together)

    def _give_up(self) -> None:
        if self.done:
            return
        self.log.debug("NAT summaries still pending after {t}s: unknown", t=self.deadline)
        self.stop()
        mine = self.mine if not self.mine.pending else UNKNOWN_NAT
        peer = self.peer if not self.peer.pending else UNKNOWN_NAT
        self.on_pair(mine, peer, False)
