"""``twistd natclient``'s service: open the client (resolve the salon,
derive the keys, bind the socket and the forward port), start its machine,
and forward UDP over its connection.  The machine
(:mod:`natsalon.client.session`) is the only supervisor of the session:
it re-joins after failures and lost paths with backoff and jitter.  The
service only retries opening (a name that does not resolve yet, a forward
port still taken), with the same backoff."""

from __future__ import annotations

from typing import Optional

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from natsalon.client.api import Client, open_client
from natsalon.client.forward import Forwarder
from natsalon.client.session import Settings


class ClientService(service.Service):
    log = Logger()

    def __init__(self, reactor, options, open_client=open_client) -> None:
        self.reactor = reactor
        self.o = options
        self._open_client = open_client
        self.client: Optional[Client] = None
        self.forward_port = None
        self._opening: Optional[defer.Deferred] = None
        self._retry_call = None
        self._failures = 0
        self.observers = []  #: callables given every event (natsalon.ops counts them)

    @property
    def conn(self):
        return self.client.connection if self.client is not None else None

    def settings(self) -> Settings:
        c = self.o.checked
        return Settings(punch_timeout=min(c.punch_timeout, c.timeout), keepalive=c.keepalive,
                        dead_after=c.dead_after, retry=self.o.retry_policy)

    def startService(self) -> None:
        service.Service.startService(self)
        self._open()

    def _open(self) -> None:
        self._retry_call = None
        c = self.o.checked
        d = self._opening = self._open_client(
            self.reactor, c.servers, c.room, c.secret, port=c.port, interface=c.interface, lan=c.lan,
            encrypt=c.encrypt, settings=self.settings(), on_event=self._event, turn=c.turn,
            salon_tls=c.salon_tls, salon_ca=c.salon_ca, server6=c.server6, ipv6=c.ipv6, probe_cache=c.probe_cache)
        d.addCallback(self._opened)
        d.addErrback(self._open_failed)

    def _opened(self, client: Client) -> None:
        self._opening = None
        if not self.running:
            client.stop()
            return
        c = self.o.checked
        if c.forward is not None:
            host, port = c.forward
            try:
                self.forward_port = self.reactor.listenUDP(port, Forwarder(client.connection, c.deliver),
                                                           interface=host)
            except Exception:  # CannotListenError: port taken, address not ours, ...
                client.stop()
                raise
            self.log.info("forwarding {host}:{port}", host=host, port=self.forward_port.getHost().port)
        self._failures = 0
        self.client = client
        client.start()

    def _open_failed(self, f) -> None:
        self._opening = None
        if not self.running or f.check(defer.CancelledError):
            return
        self._failures += 1
        delay = self.o.retry_policy(self._failures)
        self.log.error("cannot start the client: {reason}; retry in {delay:.1f}s",
                       reason=f.getErrorMessage(), delay=delay)
        self._retry_call = self.reactor.callLater(delay, self._open)

    def _event(self, event: dict) -> None:
        for observe in self.observers:
            observe(event)
        # peer addresses only at debug level
        self.log.info("{event}", event={k: v for k, v in event.items() if k != "peer"})
        self.log.debug("peer {peer}", peer=event.get("peer"))

    def stopService(self):
        service.Service.stopService(self)
        if self._retry_call is not None and self._retry_call.active():
            self._retry_call.cancel()
        if self._opening is not None:
            self._opening.cancel()
        if self.client is not None:
            self.client.stop()
        if self.forward_port is not None:
            return self.forward_port.stopListening()
        return None
