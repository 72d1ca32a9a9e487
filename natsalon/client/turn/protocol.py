"""A UDP socket that holds one TURN allocation: the glue between
:class:`natsalon.client.turn.client.TurnClient` and Twisted."""

from __future__ import annotations

from typing import Callable

from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from natsalon.client.turn.client import TurnClient
from natsalon.stun import Address


class TurnClientProtocol(DatagramProtocol):
    """``client`` is the :class:`TurnClient`; relayed data goes to
    ``on_data(payload, peer)``."""

    log = Logger()
    noisy = False

    def __init__(self, clock, server, username: str, password: str, lifetime: int = 600) -> None:
        self.client = TurnClient(clock, self._write, server, username, password, lifetime)
        self.on_data: Callable[[bytes, Address], None] = lambda payload, peer: None

    def _write(self, data: bytes, addr) -> None:
        if self.transport is None:
            raise OSError("socket closed")
        self.transport.write(data, tuple(addr))

    def datagramReceived(self, data: bytes, addr) -> None:
        try:
            relayed = self.client.datagram(data, addr)
            if relayed is not None:
                self.on_data(*relayed)
        except Exception:
            self.log.failure("error handling a datagram from the TURN server")

    def stopProtocol(self) -> None:
        self.client.transactions.cancel_all()
