"""``twistd natclient``: the options of a long-running natsalon endpoint
(those of ``natsalon connect``, plus ``--retry``) and the service maker;
the service itself is :mod:`natsalon.client.service`.  Events go to the
twistd log.
"""

from __future__ import annotations

from twisted.application.internet import backoffPolicy
from twisted.python import usage

from natsalon.client.secretfile import SecretError, load_secret
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
        ["retry", None, "30", "Longest wait between failed attempts, in seconds (backoff from 1 s, x1.5 per failure, plus up to 1 s of jitter)."],
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
        self.retry = _float(self["retry"], "--retry", 1)
        self.retry_policy = backoffPolicy(min(1.0, self.retry), self.retry, 1.5)
        self.port = int(_float(self["port"], "--port", 0))


def makeService(config: Options):
    from twisted.internet import reactor

    from natsalon.client.service import ClientService

    return ClientService(reactor, config)
