"""``twistd natclient``: a long-running natsalon endpoint.

Takes the options of ``natsalon connect``; keeps trying to connect (a new
attempt ``--retry`` seconds after a failure), forwards UDP while connected,
and re-punches through the salon when the path dies (the connection does
that itself).  Events go to the twistd log.
"""

from __future__ import annotations

from typing import Optional

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python import usage

from natsalon.cli.connect import SecretError, load_secret
from natsalon.client.forward import Forwarder
from natsalon.net.hostport import parse_local, parse_server


def _float(value, name: str, low: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise usage.UsageError("%s: %r is not a number" % (name, value)) from None
    if v < low:
        raise usage.UsageError("%s: %g is below %g" % (name, v, low))
    return v


class Options(usage.Options):
    synopsis = "--server HOST[:PORT] --room ROOM (--secret-file F | --secret S | $NATSALON_SECRET) [options]"
    longdesc = "Meet a peer in a natsalon room, punch a direct UDP path, keep it, and forward a local UDP port."
    optParameters = [
        ["server", None, None, "The salon, HOST[:PORT]."],
        ["room", None, None, "Room name, agreed with the peer."],
        ["secret-file", None, None, "File holding the shared secret."],
        ["secret", None, None, "The shared secret (prefer --secret-file)."],
        ["forward", None, None, "[HOST:]PORT: local UDP port to carry to the peer."],
        ["deliver", None, None, "HOST:PORT: where the peer's datagrams go (default: last local sender)."],
        ["timeout", None, "30", "Seconds per connection attempt."],
        ["punch-timeout", None, "10", "Seconds of punching per attempt."],
        ["keepalive", None, "15", "Keepalive interval in seconds."],
        ["dead-after", None, "3", "Keepalive intervals of silence before re-punching."],
        ["retry", None, "10", "Seconds between failed attempts."],
        ["port", None, "0", "Local UDP port of the punched path."],
        ["interface", None, "", "Local address to bind."],
    ]
    optFlags = [
        ["json", None, "Accepted for symmetry with natsalon connect (events are logged)."],
        ["no-encrypt", None, "Do not encrypt forwarded payload."],
        ["no-lan", None, "Do not offer LAN candidates."],
    ]

    def postOptions(self) -> None:
        for name in ("server", "room"):
            if not self[name]:
                raise usage.UsageError("--%s is required" % name)
        try:
            self.secret = load_secret(self["secret"], self["secret-file"])
        except (SecretError, OSError) as e:
            raise usage.UsageError(str(e)) from None
        try:
            parse_server(self["server"])
            self.forward = parse_local(self["forward"]) if self["forward"] else None
            self.deliver = parse_local(self["deliver"]) if self["deliver"] else None
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        self.timeout = _float(self["timeout"], "--timeout", 1)
        self.punch_timeout = _float(self["punch-timeout"], "--punch-timeout", 1)
        self.keepalive = _float(self["keepalive"], "--keepalive", 0.5)
        self.dead_after = int(_float(self["dead-after"], "--dead-after", 1))
        self.retry = _float(self["retry"], "--retry", 0.5)
        self.port = int(_float(self["port"], "--port", 0))


class ClientService(service.Service):
    """Connect, forward, and start over after failures; stops cleanly."""

    log = Logger()

    def __init__(self, reactor, options: Options, connect=None) -> None:
        self.reactor = reactor
        self.o = options
        self._connect = connect
        self.conn = None
        self.forward_port = None
        self._attempt: Optional[defer.Deferred] = None
        self._retry_call = None

    def startService(self) -> None:
        service.Service.startService(self)
        self._start()

    def _start(self) -> None:
        self._retry_call = None
        if not self.running:
            return
        if self._connect is None:
            from natsalon.client.api import connect
            self._connect = connect
        o = self.o
        d = self._attempt = self._connect(
            self.reactor, o["server"], o["room"], o.secret, port=o.port, interface=o["interface"],
            timeout=o.timeout, punch_timeout=min(o.punch_timeout, o.timeout), keepalive=o.keepalive,
            dead_after=o.dead_after, encrypt=not o["no-encrypt"], lan=not o["no-lan"], on_event=self._event)
        d.addCallbacks(self._connected, self._failed)
        # _connected handles its own errors; anything else is a bug: log it
        d.addErrback(lambda f: self.log.failure("unexpected error after connecting", f))

    def _event(self, event: dict) -> None:
        # peer addresses only at debug level
        self.log.info("{event}", event={k: v for k, v in event.items() if k != "peer"})
        self.log.debug("peer {peer}", peer=event.get("peer"))

    def _connected(self, conn) -> None:
        self._attempt = None
        if not self.running:
            conn.close()
            return
        self.log.info("connected: path {path}, rtt {rtt:.1f} ms", path=conn.path.kind, rtt=conn.path.rtt * 1000)
        if self.o.forward is not None:
            host, port = self.o.forward
            try:
                self.forward_port = self.reactor.listenUDP(port, Forwarder(conn, self.o.deliver), interface=host)
            except Exception as e:  # CannotListenError: port taken, address not ours, ...
                conn.close()
                self.log.error("cannot listen on the forward port {host}:{port} ({reason}); "
                               "connection closed, retry in {retry}s",
                               host=host, port=port, reason=e, retry=self.o.retry)
                self._retry_later()
                return
            self.log.info("forwarding {host}:{port}", host=host, port=self.forward_port.getHost().port)
        self.conn = conn

    def _failed(self, f) -> None:
        self._attempt = None
        if not self.running or f.check(defer.CancelledError):
            return
        self.log.warn("connect failed ({reason}); retry in {retry}s", reason=f.getErrorMessage(), retry=self.o.retry)
        self._retry_later()

    def _retry_later(self) -> None:
        self._retry_call = self.reactor.callLater(self.o.retry, self._start)

    def stopService(self):
        service.Service.stopService(self)
        if self._retry_call is not None and self._retry_call.active():
            self._retry_call.cancel()
        if self._attempt is not None:
            self._attempt.cancel()
        if self.conn is not None:
            self.conn.close()
        if self.forward_port is not None:
            return self.forward_port.stopListening()
        return None


def makeService(config: Options):
    from twisted.internet import reactor

    return ClientService(reactor, config)
