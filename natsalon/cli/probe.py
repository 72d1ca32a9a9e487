"""``natsalon probe``: classify this host's NAT against a STUN server.

Prints a readable table, or with ``--json`` one JSON object (keys in the
README).  Exit status 0 on a completed classification (including
``udp-blocked``), 1 with a one-line error when the server is unreachable or
unusable, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional, Tuple

from natsalon.client.probe import ProbeConfig, ProbeError, ProbeReport, probe
from natsalon.client.probe.report import format_table
from twisted.internet import defer

from natsalon.net import hostport
from natsalon.net.hostport import DEFAULT_PORT

__all__ = ["add_arguments", "run", "parse_server", "format_table"]


def parse_server(text: str) -> Tuple[str, int]:
    """``HOST[:PORT]`` for argparse; IPv6 servers are refused (not yet supported)."""
    try:
        host, port = hostport.parse_server(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if ":" in host:
        raise argparse.ArgumentTypeError("IPv6 servers are not supported by the probe yet: %r" % text)
    return host, port


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not a number: %r" % text) from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be positive: %r" % text)
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", required=True, type=parse_server, metavar="HOST[:PORT]",
                        help="RFC 5780 STUN server (default port %d)" % DEFAULT_PORT)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--timeout", type=_positive, default=ProbeConfig.timeout, metavar="S",
                        help="longest wait for the server's first answer (default %(default)s s)")
    parser.add_argument("--hairpin", action="store_true",
                        help="also test hairpinning (hairpin probes alarm some firewalls)")
    parser.add_argument("--lifetime", action="store_true",
                        help="also measure the NAT binding lifetime (takes minutes)")
    parser.add_argument("--lifetime-max", type=_positive, default=ProbeConfig.lifetime_max, metavar="S",
                        help="longest idle interval tried by --lifetime (default %(default)s s)")
    parser.add_argument("--verbose", "-v", action="store_true", help="log the probe's steps to stderr")


def run(args: argparse.Namespace) -> int:
    from natsalon.net.interfaces import local_addresses

    if args.verbose:
        from twisted.logger import globalLogBeginner, textFileLogObserver
        globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    config = ProbeConfig(timeout=args.timeout, hairpin=args.hairpin, lifetime=args.lifetime,
                         lifetime_max=args.lifetime_max)
    try:
        local_ips = local_addresses()
    except OSError as e:
        return _error("cannot list interface addresses: %s" % e)
    outcome = _probe_once(args.server, config, local_ips)
    if outcome is None or (not isinstance(outcome, ProbeReport) and outcome.check(defer.CancelledError)):
        _error("interrupted")
        return 130
    if not isinstance(outcome, ProbeReport):
        exc = outcome.value
        if isinstance(exc, ProbeError):
            return _error(str(exc))
        return _error("internal error: %s: %s" % (exc.__class__.__name__, exc))
    if args.json:
        print(json.dumps(outcome.to_json(), sort_keys=False))
    else:
        print(format_table(outcome))
    return 0


def _probe_once(server: Tuple[str, int], config: ProbeConfig, local_ips) -> Optional[object]:
    """Run the reactor for one probe: its report, its Failure, or None if
    the reactor stopped first (a signal)."""
    from twisted.internet import reactor

    outcome: List = []
    stopping: List = []

    def stop(_=None) -> None:
        if not stopping:
            stopping.append(True)
            reactor.stop()

    def start():
        d = probe(reactor, server, config, local_ips=local_ips)
        d.addBoth(outcome.append)
        d.addBoth(stop)
        # Ctrl-C / SIGTERM: cancel first, so the sockets close as ours (no
        # false "ICMP port unreachable" from sockets the shutdown closes)
        reactor.addSystemEventTrigger("before", "shutdown", lambda: stopping.append(True) or d.cancel())

    reactor.callWhenRunning(start)
    reactor.run(installSignalHandlers=True)
    return outcome[0] if outcome else None


def _error(text: str) -> int:
    print("natsalon probe: error: %s" % text, file=sys.stderr)
    return 1
