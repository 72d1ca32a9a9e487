"""The introducer: the salon's JOIN and LEAVE handlers.

``Introducer.handle(msg, source, received_on)`` is registered in
``ServerState.handlers[Method.JOIN]`` (and :meth:`Introducer.handle_leave`
for ``Method.LEAVE``; :meth:`Introducer.handlers` gives both) and returns
a :class:`natsalon.server.binding.Reply` (or None), or a Deferred firing
with one when the room registry answers later.  For a JOIN it

1. checks the JOIN's shape (:func:`natsalon.wire.join.check_join_request`);
2. checks the return-routability cookie: without a valid one it answers
   401 with a fresh cookie, ``HMAC(server secret, time bucket, source IP,
   source port, room id)``, an answer smaller than the request (no
   amplification), so a spoofed source never gets registered nor makes the
   salon send more than that small answer to a victim;
3. passes the member to the room registry and answers WAITING (alone in
   the room), INTRODUCED listing the room's other members most recently
   seen first, or 409 / 429 / 503 (503 also while the registry is
   unreachable: retry later);
4. when a member is new to a room with others, pushes each of them a JOIN
   indication listing the newcomer first, so nobody waits for its next
   poll; likewise for a member's JOIN flagged ``JOIN_FLAG_UPDATE`` (its NAT
   summary, sent once after its join-time probe: both sides then learn the
   complete pair at one instant).

The salon never sees the secret: it cannot check the JOIN's
MESSAGE-INTEGRITY-SHA256, so it lists every member and the clients keep
the first whose JOIN verifies.  An introduction stays within
:data:`~natsalon.server.introducer.introductions.MAX_INTRODUCTION` bytes:
members that do not fit are left out, and when some are, the list starts
at another member every second, so none is left out of every answer.  The
introductions of one JOIN are put together from attributes built once
(:class:`~natsalon.server.introducer.introductions.Introductions`).

A LEAVE needs no cookie: it reveals the token whose hash the member's JOIN
carried, which only the member knew.  It is answered (20 bytes, less than
the request) when the registry removed the member, and not at all
otherwise.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence, Union

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger

from natsalon import wire
from natsalon.server.binding import Reply, error_response
from natsalon.server.introducer.cookies import COOKIE_SIZE, CookieJar
from natsalon.server.introducer.errors import RegistryUnavailable
from natsalon.server.introducer.introductions import TAILS, Introductions, TransactionIds, mapped_attribute
from natsalon.server.introducer.rooms import IRoomRegistry, JoinResult, Member, MemoryRooms, Outcome
from natsalon.ops.stats import Stats
from natsalon.stun import Address, Class, Message, Method

_ERRORS = {
    Outcome.FULL: 409,
    Outcome.TOO_MANY_FROM_SOURCE: 429,
    Outcome.TOO_MANY_ROOMS: wire.join.RETRY_LATER,
}
#: the stats key counting each outcome
_COUNTED = {outcome: "join_" + outcome.value for outcome in Outcome}

# The WAITING answer, the most frequent answer there is (every poll), put
# together from bytes: the header without its transaction id, the
# XOR-MAPPED-ADDRESS (which for IPv4 does not depend on the transaction id,
# cached per source) and NS-STATUS, taken once from the codec's own answer.
_WAITING_SAMPLE = wire.waiting_response(bytes(12), Address("0.0.0.0", 0))
_WAITING_HEAD, _WAITING_STATUS = _WAITING_SAMPLE[:8], _WAITING_SAMPLE[32:]
_WAITING_HEAD6 = _WAITING_HEAD[:2] + b"\x00\x20" + _WAITING_HEAD[4:]  # its length with an IPv6 address


def waiting_answer(txid: bytes, source: Address, tails: Dict[tuple, bytes], limit: int = TAILS) -> bytes:
    """:func:`natsalon.wire.waiting_response`, byte for byte, from parts
    (``tails``: source -> its XOR-MAPPED-ADDRESS, see
    :func:`~natsalon.server.introducer.introductions.mapped_attribute`)."""
    mapped = mapped_attribute(source, txid, tails, limit)
    return (_WAITING_HEAD if len(mapped) == 12 else _WAITING_HEAD6) + txid + mapped + _WAITING_STATUS


# The 401 with a cookie, likewise: the header without its transaction id,
# ERROR-CODE and NS-COOKIE's header, then the cookie (16 bytes, no padding).
_COOKIE_SAMPLE = wire.cookie_response(bytes(12), bytes(COOKIE_SIZE))
_COOKIE_HEAD, _COOKIE_MIDDLE = _COOKIE_SAMPLE[:8], _COOKIE_SAMPLE[20:-COOKIE_SIZE]


def cookie_answer(txid: bytes, cookie: bytes) -> bytes:
    """:func:`natsalon.wire.cookie_response`, byte for byte, from parts."""
    if len(cookie) != COOKIE_SIZE or len(txid) != 12:
        return wire.cookie_response(txid, cookie)
    return _COOKIE_HEAD + txid + _COOKIE_MIDDLE + cookie


class Introducer:
    """Answers JOIN and LEAVE requests; see the module docstring.

    ``handle`` and ``handle_leave`` answer at once, except when the room
    registry answers later (a registry may return Deferreds, see
    :class:`IRoomRegistry`): they then return a Deferred that fires with
    the reply, or with None when the registry failed (counted as
    ``join_registry_failed`` / ``leave_registry_failed`` and logged; the
    client's retransmission asks again).  A :class:`RegistryUnavailable`
    outage (Redis down), which its registry logs once, is not logged here:
    a JOIN is then answered 503, retry later (``join_retry_later``), and
    a LEAVE not at all.
    """

    log = Logger()

    def __init__(self, clock, rooms: Optional[IRoomRegistry] = None, cookies: Optional[CookieJar] = None,
                 push: Optional[Callable[[Reply], None]] = None, stats: Optional[Stats] = None) -> None:
        self.clock = clock
        self.rooms = rooms if rooms is not None else MemoryRooms()
        self.cookies = cookies or CookieJar()
        self.push = push
        self.stats = stats if stats is not None else Stats()
        #: the registry's prune while it runs (an asynchronous registry)
        self._pruning: Optional[Deferred] = None
        #: ``(room_id, now) -> (username, password)`` for the salon's TURN
        #: relay, added to every introduction; None: no relay
        self.turn_credentials: Optional[Callable[[bytes, float], tuple]] = None
        self._tails: Dict[tuple, bytes] = {}  #: for :func:`waiting_answer`
        self._txid = TransactionIds()  #: the pushed indications' transaction ids

    def handlers(self) -> Dict[int, Callable]:
        """The method handlers to register in ``ServerState.handlers``."""
        return {Method.JOIN: self.handle, Method.LEAVE: self.handle_leave}

    def prune(self) -> Optional[Deferred]:
        """Ask the registry to forget members not seen for its timeout.
        With a registry that answers later, returns a Deferred that fires
        (with None, never failing) when it has; while one prune runs,
        another is skipped (counted as ``rooms_prune_skipped``) rather
        than piled up."""
        if self._pruning is not None:
            self.stats["rooms_prune_skipped"] += 1
            return None
        result = self.rooms.prune(self.clock.seconds())
        if not isinstance(result, Deferred):
            self._pruned(result)
            return None
        self._pruning = result
        result.addCallbacks(self._pruned, self._prune_failed)
        result.addBoth(self._prune_done)
        return result

    def stop(self) -> None:
        """Cancel the registry's prune if one is running (the salon is
        stopping)."""
        if self._pruning is not None:
            self._pruning.cancel()

    def _pruned(self, n: int) -> None:
        if n:
            self.stats["members_expired"] += n

    def _prune_failed(self, failure) -> None:
        if failure.check(CancelledError, RegistryUnavailable):
            return
        self.stats["rooms_prune_failed"] += 1
        self.log.failure("the room registry failed to prune", failure)

    def _prune_done(self, _) -> None:
        self._pruning = None

    def _bad(self, msg: Message, to: tuple, received_on, error: wire.WireError) -> Optional[Reply]:
        """A 400 for a malformed request; the source is not verified yet:
        no answer larger than the request (none at all if it would be)."""
        self.log.debug("bad {method:#x} request: {reason}", method=msg.method, reason=error)
        data = error_response(msg.method, msg.transaction_id, False, 400, request_size=len(msg.raw))
        return Reply(received_on, to, data) if data is not None else None

    def handle(self, msg: Message, source: Address, received_on) -> Union[Reply, None, Deferred]:
        if msg.cls != Class.REQUEST:
            self.stats["join_not_request"] += 1
            return None
        to = (source.host, source.port)
        txid = msg.transaction_id
        try:
            req = wire.join.check_join_request(msg)
        except wire.WireError as e:
            self.stats["join_bad"] += 1
            return self._bad(msg, to, received_on, e)
        now = self.clock.seconds()
        if not self.cookies.check(req.cookie, source, req.room_id, now):
            self.stats["join_cookie_sent"] += 1
            return Reply(received_on, to, cookie_answer(txid, self.cookies.issue(source, req.room_id, now)))
        member = Member(req.nonce, source, msg.raw, received_on, req.leave_hash)
        result = self.rooms.join(req.room_id, member, now)
        if result.__class__ is not JoinResult and isinstance(result, Deferred):
            return result.addCallbacks(self._joined, self._join_failed, callbackArgs=(txid, req, member),
                                       errbackArgs=(txid, to, received_on))
        return self._joined(result, txid, req, member)

    def _join_failed(self, failure, txid: bytes, to: tuple, received_on) -> Optional[Reply]:
        """The registry could not place a member: while it is unreachable
        the JOIN is answered 503 (retry later: the client tries another
        salon, or this one again shortly; no log line, the registry logs
        the outage once); any other failure is logged and not answered."""
        if self._registry_failed(failure, "join") is RegistryUnavailable:
            self.stats["join_retry_later"] += 1
            return Reply(received_on, to, wire.join.retry_later(txid))
        return None

    def _registry_failed(self, failure, call: str):
        """Count a failed registry call; RegistryUnavailable for an outage
        (which the registry logs once), None for anything else (logged)."""
        self.stats[call + "_registry_failed"] += 1
        if failure.check(RegistryUnavailable):
            return RegistryUnavailable
        self.log.failure("the room registry failed a {call}", failure, call=call.upper())
        return None

    def _joined(self, result: JoinResult, txid: bytes, req: wire.join.SalonJoin, member: Member) -> Reply:
        """The answer to ``member``'s JOIN once the registry has placed it;
        a newcomer is announced to the room's other members too."""
        outcome = result.outcome
        self.stats[_COUNTED[outcome]] += 1
        source, received_on = member.address, member.via
        to = (source.host, source.port)
        if outcome is Outcome.WAITING:
            return Reply(received_on, to, waiting_answer(txid, source, self._tails))
        if outcome is not Outcome.INTRODUCED:
            return Reply(received_on, to, wire.join_error(txid, _ERRORS[outcome]))
        intros = Introductions(req.room_id, self._turn(req.room_id), self._tails)
        now = int(self.clock.seconds())
        if result.others and (result.newcomer or req.flags & wire.join.JOIN_FLAG_UPDATE):
            # a newcomer, or a member's updated JOIN (its NAT summary, measured
            # after it registered): the others are told at once
            self._announce(intros, member, result.others, now, update=not result.newcomer)
        data = intros.message(txid, source, req.nonce, None, result.others, now)
        if data is None:
            return Reply(received_on, to, waiting_answer(txid, source, self._tails))
        return Reply(received_on, to, data)

    def _turn(self, room_id: bytes) -> Optional[tuple]:
        """The room's TURN credentials (only ever for members past the cookie check)."""
        if self.turn_credentials is None:
            return None
        return self.turn_credentials(room_id, self.clock.seconds())

    def _announce(self, intros: Introductions, newcomer: Member, others: Sequence[Member], now: int,
                  update: bool = False) -> None:
        """Push each of ``others`` an introduction listing ``newcomer``
        first, then the rest of the room (``update``: a member's updated
        JOIN, counted as ``updates_pushed``, not as an introduction)."""
        if self.push is None:
            return
        counted = "updates_pushed" if update else "introductions_pushed"
        for peer in others:
            rest = [m for m in others if m is not peer] if len(others) > 1 else ()
            data = intros.message(self._txid(), peer.address, peer.nonce, newcomer, rest, now, indication=True)
            if data is None:
                return  # a JOIN too large to hand on: nobody is told of it
            self.push(Reply(peer.via, (peer.address.host, peer.address.port), data))
            self.stats[counted] += 1

    def handle_leave(self, msg: Message, source: Address, received_on) -> Union[Reply, None, Deferred]:
        """A LEAVE: the member whose JOIN carried the hash of the revealed
        token is removed and the LEAVE answered; anything else is counted
        (``leave_refused``) and not answered."""
        if msg.cls != Class.REQUEST:
            self.stats["leave_not_request"] += 1
            return None
        to = (source.host, source.port)
        try:
            req = wire.parse_leave_request(msg)
        except wire.WireError as e:
            self.stats["leave_bad"] += 1
            return self._bad(msg, to, received_on, e)
        result = self.rooms.leave(req.room_id, req.nonce, wire.leave_hash(req.token), self.clock.seconds())
        if isinstance(result, Deferred):
            return result.addCallbacks(self._left, self._leave_failed,
                                       callbackArgs=(msg.transaction_id, to, received_on))
        return self._left(result, msg.transaction_id, to, received_on)

    def _leave_failed(self, failure) -> None:
        """A LEAVE the registry could not apply goes unanswered (the member
        expires after its timeout anyway)."""
        self._registry_failed(failure, "leave")

    def _left(self, left: bool, txid: bytes, to: tuple, received_on) -> Optional[Reply]:
        if not left:
            self.stats["leave_refused"] += 1
            return None
        self.stats["leaves"] += 1
        return Reply(received_on, to, wire.leave_response(txid))
