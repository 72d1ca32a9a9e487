"""One UDP socket, four kinds of datagram: :class:`ClientSocket` tells
apart payload frames (:mod:`natsalon.crypto.aead`), answers to our STUN
transactions with the salon, punch probes of the peer, and introductions the
salon pushes, and hands each to its consumer."""

from __future__ import annotations

from typing import Callable

from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from natsalon.client.stunsocket import Transactions
from natsalon.crypto.aead import is_frame
from natsalon.stun import Class, Method, StunDecodeError, decode
from natsalon.stun.client import RetransmitPolicy

#: JOIN retransmissions: fast at first (a lost JOIN costs little), about 14 s in all
JOIN_POLICY = RetransmitPolicy(rto=0.25, sends=7, last_wait=8, max_rto=2.0)


class ClientSocket(DatagramProtocol):
    """One UDP socket: STUN transactions with the salon, pushed salon
    indications, punch probes and payload frames, told apart here."""

    log = Logger()
    noisy = False

    def __init__(self, clock) -> None:
        self.stun = Transactions(clock, self.write, JOIN_POLICY)
        self.on_salon: Callable[[object, tuple], None] = lambda msg, addr: None
        self.on_punch: Callable[[bytes, tuple], bool] = lambda data, addr: False
        self.on_frame: Callable[[bytes, tuple], None] = lambda data, addr: None

    def write(self, data: bytes, addr) -> None:
        if self.transport is None:
            raise OSError("socket closed")
        self.transport.write(data, tuple(addr))

    def datagramReceived(self, data: bytes, addr) -> None:
        try:
            if is_frame(data):
                self.on_frame(data, addr)
            elif self.stun.datagram(data, addr):
                pass
            elif not self.on_punch(data, addr) and len(data) >= 20 and not data[0] & 0xC0:
                try:
                    msg = decode(data)
                except StunDecodeError:
                    return
                if msg.method == Method.JOIN and msg.cls == Class.INDICATION:
                    self.on_salon(msg, addr)
        except Exception:
            self.log.failure("error handling a datagram")

    def stopProtocol(self) -> None:
        self.stun.cancel_all()
