"""``natsalon connect``: meet a peer in a room, punch, optionally forward.

Prints one line per event (JSON with ``--json``): ``connected`` with the
path, peer, server, elapsed and RTT (:func:`connected_event`); ``failed``
with a reason (exit status 1).
Without ``--forward`` it exits 0 once the path is verified (after giving
the peer up to 3 s to verify its side too).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional

from twisted.internet import defer, task
from twisted.internet.error import CannotListenError
from twisted.python.failure import Failure

from natsalon.client.options import DEFAULTS, OptionError, check
from natsalon.client.punch import RELAY
from natsalon.client.secretfile import ENV_SECRET

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", help="the salon, HOST[:PORT] (port 3478 by default); several salons sharing "
                   "their rooms: HOST[:PORT],HOST[:PORT] (tried in turn)")
    p.add_argument("--server6", metavar="HOST[:PORT]",
                   help="the salon's IPv6 address (or a name with one), beside an IPv4 --server: the client "
                        "learns its IPv6 endpoint there and punches both families (default: the AAAA of "
                        "--server's name)")
    p.add_argument("--no-ipv6", action="store_true", help="IPv4 alone: no IPv6 socket, no IPv6 candidates")
    p.add_argument("--probe-cache", metavar="FILE",
                   help="keep the join-time NAT probe's result here for 10 minutes, for the next run")
    p.add_argument("--no-probe-cache", action="store_true", help="no probe cache, even under systemd")
    p.add_argument("--room", help="room name, agreed with the peer")
    p.add_argument("--secret-file", help="file holding the shared secret")
    p.add_argument("--secret", help="the shared secret (visible in ps: prefer --secret-file or $%s)" % ENV_SECRET)
    p.add_argument("--forward", metavar="[HOST:]PORT", help="listen on this local UDP port and carry its datagrams")
    p.add_argument("--deliver", metavar="HOST:PORT", help="send the peer's datagrams here (default: last local sender)")
    p.add_argument("--json", action="store_true", help="print JSON lines")
    p.add_argument("--timeout", default=DEFAULTS["timeout"], help="give up after S seconds (default 30)")
    p.add_argument("--punch-timeout", default=DEFAULTS["punch-timeout"],
                   help="seconds of punching per attempt (default 10)")
    p.add_argument("--keepalive", default=DEFAULTS["keepalive"], help="keepalive interval in seconds (default 5)")
    p.add_argument("--dead-after", default=DEFAULTS["dead-after"],
                   help="keepalive intervals of silence before re-joining (default 2)")
    p.add_argument("--port", default=DEFAULTS["port"], help="local UDP port for the punched path (default: any)")
    p.add_argument("--interface", default="", help="local address to bind, of the salon's IP family")
    p.add_argument("--no-encrypt", action="store_true", help="do not encrypt forwarded payload")
    p.add_argument("--no-lan", action="store_true", help="do not offer LAN candidates")
    p.add_argument("--turn", metavar="turn:USER:PASS@HOST[:PORT]",
                   help="relay through this TURN server (e.g. coturn) instead of the salon's")
    p.add_argument("--salon-tls", metavar="HOST[:PORT]",
                   help="when UDP does not reach the salon, use its TURN over TLS here (port 5349 by default; "
                        "the certificate must name HOST) instead of TCP")
    p.add_argument("--salon-ca", metavar="FILE", help="trust this CA (PEM) for --salon-tls instead of the system's")


def raw_options(args: argparse.Namespace) -> dict:
    """The parsed command line as option name -> text, for :func:`check`."""
    raw = {k.replace("_", "-"): v for k, v in vars(args).items()}
    raw["retry"] = DEFAULTS["retry"]
    return raw


#: how each phase reads without --json (on stderr)
PHASES = {
    "joined": "joining the room",
    "waiting": "waiting for the peer (it must use the same room and the same secret)",
    "introduced": "met the peer; punching",
    "path-lost": "the path to the peer is lost; re-joining",
    "peer-left": "the peer left; re-joining",
    "repunch-failed": "re-joining failed; trying again",
}


class Printer:
    """``--json``: every event as one JSON line on stdout.  Otherwise the
    phases as short lines on stderr, failures as ``natsalon connect: error:
    ...`` on stderr, and the results (connected, forwarding, closed) as
    ``event: key=value`` lines on stdout."""

    def __init__(self, as_json: bool, out=sys.stdout, err=sys.stderr) -> None:
        self.as_json = as_json
        self.out = out
        self.err = err

    def __call__(self, event: dict) -> None:
        name = event["event"]
        if self.as_json:
            self._write(self.out, json.dumps(event, sort_keys=True))
        elif name == "failed":
            self._write(self.err, "natsalon connect: error: %s" % event["reason"])
        elif name in PHASES:
            self._write(self.err, "natsalon connect: %s" % PHASES[name])
        elif name != "punching":
            rest = ", ".join("%s=%s" % (k, v) for k, v in event.items() if k != "event")
            self._write(self.out, "%s: %s" % (name, rest))

    @staticmethod
    def _write(stream, line: str) -> None:
        stream.write(line + "\n")
        stream.flush()


def connected_event(conn, salon: str = "", turn: str = "") -> dict:
    """The ``connected`` event.  ``server``: the TURN server that relays
    (``turn``, else the salon's TURN) when the path is relayed, the
    ``salon`` that introduced the peer otherwise.  ``strategy``: how a
    direct or LAN path was punched (plain, predicted, birthday); "relay"
    for a relayed path.  ``family``: 4 or 6, the IP family of the path."""
    relayed = conn.path.kind == RELAY
    return {
        "event": "connected",
        "path": conn.path.kind,
        "peer": str(conn.path.address),
        "server": (turn or salon) if relayed else salon,
        "elapsed_ms": round(conn.info["elapsed"] * 1000, 1),
        "punch_ms": round(conn.info["punch"] * 1000, 1),
        "rtt_ms": round(conn.path.rtt * 1000, 1),
        "strategy": RELAY if relayed else conn.path.strategy,
        "probes": conn.path.probes,
        "sockets": conn.path.sockets,
        "transport": conn.info.get("transport", "udp"),
        "family": 6 if ":" in conn.path.address.host else 4,
    }


def server_text(server) -> str:
    """``HOST:PORT``, ``[V6]:PORT`` for an IPv6 address."""
    host, port = server
    return ("[%s]:%d" if ":" in host else "%s:%d") % (host, port)


def failure_reason(f) -> str:
    return "%s: %s" % (type(f.value).__name__, f.value)


class _Forward:
    """The local forward socket, bound before joining so a taken port is
    known before any peer is met; its protocol is set once connected."""

    def __init__(self, reactor, endpoint, deliver) -> None:
        from natsalon.client.forward import Forwarder

        self.forwarder = Forwarder(None, deliver)
        host, port = endpoint
        self.port = reactor.listenUDP(port, self.forwarder, interface=host)
        self.listen = "%s:%d" % (host, self.port.getHost().port)


@defer.inlineCallbacks
def _main(reactor, o, emit: Printer):
    from natsalon.client.api import connect

    try:
        fwd = _Forward(reactor, o.forward, o.deliver) if o.forward else None
    except CannotListenError as e:
        raise UsageFailure("--forward: cannot listen on %s:%s: %s" % (e.interface or "*", e.port, e.socketError))
    connecting = connect(reactor, o.servers, o.room, o.secret, port=o.port, interface=o.interface,
                         timeout=o.timeout, punch_timeout=min(o.punch_timeout, o.timeout),
                         keepalive=o.keepalive, dead_after=o.dead_after, encrypt=o.encrypt, lan=o.lan,
                         on_event=emit, turn=o.turn, salon_tls=o.salon_tls, salon_ca=o.salon_ca,
                         server6=o.server6, ipv6=o.ipv6, probe_cache=o.probe_cache)
    # Ctrl-C or SIGTERM while joining: cancel, which leaves the room cleanly
    trigger = reactor.addSystemEventTrigger("before", "shutdown", connecting.cancel)
    try:
        conn = yield connecting
    except defer.CancelledError:
        emit({"event": "failed", "reason": "Interrupted: stopped before the peer was met"})
        return 130
    except Exception:
        emit({"event": "failed", "reason": failure_reason(Failure())})
        if fwd is not None:
            fwd.port.stopListening()
        return 1
    finally:
        try:
            reactor.removeSystemEventTrigger(trigger)
        except (ValueError, KeyError):
            pass  # it is running: we are shutting down
    emit(connected_event(conn, server_text(o.server), "%s:%d" % (o.turn.host, o.turn.port) if o.turn else ""))
    if fwd is None:
        yield conn.peer_confirmed(3.0)
        conn.close()
        return 0
    listen = fwd.listen
    fwd = fwd.forwarder
    fwd.attach(conn)
    emit({"event": "forwarding", "listen": listen})
    done = defer.Deferred()

    def report():
        emit({"event": "closed", "to_peer": fwd.to_peer, "from_peer": fwd.from_peer,
              "rejected": conn.rejected, "dropped": fwd.dropped})
        conn.close()

    reactor.addSystemEventTrigger("before", "shutdown", report)
    yield done  # runs until the process is stopped
    return 0


class UsageFailure(Exception):
    """A bad option found only once the reactor runs (a taken --forward port): exit 2."""


def run(args) -> int:
    emit = Printer(args.json)
    try:
        o = check(raw_options(args))
    except OptionError as e:
        print("natsalon connect: error: %s" % e, file=sys.stderr)
        return 2
    status = []

    def main(reactor):
        d = _main(reactor, o, emit)
        d.addCallback(status.append)
        d.addErrback(_usage_failure, status)
        return d

    try:
        task.react(main)
    except SystemExit as e:
        if e.code not in (0, None) and not status:
            return int(e.code) if isinstance(e.code, int) else 1
    return status[0] if status else 0


def _usage_failure(f, status) -> None:
    f.trap(UsageFailure)
    print("natsalon connect: error: %s" % f.value, file=sys.stderr)
    status.append(2)
