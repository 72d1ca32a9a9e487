"""Test fakes for the salon server, shipped so code built on it (a room
registry of one's own, a service wrapping the salon) can be tested the
same way.

:class:`UDPClock` is a :class:`twisted.internet.task.Clock` that can also
"listen" on UDP ports (Twisted's ``MemoryReactor`` does not do UDP): each
listening port is a :class:`natsalon.testing.FakeDatagramTransport`
(:class:`FakeUDPPort`), so a
whole :class:`natsalon.server.service.SalonService` starts, ticks and
answers without a socket.

:class:`LaterRooms` wraps a room registry and answers each call through a
Deferred that the test fires, the way a registry across the network (Redis)
answers.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from zope.interface import implementer

from natsalon.server.introducer.rooms import IRoomRegistry, MemoryRooms
from natsalon.testing import FakeDatagramTransport


class FakeUDPPort(FakeDatagramTransport):
    """A listening port made by :class:`UDPClock`: a fake transport that,
    like a real port, stops its protocol when it stops listening."""

    def __init__(self, host: str, port: int, protocol) -> None:
        super().__init__(host, port)
        self.protocol = protocol

    def stopListening(self):
        if not self.closed:
            super().stopListening()
            self.protocol.doStop()
        return None


class UDPClock(Clock):
    """A Clock with ``listenUDP``; a port asked for as 0 gets the next free
    number from ``first_port`` up."""

    def __init__(self, first_port: int = 40000) -> None:
        super().__init__()
        self.udp: Dict[Tuple[str, int], FakeUDPPort] = {}
        self._next_port = first_port

    def listenUDP(self, port: int, protocol, interface: str = "", maxPacketSize: int = 8192):
        if port == 0:
            port, self._next_port = self._next_port, self._next_port + 1
        transport = FakeUDPPort(interface, port, protocol)
        protocol.makeConnection(transport)
        self.udp[(interface, port)] = transport
        return transport


@implementer(IRoomRegistry)
class LaterRooms:
    """A registry (``MemoryRooms`` unless given one) whose calls answer
    through Deferreds: each call is queued; :meth:`answer` runs the oldest
    queued call on the wrapped registry and fires its Deferred with the
    result, :meth:`fail` fails it instead."""

    def __init__(self, rooms=None) -> None:
        self.rooms = rooms if rooms is not None else MemoryRooms()
        self.queued: List[Tuple[Deferred, Callable[[], object]]] = []

    def join(self, room_id: bytes, member, now: float) -> Deferred:
        return self._queue(lambda: self.rooms.join(room_id, member, now))

    def leave(self, room_id: bytes, nonce: bytes, leave_hash: bytes, now: float) -> Deferred:
        return self._queue(lambda: self.rooms.leave(room_id, nonce, leave_hash, now))

    def prune(self, now: float) -> Deferred:
        return self._queue(lambda: self.rooms.prune(now))

    def _queue(self, call: Callable[[], object]) -> Deferred:
        d = Deferred()
        self.queued.append((d, call))
        return d

    def answer(self) -> None:
        d, call = self.queued.pop(0)
        d.callback(call())

    def fail(self, error: Optional[Exception] = None) -> None:
        d, _ = self.queued.pop(0)
        d.errback(error if error is not None else RuntimeError("registry unreachable"))
