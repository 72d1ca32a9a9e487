"""Joining a room: :class:`Joiner` fetches the salon's cookie, joins,
polls while it waits, and finishes on the introduction (the answer to a
poll, or an indication the salon pushes), verified end to end with the
room's k_join.

With several salons sharing their rooms (:class:`~natsalon.client.salons.Salons`),
the Joiner moves to the next one when its salon does not answer (the JOIN
times out, or :meth:`Joiner.unreachable` reports an ICMP port unreachable)
or answers 503 (retry later), and joins again there with the same nonce:
the shared registry refreshes the member, now held by the new salon.  A
503 with no other salon to try is retried later, never fatal."""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Sequence, Tuple

from twisted.internet import defer
from twisted.logger import Logger

from natsalon import wire
from natsalon.wire import Answer
from natsalon.client.demux import JOIN_POLICY, ClientSocket
from natsalon.client.strategy.timing import SalonRtt, first_try
from natsalon.client.errors import ConnectFailed, IntroductionRefused, ModeMismatch, SalonUnreachable
from natsalon.client.salons import Salons
from natsalon.crypto.secret import RoomKeys
from natsalon.stun import Address
from natsalon.stun.client import RetransmitPolicy, StunTimeout

#: the JOIN's schedule when another salon could be tried: a salon silent
#: for 3.75 s is left for the next (a lone salon keeps JOIN_POLICY, 9.75 s)
FAILOVER_POLICY = RetransmitPolicy(rto=0.25, sends=5, last_wait=4, max_rto=1.0)


def retry_later_delay(busy: int) -> float:
    """Seconds before joining a salon again after its ``busy``-th 503 in a
    row (1, 2, 4, then every 8 s)."""
    return min(2.0 ** (busy - 1), 8.0)


class Introduction(NamedTuple):
    observed: Optional[Address]  #: our public endpoint, as the salon saw it
    peer_address: Address  #: the peer's public endpoint, as the salon saw it
    peer: wire.PeerJoin  #: the peer's nonce and LAN candidates, verified with k_join
    nonce: bytes  #: our nonce in this join (the peer was told it)
    nat: wire.NatSummary = wire.UNKNOWN_NAT  #: our NAT summary in this join (the peer was told it)
    #: (username, password) for the salon's TURN relay, when it runs one
    turn: Optional[Tuple[str, str]] = None
    cookie: Optional[bytes] = None  #: the cookie our JOIN passed with (a later JOIN of this member reuses it)
    salon_rtt: Optional[float] = None  #: our round trip to the salon in our latest JOIN (the peer was told it)


