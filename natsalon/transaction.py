"""Client-side STUN transactions: retransmission and response matching.

:class:`StunClient` holds no socket: it is given a ``send(data, addr)``
callable and a clock, and is fed every datagram the owner receives through
:meth:`StunClient.datagram`.  ``request()`` returns a Deferred that fires
with a :class:`Response` or fails with :class:`StunTimeout` after the
RFC 8489 section 6.2.1 schedule (sends at 0, RTO, 3 RTO, 7 RTO, ... then a
final wait).  Responses with unknown transaction ids, malformed datagrams
and responses that arrive after the transaction ended are ignored.
:class:`StunClientProtocol` puts a StunClient on its own UDP socket.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Dict, NamedTuple, Optional

from twisted.internet import defer
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from .stun import Address, Class, Message, StunDecodeError, decode, encode


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


def new_transaction_id() -> bytes:
    return os.urandom(12)


class _Pending:
    __slots__ = ("deferred", "calls", "sent_at")

    def __init__(self, deferred) -> None:
        self.deferred = deferred
        self.calls = []
        self.sent_at = 0.0


class StunClient:
    def __init__(self, clock, send: Callable[[bytes, tuple], None],
                 policy: RetransmitPolicy = RetransmitPolicy()) -> None:
        self.clock = clock
        self.send = send
        self.policy = policy
        self._pending: Dict[bytes, _Pending] = {}

    def request(self, msg: Message, addr: tuple, policy: Optional[RetransmitPolicy] = None,
                **encode_args) -> defer.Deferred:
        """Send ``msg`` (a request) to ``addr`` and retransmit until a
        response with its transaction id arrives."""
        policy = policy or self.policy
        txid = msg.transaction_id
        data = encode(msg, **encode_args)
        d = defer.Deferred(lambda _: self._finish(txid))
        pending = _Pending(d)
        self._pending[txid] = pending
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
        return d

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
            pending.deferred.errback(StunTimeout("no STUN response from %s:%s" % tuple(addr[:2])))

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
        pending.deferred.callback(Response(msg, Address(addr[0], addr[1]), rtt))
        return True

    def cancel_all(self) -> None:
        for txid in list(self._pending):
            pending = self._finish(txid)
            if pending is not None and not pending.deferred.called:
                pending.deferred.cancel()

    def __len__(self) -> int:
        return len(self._pending)


class StunClientProtocol(DatagramProtocol):
    """A UDP socket that runs STUN transactions.  Datagrams that answer no
    pending transaction go to ``on_other(data, addr)`` when given."""

    log = Logger()
    noisy = False

    def __init__(self, clock, policy: RetransmitPolicy = RetransmitPolicy(),
                 on_other: Optional[Callable] = None) -> None:
        self.client = StunClient(clock, self._send, policy)
        self.on_other = on_other

    def _send(self, data: bytes, addr) -> None:
        if self.transport is not None:
            self.transport.write(data, addr)

    def request(self, msg: Message, addr: tuple, **kw) -> defer.Deferred:
        return self.client.request(msg, addr, **kw)

    def datagramReceived(self, data: bytes, addr) -> None:
        try:
            if not self.client.datagram(data, addr) and self.on_other is not None:
                self.on_other(data, addr)
        except Exception:
            self.log.failure("error handling datagram from {addr}", addr=addr)

    def stopProtocol(self) -> None:
        self.client.cancel_all()
