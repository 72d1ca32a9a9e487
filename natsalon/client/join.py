"""Joining a room: :class:`Joiner` fetches the salon's cookie, joins,
polls while it waits, and finishes on the introduction (the answer to a
poll, or an indication the salon pushes), verified end to end with the
room's k_join."""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Sequence, Tuple

from twisted.internet import defer

from natsalon import wire
from natsalon.wire import Answer
from natsalon.client.demux import JOIN_POLICY, ClientSocket
from natsalon.client.strategy.timing import SalonRtt, first_try
from natsalon.client.errors import ConnectFailed, IntroductionRefused, ModeMismatch, SalonUnreachable
from natsalon.crypto.secret import RoomKeys
from natsalon.stun import Address
from natsalon.stun.client import RetransmitPolicy, StunTimeout


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
    polling."""

    def __init__(self, clock, sock: ClientSocket, server: Tuple[str, int], keys: RoomKeys, nonce: bytes,
                 candidates: Sequence[Address], poll: float = 1.0, policy: RetransmitPolicy = JOIN_POLICY,
                 on_waiting: Callable[[], None] = lambda: None, leave_hash: Optional[bytes] = None,
                 plain: bool = False, nat: Optional[wire.NatSummary] = None,
                 rtt: Optional[SalonRtt] = None) -> None:
        self.clock = clock
        self.sock = sock
        self.server = server
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
        """End the join with ``error`` (e.g. the salon is unreachable); no-op once finished."""
        self._finish(error)

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
        req = self._req = self.sock.stun.request(msg, self.server, policy=self.policy, sha256_key=self.keys.k_join)
        req.addCallbacks(self._answer, self._no_answer)

    def _no_answer(self, f) -> None:
        if f.check(defer.CancelledError):
            return
        if f.check(StunTimeout):
            self._finish(SalonUnreachable("no answer from the salon at %s:%d" % self.server))
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
