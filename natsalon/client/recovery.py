"""Relay lost: while the path is relayed, :class:`RelayWatch` notices fast
that our allocation is gone (the TURN server restarted, say) and moves
the session to a new one, without a re-join: same nonces, same session
keys, same :class:`~natsalon.client.connection.Connection` (the user's
forwarder never notices but for the datagrams lost meanwhile).

Noticing (within about ``silence`` seconds of the loss, instead of the
keepalive's 10 to 15 s):

- every ``check`` seconds the relayed path is probed (the keepalive
  probes every 5 s only), so ``silence`` seconds without a word from the
  peer mean a few probes lost in a row;
- then the allocation is refreshed at once (:meth:`Relay.check`): a
  refusal (437 allocation mismatch: the server has no such allocation,
  as after a restart; or any TURN error) or no answer loses it; and when
  the relay is the salon's, one Binding request from a connected socket
  (:func:`~natsalon.client.salonprobe.check_salon`) hears an ICMP port
  unreachable while the server is down;
- a periodic refresh that fails (``Relay.on_lost``) loses it too.

Recovering: the lost allocation is given up, a new one is made at the
same server with the same credentials (permitting the peer's public IP),
and the room is JOINed again as the same member with the new relayed
address (NS-RELAY, as in the race: :func:`~natsalon.client.relay.signal_relay`)
every ``settings.relay_signal`` seconds; the peer, which recovers too,
does the same, so each learns the other's new relayed address and probes
it.  A probe of the peer through our new allocation comes from a source
we never saw (its NAT's mapping towards the new relayed address): it is
checked like any probe (k_punch, the peer's nonce) and becomes a
peer-reflexive candidate of the new allocation's socket (at most
``MAX_LEARNT``), which the connected puncher would refuse otherwise.
The first relayed pair through the new allocation (or to the peer's new
relayed address) verified both ways since the loss carries the path:
``on_recovered(pair, relay)``.

If nothing recovers (no new allocation after ``MAX_ATTEMPTS`` tries, or the
peer never verifies one), the keepalive ends the path as before and the
client machine re-joins.  The clock is injected; :meth:`stop` cancels
everything pending and releases a new allocation not handed over.
"""

from __future__ import annotations

from typing import Callable, Optional, Set

from twisted.internet import defer, task
from twisted.python.failure import Failure

from natsalon.client.errors import SalonUnreachable
from natsalon.client.punch import RELAY, CandidateKind, CandidatePair, Puncher
from natsalon import wire
from natsalon.client.relay import Pending, Relay, peer_relay, signal_relay
from natsalon.client.turn.client import TurnError
from natsalon.client.upgrade import peer_request
from natsalon.stun import Address

#: peer-reflexive candidates learnt through a new allocation
MAX_LEARNT = 4
#: failed Allocates in a row before the recovery gives up (credentials
#: past their expiry, say): the keepalive then ends the path, and the
#: re-join brings fresh credentials
MAX_ATTEMPTS = 3
#: JOINs asking the salon for fresh TURN credentials after a 401, at
#: ``relay_signal`` apart (the peer, which may notice the loss seconds
#: later, must JOIN before the salon introduces us again): 10 s at 0.25 s
MAX_ASKS = 40


