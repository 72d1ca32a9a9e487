"""The probe's UDP socket: a STUN client that also reports ICMP and send
errors and hands expected unsolicited messages to a callback."""

from __future__ import annotations

from typing import Callable, Dict, List

from natsalon.client.stunsocket import StunClientProtocol
from natsalon.stun import Address, Message, StunDecodeError, decode


class ProbeSocket(StunClientProtocol):
    """A StunClientProtocol that also reports ICMP errors and send errors,
    and hands unsolicited STUN messages whose transaction id it was told
    to expect to a callback (hairpin and lifetime tests)."""

    def __init__(self, clock, name: str, on_refused: Callable[["ProbeSocket"], None]) -> None:
        StunClientProtocol.__init__(self, clock, on_other=self._unsolicited)
        self.name = name
        self.on_refused = on_refused
        self.send_errors: List[OSError] = []
        self.expect: Dict[bytes, Callable[[Message, tuple], None]] = {}
        self.port = None  #: the IListeningPort
        self.closing = False  #: set when the prober closes it

    def _send(self, data: bytes, addr) -> None:
        try:
            StunClientProtocol._send(self, data, addr)
        except OSError as e:
            self.send_errors.append(e)
            raise

    def connectionRefused(self) -> None:
        self.on_refused(self)

    def stopProtocol(self) -> None:
        # The epoll reactor closes a connected UDP socket on the EPOLLERR an
        # ICMP port unreachable raises, without calling connectionRefused.
        if not self.closing:
            self.on_refused(self)
        StunClientProtocol.stopProtocol(self)

    def _unsolicited(self, data: bytes, addr) -> None:
        if len(data) < 20:
            return
        callback = self.expect.get(bytes(data[8:20]))
        if callback is None:
            return
        try:
            msg = decode(data)
        except StunDecodeError:
            return
        callback(msg, addr)

    @property
    def local(self) -> Address:
        host = self.transport.getHost()
        return Address(host.host, host.port)


def default_listen(reactor, family: int = 4) -> Callable:
    """``listen(protocol) -> IListeningPort`` on a fresh UDP port of IP
    version ``family`` (4 or 6)."""
    interface = "::" if family == 6 else "0.0.0.0"
    return lambda proto: reactor.listenUDP(0, proto, interface=interface)
