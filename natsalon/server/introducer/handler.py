"""The introducer: the salon's JOIN handler.

``Introducer.handle(msg, source, received_on)`` is registered in
``ServerState.handlers[Method.JOIN]`` and returns a
:class:`natsalon.server.binding.Reply` (or None), or a Deferred firing
with one when the room registry answers later.  It

1. checks the JOIN's shape (:func:`natsalon.wire.parse_join_request`);
2. checks the return-routability cookie: without a valid one it answers
   401 with a fresh cookie, ``HMAC(server secret, time bucket, source IP,
   source port, room id)``, an answer smaller than the request (no
   amplification), so a spoofed source never gets registered nor makes the
   salon send more than that small answer to a victim;
3. passes the member to the room registry and answers waiting /
   introduced / 409 / 429 / 503;
4. on the join that pairs a room, pushes the introduction to the waiting
   member as a JOIN indication (its poll, the next join, gets it again).

The salon never sees the secret: it cannot check the JOIN's
MESSAGE-INTEGRITY-SHA256; it hands the JOIN to the peer, which does.
"""

from __future__ import annotations

import os
from typing import Callable, Optional, Union

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger

from natsalon import wire
from natsalon.server.binding import Reply, error_response
from natsalon.server.introducer.cookies import CookieJar
from natsalon.server.introducer.rooms import IRoomRegistry, JoinResult, Member, MemoryRooms, Outcome
from natsalon.ops.stats import Stats
from natsalon.stun import Address, Class, Message, Method

_ERRORS = {
    Outcome.FULL: 409,
    Outcome.TOO_MANY_FROM_SOURCE: 429,
    Outcome.TOO_MANY_ROOMS: 503,
}


class Introducer:
    """Answers JOIN requests; see the module docstring.

    ``handle`` answers at once, except when the room registry answers later
    (a registry may return Deferreds, see :class:`IRoomRegistry`): it then
    returns a Deferred that fires with the reply, or with None when the
    registry failed (counted as ``join_registry_failed`` and logged; the
    client's retransmission asks again).
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

    def prune(self) -> Optional[Deferred]:
        """Ask the registry to forget expired rooms.  With a registry that
        answers later, returns a Deferred that fires (with None, never
        failing) when it has; while one prune runs, another is skipped
        (counted as ``rooms_prune_skipped``) rather than piled up."""
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
            self.stats["rooms_expired"] += n

    def _prune_failed(self, failure) -> None:
        if failure.check(CancelledError):
            return
        self.stats["rooms_prune_failed"] += 1
        self.log.failure("the room registry failed to prune", failure)

    def _prune_done(self, _) -> None:
        self._pruning = None

    def handle(self, msg: Message, source: Address, received_on) -> Union[Reply, None, Deferred]:
        if msg.cls != Class.REQUEST:
            self.stats["join_not_request"] += 1
            return None
        to = (source.host, source.port)
        txid = msg.transaction_id
        try:
            req = wire.parse_join_request(msg)
        except wire.WireError as e:
            self.stats["join_bad"] += 1
            self.log.debug("bad JOIN: {reason}", reason=e)
            # the source is not verified yet: no answer larger than the request
            data = error_response(Method.JOIN, txid, False, 400, request_size=len(msg.raw))
            return Reply(received_on, to, data) if data is not None else None
        now = self.clock.seconds()
        if not self.cookies.check(req.cookie, source, req.room_id, now):
            self.stats["join_cookie_sent"] += 1
            return Reply(received_on, to, wire.cookie_response(txid, self.cookies.issue(source, req.room_id, now)))
        member = Member(req.nonce, source, msg.raw, received_on)
        result = self.rooms.join(req.room_id, member, now)
        if isinstance(result, Deferred):
            return result.addCallbacks(self._joined, self._join_failed, callbackArgs=(txid, req, member))
        return self._joined(result, txid, req, member)

    def _join_failed(self, failure) -> None:
        self.stats["join_registry_failed"] += 1
        self.log.failure("the room registry failed a JOIN", failure)
        return None

    def _joined(self, result: JoinResult, txid: bytes, req: wire.JoinRequest, member: Member) -> Reply:
        """The answer to ``member``'s JOIN once the registry has placed it;
        on the join that pairs a room, the introduction is pushed to the
        waiting peer too."""
        outcome = result.outcome
        self.stats["join_" + outcome.value] += 1
        source, received_on = member.address, member.via
        to = (source.host, source.port)
        if outcome is Outcome.WAITING:
            return Reply(received_on, to, wire.waiting_response(txid, source))
        if outcome is not Outcome.INTRODUCED:
            return Reply(received_on, to, wire.join_error(txid, _ERRORS[outcome]))
        peer = result.peer
        if result.newly_paired and self.push is not None:
            self.push(Reply(peer.via, (peer.address.host, peer.address.port), wire.introduction(
                os.urandom(12), peer.address, peer.nonce, req.room_id, member.blob, source, indication=True)))
            self.stats["introductions_pushed"] += 1
            self.log.info("room paired")
        return Reply(received_on, to, wire.introduction(
            txid, source, req.nonce, req.room_id, peer.blob, peer.address))
