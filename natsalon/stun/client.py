"""Client-side STUN transactions, sans-IO: retransmission and response
matching.

:class:`StunClient` holds no socket and no reactor: it is given a
``send(data, addr)`` callable and a clock (anything with ``seconds()`` and
``callLater()``, such as the reactor or :class:`twisted.internet.task.Clock`),
and is fed every datagram its owner receives through
:meth:`StunClient.datagram`.  :meth:`StunClient.request` sends a request
and calls ``on_done`` exactly once: with a :class:`Response`, or with a
:class:`StunTimeout` after the RFC 8489 section 6.2.1 schedule (sends at 0,
RTO, 3 RTO, 7 RTO, ... then a final wait).  Responses with unknown
transaction ids, malformed datagrams and responses that arrive after the
transaction ended are ignored.  The Deferred-returning glue for protocols
is :mod:`natsalon.client.stunsocket`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Dict, List, NamedTuple, Optional, Union

from natsalon.stun.attributes import Address
from natsalon.stun.constants import Class
from natsalon.stun.errors import StunDecodeError
from natsalon.stun.message import Message, decode, encode


class StunTimeout(Exception):
    """No response arrived within the retransmission schedule."""


@dataclass(frozen=True)
class RetransmitPolicy:
    """RFC 8489 section 6.2.1: ``rto`` is the first timeout, doubled after
    each send, capped at ``max_rto``; ``sends`` requests in all (Rc), then
    a last wait of ``last_wait`` RTOs (Rm)."""

    rto: float = 0.5
    sends: int = 7
    last_wait: float = 16.0
    max_rto: float = 8.0

    def schedule(self):
        """``(offsets_of_each_send, total_timeout)`` in seconds."""
        offsets, t, rto = [], 0.0, self.rto
        for _ in range(self.sends):
            offsets.append(t)
            t += rto
            rto = min(rto * 2, self.max_rto)
        total = offsets[-1] + self.rto * self.last_wait if self.sends else 0.0
        return offsets, total


class Response(NamedTuple):
    message: Message
    source: Address  #: where the response came from
    rtt: float  #: seconds from the first send (or last retransmission) to the answer


#: what ``on_done`` receives
Outcome = Union[Response, StunTimeout]


def new_transaction_id() -> bytes:
    return os.urandom(12)


class _Pending:
    __slots__ = ("on_done", "calls", "sent_at")

    def __init__(self, on_done: Callable[[Outcome], None]) -> None:
        self.on_done = on_done
        self.calls: List = []
        self.sent_at = 0.0


class StunClient:
    def __init__(self, clock, send: Callable[[bytes, tuple], None],
                 policy: RetransmitPolicy = RetransmitPolicy()) -> None:
        self.clock = clock
        self.send = send
        self.policy = policy
        self._pending: Dict[bytes, _Pending] = {}

    def request(self, msg: Message, addr: tuple, on_done: Callable[[Outcome], None],
                policy: Optional[RetransmitPolicy] = None, **encode_args) -> bytes:
        """Send ``msg`` (a request) to ``addr``, retransmit until a response
        with its transaction id arrives, then call ``on_done`` once.
        Returns the transaction id (for :meth:`cancel`)."""
        policy = policy or self.policy
        txid = msg.transaction_id
        data = encode(msg, **encode_args)
        pending = self._pending[txid] = _Pending(on_done)
        offsets, total = policy.schedule()

        def send_now():
            pending.sent_at = self.clock.seconds()
            try:
                self.send(data, addr)
            except OSError:
                pass  # e.g. no route: the schedule goes on; the timeout reports it

        for offset in offsets:
            pending.calls.append(self.clock.callLater(offset, send_now))
        pending.calls.append(self.clock.callLater(total, self._timeout, txid, addr))
        return txid

    def cancel(self, txid: bytes) -> bool:
        """Forget a transaction without calling its ``on_done``; True if it was pending."""
        return self._finish(txid) is not None

    def _finish(self, txid: bytes) -> Optional[_Pending]:
        pending = self._pending.pop(txid, None)
        if pending is not None:
            for call in pending.calls:
                if call.active():
                    call.cancel()
        return pending

    def _timeout(self, txid: bytes, addr) -> None:
        pending = self._finish(txid)
        if pending is not None:
            pending.on_done(StunTimeout("no STUN response from %s:%s" % tuple(addr[:2])))

    def datagram(self, data: bytes, addr) -> bool:
        """Offer a received datagram; True if it answered a pending request."""
        if len(data) < 20 or data[0] & 0xC0:
            return False
        try:
            msg = decode(data)
        except StunDecodeError:
            return False
        if msg.cls not in (Class.SUCCESS, Class.ERROR):
            return False
        pending = self._finish(msg.transaction_id)
        if pending is None:
            return False
        rtt = self.clock.seconds() - pending.sent_at
        pending.on_done(Response(msg, Address(addr[0], addr[1]), rtt))
        return True

    def cancel_all(self) -> None:
        for txid in list(self._pending):
            self._finish(txid)

    def __len__(self) -> int:
        return len(self._pending)
