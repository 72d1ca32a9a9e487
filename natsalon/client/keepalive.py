"""Liveness of a verified path: :class:`Keepalive` probes it every
``interval`` seconds (an authenticated PUNCH request through the session's
puncher; the peer answers and probes back) and reports the path dead when
nothing valid was heard from the peer on it for ``dead_after`` intervals.

It is the data of the client machine's ``Connected`` state: started on
entry, stopped on every way out.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet import task

from natsalon.client.punch import Puncher
from natsalon.stun import Address


class Keepalive:
    def __init__(self, clock, puncher: Puncher, address: Address, interval: float, dead_after: int,
                 on_dead: Callable[[float], None]) -> None:
        self.clock = clock
        self.puncher = puncher
        self.address = address
        self.interval = interval
        self.dead_after = dead_after
        self.on_dead = on_dead
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = clock

    def start(self) -> None:
        self._loop.start(self.interval, now=False)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def silence(self) -> float:
        """Seconds since the peer was last heard on the path."""
        return self.clock.seconds() - self.puncher.last_heard(self.address)

    def _tick(self) -> None:
        silent = self.silence()
        if silent >= self.dead_after * self.interval:
            self.stop()
            self.on_dead(silent)
        else:
            self.puncher.probe(self.address)
