"""A service that keeps one UDP socket open while it runs.

Like ``twisted.application.internet.UDPServer``, but takes the reactor as an
argument and lets its owner bind early and learn the port the kernel chose
when asked for port 0 (:meth:`DatagramService.bind`).
"""

from __future__ import annotations

from typing import Optional

from twisted.application import service


class DatagramService(service.Service):
    def __init__(self, reactor, port: int, protocol, interface: str = "", listen=None) -> None:
        self.reactor = reactor
        #: listen(reactor, port, protocol, interface) -> IListeningPort
        self.listen = listen
        #: the port to bind (0: the kernel picks); read when binding
        self.port = port
        self.protocol = protocol
        self.interface = interface
        self._listening = None

    def bind(self):
        """Open the socket unless it is open; return the listening port
        (an ``IListeningPort``).  Raises ``CannotListenError``."""
        if self._listening is None:
            if self.listen is not None:
                self._listening = self.listen(self.reactor, self.port, self.protocol, self.interface)
            else:
                self._listening = self.reactor.listenUDP(self.port, self.protocol, interface=self.interface)
        return self._listening

    def unbind(self, at_once: bool = False):
        """Close the socket if it is open; return what ``stopListening``
        returns (a Deferred, or None).  ``at_once``: close it now, not at
        the reactor's next turn, so that its protocol can be bound again
        right away (a real UDP port lets its protocol go one turn later)."""
        listening, self._listening = self._listening, None
        if listening is None:
            return None
        if at_once and getattr(listening, "connected", False) and hasattr(listening, "connectionLost"):
            listening.connectionLost()  # what stopListening schedules for the next turn
            return None
        return listening.stopListening()

    @property
    def bound_port(self) -> Optional[int]:
        """The port number the socket is bound to; None while unbound."""
        if self._listening is None:
            return None
        return self._listening.getHost().port

    def privilegedStartService(self) -> None:
        # bind here, like twisted.application.internet's servers: before
        # twistd drops privileges, and so a bind error stops start-up early
        service.Service.privilegedStartService(self)
        self.bind()

    def startService(self) -> None:
        service.Service.startService(self)
        self.bind()

    def stopService(self):
        service.Service.stopService(self)
        return self.unbind()