class RelayWatch(Pending):
    """The relayed session's allocation ``relay`` (``core``: the client
    machine's Core; ``intro``: the introduction of the session)."""

    def __init__(self, core, puncher: Puncher, intro, relay: Relay,
                 on_recovered: Callable[[CandidatePair, Relay], None],
                 check: float = 1.0, silence: float = 2.0) -> None:
        self.core = core
        self.puncher = puncher
        self.intro = intro
        self.relay = relay
        self.on_recovered = on_recovered
        self.check = check
        self.silence = silence
        self.fresh: Optional[Relay] = None  #: the new allocation while recovering
        self.lost_at: Optional[float] = None
        self.recoveries = 0
        self._cookie = intro.cookie
        self._checked_at = -1e9
        self._checking: Optional[defer.Deferred] = None
        self._call = None
        self._req: Optional[defer.Deferred] = None
        self._peer_relays: Set[Address] = set()  #: learnt since the loss
        self._learnt = 0
        self._attempts = 0
        self._asks = 0
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = core.clock
        relay.on_lost = self._lost

    def start(self) -> None:
        self._loop.start(self.check, now=False)

    def stop(self) -> None:
        """Stop watching; a new allocation not handed over is released."""
        if self._loop.running:
            self._loop.stop()
        self.relay.on_lost = lambda reason: None
        self._cancel_pending()
        checking, self._checking = self._checking, None
        if checking is not None:
            checking.cancel()
        fresh, self.fresh = self.fresh, None
        if fresh is not None:
            fresh.close()

    @property
    def recovering(self) -> bool:
        """Between the loss and the recovery (``lost_at`` is set meanwhile)."""
        return self.lost_at is not None

    # -- noticing ------------------------------------------------------------
    def _tick(self) -> None:
        if self.lost_at is not None:
            self._probe_fresh()
            return
        path = self.puncher.selected
        if path is None or path.kind != RELAY:
            return
        self.puncher.probe(path.address)
        now = self.core.clock.seconds()
        silent = now - self.puncher.last_heard(path.address)
        if silent >= self.silence and self._checking is None and now - self._checked_at >= self.silence:
            self._checked_at = now
            self.core.log.debug("relayed path silent for {silent:.1f}s: checking the allocation", silent=silent)
            self._checking = self._verify()
            self._checking.addBoth(self._checked)

    def _verify(self) -> defer.Deferred:
        checks = [self.relay.check()]
        core = self.core
        if core.check_salon is not None and tuple(self.relay.server) == tuple(core.server):
            checks.append(core.check_salon().addErrback(self._unreachable))
        return defer.DeferredList(checks, consumeErrors=True)

    def _unreachable(self, f: Failure) -> None:
        if f.check(SalonUnreachable):
            self._lost("the TURN server does not answer (ICMP port unreachable)")

    def _checked(self, result) -> None:
        self._checking = None

    # -- recovering ----------------------------------------------------------
    def _lost(self, reason: str) -> None:
        if self.lost_at is not None or not self._loop.running:
            return
        core = self.core
        self.lost_at = core.clock.seconds()
        core.log.info("relay lost ({reason}); allocating again", reason=reason)
        core.emit({"event": "relay-lost", "reason": reason, "server": "%s:%d" % self.relay.server})
        checking, self._checking = self._checking, None
        if checking is not None:
            checking.cancel()
        old = self.relay
        old.on_lost = lambda reason: None
        old.close()  # before the new one: it unhooks the old from the socket
        self._peer_relays.clear()
        self._learnt = 0
        self._allocate(old)

    def _allocate(self, old: Relay, credentials=None) -> None:
        self._call = None
        self._attempts += 1
        fresh = self.fresh = Relay(self.core.clock, self.core.salon, old.server, credentials or old.credentials)
        fresh.learn = self._learn
        fresh.start(old.peer_host or self.intro.peer_address.host).addCallbacks(self._allocated, self._failed)

    def _allocated(self, relayed: Address) -> None:
        self.core.log.debug("new relayed address {relayed}", relayed=relayed)
        self.core.emit({"event": "relay-allocated", "server": "%s:%d" % self.fresh.server,
                        "allocate_ms": self._ms(), "recovering": True})
        self._signal()

    def _failed(self, f: Failure) -> None:
        if f.check(defer.CancelledError) or self.fresh is None:
            return
        self.core.log.warn("relay: allocating again failed: {e}", e=f.getErrorMessage())
        failed, self.fresh = self.fresh, None
        failed.close()
        if f.check(TurnError) and f.value.code == 401 and self.core.turn is None:
            # the salon's room credentials no longer verify (a restarted salon
            # with another cookie secret): its next introduction has new ones
            self._ask_credentials(failed)
            return
        if self._attempts >= MAX_ATTEMPTS:
            self.core.emit({"event": "relay-failed", "reason": "allocating again: %s" % f.getErrorMessage()})
            return  # the keepalive ends the path; the re-join brings fresh credentials
        self._call = self.core.clock.callLater(self.check, self._allocate, failed)

    def _ask_credentials(self, old: Relay) -> None:
        """JOIN again as the same member, without a relayed address, until
        the salon introduces us with fresh TURN credentials, then allocate
        with them (bounded by the attempts like any allocation)."""
        self._call = None
        self._asks += 1
        if self._asks > MAX_ASKS or self.core.member is None:
            self.core.emit({"event": "relay-failed", "reason": "no fresh TURN credentials from the salon"})
            return
        self._req = signal_relay(self.core, self.intro, self._cookie, None)

        def answered(response) -> None:
            self._req = None
            try:
                ans = wire.parse_join_answer(response.message)
            except wire.WireError:
                ans = None
            if ans is not None and ans.kind is wire.Answer.COOKIE:
                self._cookie = ans.cookie
                self._ask_credentials(old)
            elif ans is not None and ans.kind is wire.Answer.INTRODUCED and ans.turn is not None:
                self.core.log.info("fresh TURN credentials from the salon: allocating again")
                self._allocate(old, ans.turn)
            else:  # waiting for the peer's JOIN (it lost its relay too): ask again
                self._call = self.core.clock.callLater(self.core.settings.relay_signal, self._ask_credentials, old)

        def failed(f: Failure) -> None:
            self._req = None
            if not f.check(defer.CancelledError):
                self._call = self.core.clock.callLater(self.core.settings.relay_signal, self._ask_credentials, old)

        self._req.addCallbacks(answered, failed)

    def _ms(self) -> float:
        return round((self.core.clock.seconds() - self.lost_at) * 1000, 1)

    def _signal(self) -> None:
        self._call = None
        fresh = self.fresh
        if fresh is None or fresh.relayed is None or self.core.member is None:
            return
        self._req = signal_relay(self.core, self.intro, self._cookie, fresh.relayed)
        self._req.addCallbacks(self._signalled, self._signal_failed)

    def _signalled(self, response) -> None:
        self._req = None
        cookie, relay = peer_relay(self.core, self.intro, response)
        if cookie is not None:
            self._cookie = cookie  # a restarted salon has another cookie secret
            self._signal()
            return
        if relay is not None and relay not in self._peer_relays:
            self._peer_relays.add(relay)
            self.puncher.add_candidate(relay, CandidateKind.RELAY)
            self.puncher.probe(relay)
        self._probe_fresh()  # at the signal's pace, not only at the ticks
        if self.lost_at is not None:
            # on until recovered: the peer's JOIN may still list its old address
            self._call = self.core.clock.callLater(self.core.settings.relay_signal, self._signal)

    def _signal_failed(self, f: Failure) -> None:
        self._req = None
        if not f.check(defer.CancelledError):
            self._call = self.core.clock.callLater(self.core.settings.relay_signal, self._signal)

    def _learn(self, payload: bytes, addr) -> None:
        """A probe of the peer through the new allocation, from a source not
        yet a candidate of its socket: one more, if the probe is genuine."""
        fresh = self.fresh
        src = Address(addr[0], addr[1])
        if fresh is None or (fresh.local, src) in self.puncher.pairs or self._learnt >= MAX_LEARNT:
            return
        if peer_request(self.puncher, payload):
            self._learnt += 1
            self.puncher.add_candidate(src, CandidateKind.PRFLX, fresh.local)

    def _fresh_pairs(self):
        fresh = self.fresh
        return [p for p in self.puncher.pairs.values()
                if p.local is fresh.local or (p.kind is CandidateKind.RELAY and p.address in self._peer_relays)]

    def _probe_fresh(self) -> None:
        if self.fresh is None or self.fresh.relayed is None:  # allocating
            return
        pairs = self._fresh_pairs()
        done = [p for p in pairs if p.verified and p.last_heard >= self.lost_at]
        if done:
            self._recovered(min(done, key=lambda p: (p.rank, p.rtt if p.rtt is not None else 1e9)))
            return
        for pair in pairs:
            self.puncher.probe(pair.address, pair.local)

    def _recovered(self, pair: CandidatePair) -> None:
        self._cancel_pending()
        relay, self.fresh = self.fresh, None
        relay.learn = None
        relay.on_lost = self._lost
        self.relay = relay
        self.recoveries += 1
        self._attempts = 0
        self._asks = 0
        took = self._ms()
        self.lost_at = None
        self.core.log.info("relayed path recovered through a new allocation")
        self.core.emit({"event": "relay-recovered", "server": "%s:%d" % relay.server, "recover_ms": took,
                        "peer": str(pair.address)})
        self.on_recovered(pair, relay)
