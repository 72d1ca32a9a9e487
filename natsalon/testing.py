"""Test fakes shipped with natsalon, so users can test code built on it.

:class:`FakeDatagramTransport` records what a DatagramProtocol writes and
enforces the UDP size limit, like twisted.names' test transport.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IUDPTransport
from zope.interface import implementer

MAX_UDP_PAYLOAD = 65507


@implementer(IUDPTransport)
class FakeDatagramTransport:
    def __init__(self, host: str = "127.0.0.1", port: int = 3478) -> None:
        self.written: List[Tuple[bytes, tuple]] = []
        self.host = host
        self.port = port
        self.connected: Optional[tuple] = None
        self.closed = False

    def write(self, packet: bytes, addr=None) -> None:
        if len(packet) > MAX_UDP_PAYLOAD:
            raise ValueError("message too long: %d bytes" % len(packet))
        if addr is None:
            if self.connected is None:
                raise ValueError("write without an address on an unconnected transport")
            addr = self.connected
        self.written.append((bytes(packet), tuple(addr)))

    def connect(self, host: str, port: int) -> None:
        self.connected = (host, port)

    def getHost(self):
        return IPv4Address("UDP", self.host, self.port)

    def stopListening(self):
        self.closed = True

    def setBroadcastAllowed(self, enabled: bool) -> None:
        pass

    def getBroadcastAllowed(self) -> bool:
        return False

    def getHandle(self):
        raise AttributeError("no socket behind a fake transport")

    def pop(self) -> List[Tuple[bytes, tuple]]:
        out, self.written = self.written, []
        return out
