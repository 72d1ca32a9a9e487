"""``natsalon connect``: meet a peer in a room, punch, optionally forward.

Prints one line per event (JSON with ``--json``): ``connected`` with the
path, peer, elapsed and RTT; ``failed`` with a reason (exit status 1).
Without ``--forward`` it exits 0 once the path is verified (after giving
the peer up to 3 s to verify its side too).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional

from twisted.internet import defer, task
from twisted.python.failure import Failure

from natsalon.client.secretfile import ENV_SECRET, SecretError, load_secret
from natsalon.net.hostport import parse_local

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", required=True, help="the salon, HOST[:PORT] (port 3478 by default)")
    p.add_argument("--room", required=True, help="room name, agreed with the peer")
    p.add_argument("--secret-file", help="file holding the shared secret")
    p.add_argument("--secret", help="the shared secret (visible in ps: prefer --secret-file or $%s)" % ENV_SECRET)
    p.add_argument("--forward", metavar="[HOST:]PORT", help="listen on this local UDP port and carry its datagrams")
    p.add_argument("--deliver", metavar="HOST:PORT", help="send the peer's datagrams here (default: last local sender)")
    p.add_argument("--json", action="store_true", help="print JSON lines")
    p.add_argument("--timeout", type=float, default=30.0, help="give up after S seconds (default 30)")
    p.add_argument("--punch-timeout", type=float, default=10.0, help="seconds of punching per attempt (default 10)")
    p.add_argument("--keepalive", type=float, default=15.0, help="keepalive interval in seconds (default 15)")
    p.add_argument("--dead-after", type=int, default=3, help="keepalive intervals of silence before re-punching")
    p.add_argument("--port", type=int, default=0, help="local UDP port for the punched path (default: any)")
    p.add_argument("--interface", default="", help="local address to bind")
    p.add_argument("--no-encrypt", action="store_true", help="do not encrypt forwarded payload")
    p.add_argument("--no-lan", action="store_true", help="do not offer LAN candidates")


class Printer:
    def __init__(self, as_json: bool, out=sys.stdout) -> None:
        self.as_json = as_json
        self.out = out

    def __call__(self, event: dict) -> None:
        if self.as_json:
            line = json.dumps(event, sort_keys=True)
        else:
            rest = ", ".join("%s=%s" % (k, v) for k, v in event.items() if k != "event")
            line = "%s: %s" % (event["event"], rest)
        self.out.write(line + "\n")
        self.out.flush()


def connected_event(conn) -> dict:
    return {
        "event": "connected",
        "path": conn.path.kind,
        "peer": str(conn.path.address),
        "elapsed_ms": round(conn.info["elapsed"] * 1000, 1),
        "punch_ms": round(conn.info["punch"] * 1000, 1),
        "rtt_ms": round(conn.path.rtt * 1000, 1),
    }


def failure_reason(f) -> str:
    return "%s: %s" % (type(f.value).__name__, f.value)


@defer.inlineCallbacks
def _main(reactor, args, secret: bytes, emit: Printer):
    from natsalon.client.api import connect
    from natsalon.client.forward import Forwarder

    try:
        conn = yield connect(reactor, args.server, args.room, secret, port=args.port, interface=args.interface,
                             timeout=args.timeout, punch_timeout=min(args.punch_timeout, args.timeout),
                             keepalive=args.keepalive, dead_after=args.dead_after,
                             encrypt=not args.no_encrypt, lan=not args.no_lan, on_event=emit)
    except Exception:
        emit({"event": "failed", "reason": failure_reason(Failure())})
        return 1
    emit(connected_event(conn))
    if not args.forward:
        yield conn.peer_confirmed(3.0)
        conn.close()
        return 0
    fwd = Forwarder(conn, parse_local(args.deliver) if args.deliver else None)
    host, port = parse_local(args.forward)
    listening = reactor.listenUDP(port, fwd, interface=host)
    emit({"event": "forwarding", "listen": "%s:%d" % (host, listening.getHost().port)})
    done = defer.Deferred()

    def report():
        emit({"event": "closed", "to_peer": fwd.to_peer, "from_peer": fwd.from_peer,
              "rejected": conn.rejected, "dropped": fwd.dropped})
        conn.close()

    reactor.addSystemEventTrigger("before", "shutdown", report)
    yield done  # runs until the process is stopped
    return 0


def run(args) -> int:
    emit = Printer(args.json)
    try:
        secret = load_secret(args.secret, args.secret_file)
    except (SecretError, OSError) as e:
        emit({"event": "failed", "reason": "SecretError: %s" % e})
        return 2
    try:
        if args.forward:
            parse_local(args.forward)
        if args.deliver:
            parse_local(args.deliver)
    except ValueError as e:
        emit({"event": "failed", "reason": "bad --forward/--deliver: %s" % e})
        return 2
    status = []

    def main(reactor):
        d = _main(reactor, args, secret, emit)
        d.addCallback(status.append)
        return d

    try:
        task.react(main)
    except SystemExit as e:
        if e.code not in (0, None):
            return int(e.code) if isinstance(e.code, int) else 1
    return status[0] if status else 0
