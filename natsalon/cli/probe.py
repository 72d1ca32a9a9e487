"""``natsalon probe``: classify this host's NAT against a STUN server.

Prints a readable table, or with ``--json`` one JSON object (keys in
docs/probe.md).  Exit status 0 on a completed classification (including
``udp-blocked``), 1 with a one-line error when the server is unreachable or
unusable, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional, Tuple

from natsalon.net import hostport
from natsalon.net.hostport import DEFAULT_PORT

from natsalon.client.probe.measure import ProbeConfig, ProbeError, ProbeReport, probe

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


def _yes(value: Optional[bool], untested: str) -> str:
    if value is None:
        return untested
    return "yes" if value else "no"


def format_table(report: ProbeReport) -> str:
    j = report.to_json()
    pa = report.port_allocation
    alloc = pa.kind.value + (" (step %d)" % pa.step if pa.step is not None else "")
    nat = _yes(report.nat, "unknown")
    if report.mapped is not None:
        nat += " (mapped %s, local %s)" % (report.mapped, report.local)
    server = j["server"]
    srv = server["address"]
    extras = []
    if server["other_address"]:
        extras.append("other address " + server["other_address"])
    extras.append("RFC 5780" if server["rfc5780"] else "no RFC 5780")
    if server["software"]:
        extras.append(server["software"])
    rows = [
        ("NAT", nat),
        ("classic type", report.classic.value),
        ("mapping", report.mapping.value),
        ("filtering", report.filtering.value),
        ("port allocation", alloc),
        ("hairpinning", _yes(report.hairpinning, "not tested (--hairpin)")),
        ("binding lifetime", "not tested (--lifetime)" if "lifetime" not in server["tested"]
         and report.lifetime_s is None else
         ("%s s" % report.lifetime_s if report.lifetime_s is not None else "unknown")),
        ("server", "%s (%s)" % (srv, ", ".join(extras))),
    ]
    rows += [("not tested", u) for u in server["untested"]]
    rows += [("inconsistency", i) for i in server["inconsistencies"]]
    rows += [("note", n) for n in report.notes]
    rows.append(("elapsed", "%d ms" % report.elapsed_ms))
    width = max(len(k) for k, _ in rows)
    return "\n".join("%-*s  %s" % (width, k, v) for k, v in rows)


def run(args: argparse.Namespace) -> int:
    from twisted.internet import reactor

    from natsalon.net.interfaces import local_addresses

    if args.verbose:
        from twisted.logger import globalLogBeginner, textFileLogObserver
        globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    config = ProbeConfig(timeout=args.timeout, hairpin=args.hairpin, lifetime=args.lifetime,
                         lifetime_max=args.lifetime_max)
    try:
        local_ips = local_addresses()
    except OSError as e:
        print("natsalon probe: error: cannot list interface addresses: %s" % e, file=sys.stderr)
        return 1
    outcome: List = []

    def start():
        d = probe(reactor, args.server, config, local_ips=local_ips)
        d.addBoth(outcome.append)
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(start)
    reactor.run(installSignalHandlers=True)
    if not outcome:
        print("natsalon probe: error: interrupted", file=sys.stderr)
        return 1
    result = outcome[0]
    if not isinstance(result, ProbeReport):
        exc = result.value
        if isinstance(exc, ProbeError):
            print("natsalon probe: error: %s" % exc, file=sys.stderr)
        else:
            print("natsalon probe: internal error: %s: %s" % (exc.__class__.__name__, exc), file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result.to_json(), sort_keys=False))
    else:
        print(format_table(result))
    return 0
