"""``natsalon probe``: classify this host's NAT against a STUN server.

Prints a readable table, or with ``--json`` one JSON object (keys in the
README).  The probe runs over the server's IP family: an IPv6 address
(``[2001:db8::1]:3478``), or a name with ``-6`` (``-4``, the default for a
name, picks IPv4); ``--both`` probes a name over each family at once and
prints a report per family (JSON: ``{"ipv4": ..., "ipv6": ...}``, a
family that failed as ``{"error": "..."}``).  Exit status 0 on a completed
classification (including ``udp-blocked``; with ``--both``, of at least
one family), 1 with a one-line error when the server is unreachable or
unusable, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional, Tuple

from natsalon.client.probe import ProbeConfig, ProbeError, ProbeReport, probe
from natsalon.client.probe.measure import ip_version
from natsalon.client.probe.report import format_table
from twisted.internet import defer

from natsalon.net import hostport
from natsalon.net.hostport import DEFAULT_PORT

__all__ = ["add_arguments", "run", "parse_server", "format_table"]


def parse_server(text: str) -> Tuple[str, int]:
    """``HOST[:PORT]`` or ``[V6]:PORT`` for argparse."""
    try:
        host, port = hostport.parse_server(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if ":" in host and ip_version(host) != 6:
        raise argparse.ArgumentTypeError("bad IPv6 address in %r" % text)
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
    family = parser.add_mutually_exclusive_group()
    family.add_argument("-4", dest="family", action="store_const", const=(4,),
                        help="probe over IPv4 (a name's IPv4 address; the default for a name)")
    family.add_argument("-6", dest="family", action="store_const", const=(6,),
                        help="probe over IPv6 (a name's IPv6 address)")
    family.add_argument("--both", dest="family", action="store_const", const=(4, 6),
                        help="probe a name over IPv4 and IPv6 at once: a report per family")
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


def families(args: argparse.Namespace) -> Tuple[int, ...]:
    """The IP versions to probe: the literal's, or ``-4``/``-6``/``--both``'s
    for a name (IPv4 by default).  Raises ValueError on a contradiction."""
    literal = ip_version(args.server[0])
    wanted = args.family
    if literal is None:
        return wanted or (4,)
    if wanted is None or wanted == (literal,):
        return (literal,)
    if len(wanted) > 1:
        raise ValueError("--both needs a host name: %s is an IPv%d address" % (args.server[0], literal))
    raise ValueError("-%d: %s is an IPv%d address" % (wanted[0], args.server[0], literal))


def run(args: argparse.Namespace) -> int:
    from natsalon.net.interfaces import local_addresses
    from natsalon.client.probe.privacy import address_flags

    try:
        versions = families(args)
    except ValueError as e:
        print("natsalon probe: error: %s" % e, file=sys.stderr)
        return 2
    if args.verbose:
        from twisted.logger import globalLogBeginner, textFileLogObserver
        globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    config = ProbeConfig(timeout=args.timeout, hairpin=args.hairpin, lifetime=args.lifetime,
                         lifetime_max=args.lifetime_max)
    try:
        local_ips = local_addresses()
    except OSError as e:
        return _error("cannot list interface addresses: %s" % e)
    # read before the reactor runs (a file read), as the interface scan
    flags = address_flags() if 6 in versions else {}
    outcomes = _probe_once(args.server, config, local_ips, flags, versions)
    if outcomes is None or any(_cancelled(o) for o in outcomes):
        _error("interrupted")
        return 130
    if len(versions) > 1:
        return _print_both(args, versions, outcomes)
    outcome, = outcomes
    if not isinstance(outcome, ProbeReport):
        return _error(_failure_text(outcome))
    if args.json:
        print(json.dumps(outcome.to_json(), sort_keys=False))
    else:
        print(format_table(outcome))
    return 0


def _cancelled(outcome) -> bool:
    return not isinstance(outcome, ProbeReport) and bool(outcome.check(defer.CancelledError))


def _failure_text(failure) -> str:
    exc = failure.value
    if isinstance(exc, ProbeError):
        return str(exc)
    return "internal error: %s: %s" % (exc.__class__.__name__, exc)


def _print_both(args: argparse.Namespace, versions, outcomes) -> int:
    """A report (or an error) per family; 1 when every family failed."""
    if args.json:
        print(json.dumps({"ipv%d" % v: o.to_json() if isinstance(o, ProbeReport) else {"error": _failure_text(o)}
                          for v, o in zip(versions, outcomes)}, sort_keys=False))
    else:
        parts = []
        for v, o in zip(versions, outcomes):
            body = format_table(o) if isinstance(o, ProbeReport) else "error  %s" % _failure_text(o)
            parts.append("== IPv%d ==\n%s" % (v, body))
        print("\n\n".join(parts))
    if not any(isinstance(o, ProbeReport) for o in outcomes):
        print("natsalon probe: error: no family could be probed", file=sys.stderr)
        return 1
    return 0


def _probe_once(server: Tuple[str, int], config: ProbeConfig, local_ips, flags, versions) -> Optional[list]:
    """Run the reactor for one probe per IP version in ``versions``, at
    once: their reports or Failures, or None if the reactor stopped first
    (a signal)."""
    from twisted.internet import reactor

    outcome: List = []
    stopping: List = []

    def stop(_=None) -> None:
        if not stopping:
            stopping.append(True)
            reactor.stop()

    def start():
        runs = [probe(reactor, server, config, local_ips=local_ips, family=v, address_flags=flags)
                for v in versions]
        d = defer.DeferredList(runs, consumeErrors=True)
        d.addCallback(lambda results: outcome.append([value for _, value in results]))
        d.addBoth(stop)

        # Ctrl-C / SIGTERM: cancel first, so the sockets close as ours (no
        # false "ICMP port unreachable" from sockets the shutdown closes)
        def cancel():
            stopping.append(True)
            for r in runs:
                r.cancel()

        reactor.addSystemEventTrigger("before", "shutdown", cancel)

    reactor.callWhenRunning(start)
    reactor.run(installSignalHandlers=True)
    return outcome[0] if outcome else None


def _error(text: str) -> int:
    print("natsalon probe: error: %s" % text, file=sys.stderr)
    return 1
