"""``twistd natclient``: the options of a long-running natsalon endpoint
(those of ``natsalon connect``, plus ``--retry``) and the service maker;
the service itself is :mod:`natsalon.client.service`.  Events go to the
twistd log.
"""

from __future__ import annotations

import sys

from twisted.application.internet import backoffPolicy
from twisted.python import usage

from natsalon import __version__

from natsalon.client.options import DEFAULTS, OptionError, check
from natsalon.ops.options import OpsOptionsMixin


class Options(OpsOptionsMixin, usage.Options):
    command = "twistd natclient"
    synopsis = "--server HOST[:PORT] --room ROOM (--secret-file F | --secret S | $NATSALON_SECRET) [options]"
    longdesc = "Meet a peer in a natsalon room, punch a direct UDP path, keep it, and forward a local UDP port."
    optParameters = [
        ["server", None, None, "The salon, HOST[:PORT]; several sharing their rooms: HOST[:PORT],HOST[:PORT]."],
        ["server6", None, None, "HOST[:PORT]: the salon's IPv6 address beside an IPv4 --server (default: the AAAA of --server's name)."],
        ["room", None, None, "Room name, agreed with the peer."],
        ["secret-file", None, None, "File holding the shared secret."],
        ["secret", None, None, "The shared secret (prefer --secret-file)."],
        ["forward", None, None, "[HOST:]PORT: local UDP port to carry to the peer."],
        ["deliver", None, None, "HOST:PORT: where the peer's datagrams go (default: last local sender)."],
        ["timeout", None, DEFAULTS["timeout"], "Seconds per connection attempt."],
        ["punch-timeout", None, DEFAULTS["punch-timeout"], "Seconds of punching per attempt."],
        ["keepalive", None, DEFAULTS["keepalive"], "Keepalive interval in seconds."],
        ["dead-after", None, DEFAULTS["dead-after"], "Keepalive intervals of silence before re-joining."],
        ["retry", None, DEFAULTS["retry"], "Longest wait between failed attempts, in seconds (backoff from 1 s, x1.5 per failure, plus up to 1 s of jitter)."],
        ["port", None, DEFAULTS["port"], "Local UDP port of the punched path."],
        ["interface", None, "", "Local address to bind."],
        ["turn", None, None, "turn:USER:PASS@HOST[:PORT]: relay through this TURN server instead of the salon's."],
        ["salon-tls", None, None, "HOST[:PORT]: when UDP does not reach the salon, its TURN over TLS (port 5349 by default) instead of TCP."],
        ["salon-ca", None, None, "PEM file of the CA trusted for --salon-tls instead of the system's."],
        ["probe-cache", None, None, "File keeping the join-time NAT probe's result for 10 minutes, for the next "
                                    "start (default: in $STATE_DIRECTORY under systemd, else none)."],
    ]
    optFlags = [
        ["json", None, "Accepted for symmetry with natsalon connect (events are logged)."],
        ["no-encrypt", None, "Do not encrypt forwarded payload."],
        ["no-lan", None, "Do not offer LAN candidates."],
        ["no-ipv6", None, "IPv4 alone: no IPv6 socket, no IPv6 candidates."],
        ["no-probe-cache", None, "Probe the NAT at every start, keeping no result."],
    ]

    def opt_version(self) -> None:
        """Print natsalon's version and exit."""
        sys.stdout.write("natsalon %s\n" % __version__)
        sys.stdout.flush()
        raise SystemExit(0)

    def postOptions(self) -> None:
        try:
            self.checked = check(self)
        except OptionError as e:
            raise usage.UsageError(str(e)) from None
        c = self.checked
        self.secret, self.forward, self.deliver, self.port = c.secret, c.forward, c.deliver, c.port
        self.timeout, self.punch_timeout, self.keepalive = c.timeout, c.punch_timeout, c.keepalive
        self.dead_after, self.retry = c.dead_after, c.retry
        self.retry_policy = backoffPolicy(1.0, c.retry, 1.5)


def makeService(config: Options):
    from twisted.internet import reactor

    from natsalon.client.service import ClientService
    from natsalon.ops.wiring import wrap_client

    return wrap_client(reactor, ClientService(reactor, config), config)
