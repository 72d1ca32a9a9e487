"""Local UDP port forwarding over a :class:`natsalon.client.connection.Connection`.

A local UDP socket (``--forward [HOST:]PORT``, default host 127.0.0.1):
every datagram an application sends to it goes to the peer; every datagram
from the peer goes to ``deliver`` (``--deliver HOST:PORT``) or, without it,
to the last local sender.  For example WireGuard on both hosts, each with
its peer ``Endpoint`` set to the local forward port.
"""

from __future__ import annotations

from typing import Optional, Tuple

from twisted.internet.protocol import DatagramProtocol


class Forwarder(DatagramProtocol):
    noisy = False

    def __init__(self, conn=None, deliver: Optional[Tuple[str, int]] = None) -> None:
        """``conn`` may come later (:meth:`attach`): the port can be bound
        before the peer is met; until then local datagrams are dropped."""
        self.conn = None
        self.deliver = deliver
        self.last_sender: Optional[tuple] = None
        self.to_peer = self.from_peer = self.dropped = 0
        if conn is not None:
            self.attach(conn)

    def attach(self, conn) -> None:
        self.conn = conn
        conn.set_receiver(self.peer_datagram)

    def datagramReceived(self, data: bytes, addr) -> None:
        if self.deliver is None:
            self.last_sender = addr
        if self.conn is not None and self.conn.send(data):
            self.to_peer += 1
        else:
            self.dropped += 1

    def peer_datagram(self, payload: bytes) -> None:
        to = self.deliver or self.last_sender
        if to is None or self.transport is None:
            self.dropped += 1
            return
        try:
            self.transport.write(payload, to)
            self.from_peer += 1
        except OSError:
            self.dropped += 1