class Joiner:
    """Join a room: fetch the cookie, join, poll while waiting, and finish
    on the introduction (a response to a poll, or a pushed indication).

    ``start()`` returns a Deferred that fires with an :class:`Introduction`
    or fails with :class:`~natsalon.client.errors.SalonUnreachable`,
    :class:`~natsalon.client.errors.IntroductionRefused`,
    :class:`~natsalon.client.errors.ModeMismatch` or
    :class:`~natsalon.client.errors.ConnectFailed`; cancelling it stops
    the polls.  ``on_waiting()`` is called once, when the salon first
    says the member waits.

    An introduction may name several members of the room (the salon cannot
    tell the genuine peer from someone who copied the room id): the first
    whose JOIN verifies with our k_join is the peer; the others are counted
    in ``impostors`` and ignored, and without a genuine one we keep
    polling.

    ``salons``: the salons that may be tried (their ``current`` one is
    joined first; by default ``server`` alone); ``on_switch(server)`` is
    called each time the Joiner moves to another one.  ``retry_later``
    maps the count of 503s in a row to the seconds before joining again."""

    log = Logger()

    def __init__(self, clock, sock: ClientSocket, server: Tuple[str, int], keys: RoomKeys, nonce: bytes,
                 candidates: Sequence[Address], poll: float = 1.0, policy: RetransmitPolicy = JOIN_POLICY,
                 on_waiting: Callable[[], None] = lambda: None, leave_hash: Optional[bytes] = None,
                 plain: bool = False, nat: Optional[wire.NatSummary] = None, salons: Optional[Salons] = None,
                 on_switch: Callable[[Tuple[str, int]], None] = lambda server: None,
                 failover_policy: RetransmitPolicy = FAILOVER_POLICY,
                 retry_later: Callable[[int], float] = retry_later_delay, rtt: Optional[SalonRtt] = None) -> None:
        self.clock = clock
        self.sock = sock
        self.salons = salons if salons is not None else Salons([server])
        self.server = self.salons.current
        self.on_switch = on_switch
        self.failover_policy = failover_policy
        self.retry_later = retry_later
        self._busy = 0  #: 503s in a row
        self.keys = keys
        self.nonce = nonce
        self.candidates = tuple(candidates)
        self.poll = poll
        self.policy = policy
        self.cookie: Optional[bytes] = None
        self.observed: Optional[Address] = None
        self.waiting = False
        self.on_waiting = on_waiting
        self.leave_hash = leave_hash
        self.flags = wire.JOIN_FLAG_PLAIN if plain else 0
        self.nat = nat  #: our NAT summary, in every JOIN of this member (None: not sent)
        #: the summary of our latest JOIN the salon answered (so holds; the peer sees it)
        self.acked_nat: Optional[wire.NatSummary] = None
        self._req_nat: Optional[wire.NatSummary] = None
        self.impostors = 0  #: introduced members whose JOIN did not verify
        #: our round trip to the salon: sampled from first tries, sent in our JOINs (None: neither)
        self.rtt = rtt
        self.sent_rtt: Optional[float] = None  #: the value our latest JOIN carried
        self._sent_at = 0.0
        self._cookies = 0
        self._d: Optional[defer.Deferred] = None
        self._req: Optional[defer.Deferred] = None
        self._poll_call = None

    def start(self) -> defer.Deferred:
        self._d = defer.Deferred(lambda _: self._stop())
        self.sock.on_salon = self._indication
        self._attempt()
        return self._d

    def abort(self, error: Exception) -> None:
        """End the join with ``error``; no-op once finished."""
        self._finish(error)

    def unreachable(self, error: Exception, server: Tuple[str, int]) -> None:
        """Nothing listens at ``server`` (an ICMP port unreachable): if it
        is still our salon, move to the next one, or end with ``error``
        when there is none."""
        if self._d is not None and tuple(server) == self.server:
            self._failover(error)

    def _failover(self, error: Exception) -> None:
        nxt = self.salons.failed(self.clock.seconds())
        if nxt is None:
            self._finish(error)
            return
        self.log.info("{error}; trying the salon at {host}:{port}", error=error, host=nxt[0], port=nxt[1])
        self._switch(nxt)
        self._attempt()

    def _switch(self, server: Tuple[str, int]) -> None:
        """Leave the current salon for ``server``: its cookie is of no use there."""
        self._stop()
        self.server = server
        self.cookie = None
        self._cookies = 0
        self.on_switch(server)

    def _later(self, error) -> None:
        """A 503 (retry later): the next salon at once, or this one after a while."""
        self._busy += 1
        nxt = self.salons.failed(self.clock.seconds())
        if nxt is not None:
            self.log.info("salon busy (503); trying the salon at {host}:{port}", host=nxt[0], port=nxt[1])
            self._switch(nxt)
            self._attempt()
            return
        if self.salons.current != self.server:
            self._switch(self.salons.current)
        delay = self.retry_later(self._busy)
        self.log.info("salon busy ({code} {reason}); joining again in {delay:.1f}s", code=error.code,
                      reason=error.reason, delay=delay)
        self._poll_call = self.clock.callLater(delay, self._attempt)

    def _stop(self) -> None:
        if self._poll_call is not None and self._poll_call.active():
            self._poll_call.cancel()
        self._poll_call = None
        req, self._req = self._req, None
        if req is not None and not req.called:
            req.cancel()

    def _finish(self, result) -> None:
        d, self._d = self._d, None
        self._stop()
        if d is not None:
            if isinstance(result, Exception):
                d.errback(result)
            else:
                d.callback(result)

    def _attempt(self) -> None:
        self._poll_call = None
        if self._d is None:
            return
        self.sent_rtt = self.rtt.value if self.rtt is not None else None
        # a new summary for a salon that holds an older one: an update, pushed
        # to a peer that may have arrived meanwhile
        update = wire.JOIN_FLAG_UPDATE if self.acked_nat is not None and self.nat != self.acked_nat else 0
        self._req_nat = self.nat
        msg, _ = wire.join_request(self.keys.room_id, self.nonce, self.candidates, self.keys.k_join, self.cookie,
                                   leave_hash=self.leave_hash, flags=self.flags | update, nat=self.nat,
                                   salon_rtt=self.sent_rtt)
        self._sent_at = self.clock.seconds()
        policy = self.failover_policy if len(self.salons) > 1 else self.policy
        req = self._req = self.sock.stun.request(msg, self.server, policy=policy, sha256_key=self.keys.k_join)
        req.addCallbacks(self._answer, self._no_answer)

    def _no_answer(self, f) -> None:
        if f.check(defer.CancelledError):
            return
        self._req = None
        if f.check(StunTimeout):
            self._failover(SalonUnreachable("no answer from the salon at %s:%d" % self.server))
        elif f.check(SalonUnreachable):  # said by the link to the salon (UDP, nor TCP/TLS)
            self._failover(f.value)
        else:
            self._finish(ConnectFailed(str(f.value)))

    def _answer(self, response) -> None:
        self._req = None
        if self._d is None:
            return
        if self.rtt is not None and first_try(self.clock.seconds() - self._sent_at, response.rtt, self.policy.rto):
            self.rtt.sample(response.rtt)
        try:
            ans = wire.parse_join_answer(response.message)
        except wire.WireError as e:
            self._finish(ConnectFailed("bad answer from the salon: %s" % e))
            return
        self.salons.answered()
        if ans.retry_later:
            self._later(ans.error)
            return
        if ans.kind is not Answer.COOKIE:
            self._busy = 0
        if ans.kind is Answer.COOKIE:
            self._cookie(ans.cookie)
        elif ans.kind is Answer.WAITING:
            self._waiting(ans.observed)
        elif ans.kind is Answer.INTRODUCED:
            self.acked_nat = self._req_nat
            self._introduced(ans)
        else:
            self._finish(IntroductionRefused(ans.error.code, ans.error.reason))

    def _cookie(self, cookie: bytes) -> None:
        self._cookies += 1
        if self._cookies > 5:
            self._finish(ConnectFailed("the salon keeps refusing our cookie"))
            return
        self.cookie = cookie
        self._attempt()

    def _waiting(self, observed: Optional[Address]) -> None:
        # the cookie worked: a later refusal (the salon's secret rolled
        # over while we waited) starts a new count
        self._cookies = 0
        self.observed = observed
        self.acked_nat = self._req_nat
        # a summary that came while this JOIN was out goes at once
        self._poll_call = self.clock.callLater(self.poll if self.nat == self.acked_nat else 0, self._attempt)
        if not self.waiting:
            self.waiting = True
            self.on_waiting()

    def update(self, nat: wire.NatSummary) -> None:
        """Our NAT summary is known: in our JOINs from now on, and in one
        at once if we wait between polls (else in the next one)."""
        self.nat = nat
        if self._d is not None and self._poll_call is not None and self._poll_call.active():
            self._poll_call.cancel()
            self._attempt()

    def _indication(self, msg, addr) -> None:
        if self._d is None or (addr[0], addr[1]) != tuple(self.server):
            return
        try:
            ans = wire.parse_join_answer(msg)
        except wire.WireError:
            return
        if ans.kind is Answer.INTRODUCED and ans.nonce == self.nonce and ans.room_id == self.keys.room_id:
            self._introduced(ans)

    def _introduced(self, ans: wire.JoinAnswer) -> None:
        found = self._genuine(ans.peers)
        if found is None:
            # nobody who knows the secret (yet): wait on; a poll is pending
            # unless this answered one, in which case schedule the next
            self.observed = ans.observed or self.observed
            if self._poll_call is None and self._req is None:
                self._poll_call = self.clock.callLater(self.poll, self._attempt)
            if not self.waiting:
                self.waiting = True
                self.on_waiting()
            return
        peer, address = found
        if (peer.flags ^ self.flags) & wire.JOIN_FLAG_PLAIN:
            self._finish(ModeMismatch(peer_plain=bool(peer.flags & wire.JOIN_FLAG_PLAIN)))
            return
        self._finish(Introduction(ans.observed or self.observed, address, peer, self.nonce,
                                  self.acked_nat or wire.UNKNOWN_NAT, ans.turn, self.cookie, self.sent_rtt))

    def _genuine(self, peers) -> Optional[Tuple[wire.PeerJoin, Address]]:
        """The first introduced member whose JOIN verifies and is not ours."""
        for raw, address in peers:
            try:
                peer = wire.verify_peer_join(raw, self.keys.k_join, self.keys.room_id)
            except wire.WireError:
                self.impostors += 1
                continue
            if peer.nonce != self.nonce:
                return peer, address
        return None
