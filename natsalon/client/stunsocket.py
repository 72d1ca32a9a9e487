"""STUN transactions as Deferreds: the glue between the sans-IO
:class:`natsalon.stun.client.StunClient` and Twisted.

:class:`Transactions` runs transactions as Deferreds that fire with a
:class:`~natsalon.stun.client.Response` or fail with
:class:`~natsalon.stun.client.StunTimeout`; cancelling one forgets the
transaction.  :class:`StunClientProtocol` puts a StunClient on its own UDP
socket (the prober's sockets, the loopback tests).
"""

from __future__ import annotations

from typing import Callable, Dict, Optional

from twisted.internet import defer
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from natsalon.stun import Message
from natsalon.stun.client import RetransmitPolicy, StunClient, StunTimeout


class Transactions:
    """A :class:`StunClient` whose requests are Deferreds: ``request()``
    fires with a :class:`~natsalon.stun.client.Response` or fails with
    :class:`~natsalon.stun.client.StunTimeout`; cancelling the Deferred
    forgets the transaction; :meth:`cancel_all` cancels every pending one."""

    def __init__(self, clock, send: Callable[[bytes, tuple], None],
                 policy: RetransmitPolicy = RetransmitPolicy()) -> None:
        self.client = StunClient(clock, send, policy)
        self._waiting: Dict[bytes, defer.Deferred] = {}

    def request(self, msg: Message, addr: tuple, **kw) -> defer.Deferred:
        """``kw`` as :meth:`natsalon.stun.client.StunClient.request`."""
        txid = msg.transaction_id

        def cancel(_) -> None:
            self._waiting.pop(txid, None)
            self.client.cancel(txid)

        def done(outcome) -> None:
            self._waiting.pop(txid, None)
            if isinstance(outcome, StunTimeout):
                d.errback(outcome)
            else:
                d.callback(outcome)

        d = self._waiting[txid] = defer.Deferred(cancel)
        self.client.request(msg, addr, done, **kw)
        return d

    def datagram(self, data: bytes, addr) -> bool:
        """Offer a received datagram; True if it answered a pending request."""
        return self.client.datagram(data, addr)

    def cancel_all(self) -> None:
        for d in list(self._waiting.values()):
            d.cancel()

    def __len__(self) -> int:
        return len(self._waiting)


class StunClientProtocol(DatagramProtocol):
    """A UDP socket that runs STUN transactions.  Datagrams that answer no
    pending transaction go to ``on_other(data, addr)`` when given."""

    log = Logger()
    noisy = False

    def __init__(self, clock, policy: RetransmitPolicy = RetransmitPolicy(),
                 on_other: Optional[Callable] = None) -> None:
        self.client = Transactions(clock, self._send, policy)
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
