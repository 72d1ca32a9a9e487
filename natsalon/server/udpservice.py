"""A service that keeps one UDP socket open while it runs.

Like ``twisted.application.internet.UDPServer``, but takes the reactor as an
argument and exposes the listening port, so the owner can learn the port
the kernel chose when asked for port 0.
"""

from __future__ import annotations

from twisted.application import service


class DatagramService(service.Service):
    def __init__(self, reactor, port: int, protocol, interface: str = "", listen=None) -> None:
        self.reactor = reactor
        #: listen(reactor, port, protocol, interface) -> IListeningPort
        self.listen = listen
        self.port = port
        self.protocol = protocol
        self.interface = interface
        self.listening = None

    def privilegedStartService(self) -> None:
        # bind here, like twisted.application.internet's servers: before
        # twistd drops privileges, and so a bind error stops start-up early
        service.Service.privilegedStartService(self)
        if self.listening is None:
            self._listen()

    def startService(self) -> None:
        service.Service.startService(self)
        if self.listening is None:
            self._listen()

    def _listen(self) -> None:
        if self.listen is not None:
            self.listening = self.listen(self.reactor, self.port, self.protocol, self.interface)
        else:
            self.listening = self.reactor.listenUDP(self.port, self.protocol, interface=self.interface)

    def stopService(self):
        service.Service.stopService(self)
        listening, self.listening = self.listening, None
        if listening is not None:
            return listening.stopListening()
        return None

    @property
    def bound_port(self) -> int:
        return self.listening.getHost().port
