#!/usr/bin/env python3
"""``make demo``: two NATed lab sites meet through the salon.

Builds a NAT lab (network namespaces, real nftables NATs; needs root,
iproute2 and nftables), with

- site A: one host behind a port-restricted cone NAT (a typical home router),
- site B: one host behind a full cone NAT (``--nat-a`` / ``--nat-b`` change them),
- the salon: the real ``twistd -n natsalon`` on 203.0.113.10:3478 (alt .11 / 3479),

then, step by step, runs ``natsalon probe`` in both hosts (their NAT
classification), ``natsalon connect --forward`` in both with a shared secret,
exchanges ping/pong datagrams through the punched path both ways
(``demo/peerapp.py``), stops everything, tears the lab down and checks that
no namespace is left.  Only lab addresses (documentation ranges, 10.x).

Exit status: 0 when the hosts connected and every datagram came back;
1 when a step failed; 2 when the lab cannot run here (not root, tools missing).
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

SERVER_IP = "203.0.113.10"
SERVER = SERVER_IP + ":3478"
FWD_PORT, APP_PORT = 7000, 7001
NAT_CHOICES = ("open", "full_cone", "restricted_cone", "port_restricted_cone", "symmetric_random",
               "symmetric_sequential", "symmetric_udp_firewall")
# pairs with no direct path (README, "Hard NATs": strategy none; a relay is needed)
UNPUNCHABLE = {frozenset({"symmetric_random", "symmetric_sequential"}), frozenset({"symmetric_random"})}

T0 = time.monotonic()


def say(text: str = "") -> None:
    print(text, flush=True)


def step(title: str) -> None:
    say()
    say("[%5.1fs] == %s" % (time.monotonic() - T0, title))


def detail(text: str) -> None:
    say("         " + text)


def missing_prerequisite() -> str | None:
    try:
        from natlab import unavailable_reason
    except ImportError as e:
        return "cannot import natlab (%s): run it as `make demo`, or with the project's venv from %s" % (e, ROOT)
    reason = unavailable_reason()
    if reason:
        return reason
    from natlab import Lab
    for tool in ("natsalon", "twistd"):
        if not os.path.exists(Lab.bin(tool)):
            return "%s is not installed next to %s (run `make venv`)" % (tool, sys.executable)
    return None


class Lines:
    """The stdout of a child, line by line, read by a thread (so a line
    already buffered is never missed by a select())."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.queue: "queue.Queue[str | None]" = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.queue.put(line)
        self.queue.put(None)

    def event(self, wanted: str, limit: float) -> tuple[dict | None, list]:
        """JSON events until `wanted` (or `failed`, or EOF, or `limit` seconds)."""
        seen = []
        deadline = time.monotonic() + limit
        while True:
            try:
                line = self.queue.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                return None, seen
            if line is None:
                return None, seen
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            seen.append(ev)
            if ev.get("event") in (wanted, "failed"):
                return ev, seen


def describe_probe(label: str, host, out: subprocess.CompletedProcess) -> bool:
    if out.returncode != 0:
        detail("%s: probe failed (exit %d): %s" % (label, out.returncode, (out.stderr or out.stdout).strip()))
        return False
    r = json.loads(out.stdout)
    alloc = r["port_allocation"]["kind"]
    detail("%s (%s): local %s -> seen by the salon as %s" % (label, host.ip, r["local"], r["mapped"]))
    detail("    classic type %-24s mapping %s" % (r["classic"], r["mapping"]))
    detail("    port allocation %-19s filtering %s   (%d ms)" % (alloc, r["filtering"], r["elapsed_ms"]))
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description="Two NATed lab sites meet through the natsalon salon.")
    ap.add_argument("--nat-a", choices=NAT_CHOICES, default="port_restricted_cone", help="site A's NAT")
    ap.add_argument("--nat-b", choices=NAT_CHOICES, default="full_cone", help="site B's NAT")
    ap.add_argument("--delay-ms", type=float, default=0, help="one-way delay added at each site's WAN link")
    ap.add_argument("--count", type=int, default=50, help="pings each side sends through the path")
    args = ap.parse_args()

    why = missing_prerequisite()
    if why:
        print("demo: cannot run the NAT lab here: %s" % why, file=sys.stderr)
        return 2
    if frozenset({args.nat_a, args.nat_b}) in UNPUNCHABLE:
        say("note: %s with %s cannot be punched (no relay in natsalon): expect `failed`." % (args.nat_a, args.nat_b))

    from natlab import Lab, LabError, Nat, list_netns
    from natlab.salon import start_salon

    ok = False
    prefix = None
    secret_dir = tempfile.TemporaryDirectory(prefix="natsalon-demo-")
    secret_file = os.path.join(secret_dir.name, "secret")
    with open(secret_file, "w") as f:
        f.write(secrets.token_urlsafe(24) + "\n")
    os.chmod(secret_file, 0o600)
    room = "demo-" + secrets.token_hex(3)
    try:
        step("Building the lab: an emulated internet in network namespaces")
        with Lab() as lab:
            prefix = lab.prefix
            site_a = lab.add_site("a", Nat(args.nat_a), delay_ms=args.delay_ms)
            site_b = lab.add_site("b", Nat(args.nat_b), delay_ms=args.delay_ms)
            ha, hb = site_a.hosts[0], site_b.hosts[0]
            for label, site in (("site A", site_a), ("site B", site_b)):
                pub = site.public_ip if site.nat.translates else site.hosts[0].ip
                detail("%s: %-22s router %s, public address %s, host %s"
                       % (label, site.nat.value, site.router.ns, pub, site.hosts[0].ip))
            if args.delay_ms:
                detail("each site's WAN link delays packets %g ms each way" % args.delay_ms)
            detail("the salon's host: %s and %s; %d namespaces in all (prefix %s)"
                   % (", ".join(lab.server.ips[:1]), lab.server.ips[1], len(lab.namespaces), lab.prefix))

            step("Starting the salon: twistd -n natsalon on %s (alt IP %s, ports 3478/3479)"
                 % (SERVER_IP, lab.server.ips[1]))
            start_salon(lab)
            detail("the salon answers STUN Binding requests on all four sockets")

            step("Each host classifies its NAT: natsalon probe --server %s --json" % SERVER_IP)
            probes = [h.spawn([Lab.bin("natsalon"), "probe", "--server", SERVER_IP, "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for h in (ha, hb)]
            outs = []
            for p in probes:
                out, err = p.communicate(timeout=60)
                outs.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
            if not all(describe_probe(label, h, o) for label, h, o in zip(("A", "B"), (ha, hb), outs)):
                return 1

            step("Both hosts join room %r with the shared secret and punch a path" % room)
            detail("natsalon connect --server %s --room %s --secret-file %s --json \\"
                   % (SERVER, room, secret_file))
            detail("    --forward %d --deliver 127.0.0.1:%d" % (FWD_PORT, APP_PORT))
            conns = []
            for h in (ha, hb):
                conns.append(h.spawn([Lab.bin("natsalon"), "connect", "--server", SERVER, "--room", room,
                                      "--secret-file", secret_file, "--json", "--timeout", "20",
                                      "--forward", str(FWD_PORT), "--deliver", "127.0.0.1:%d" % APP_PORT],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
                time.sleep(0.3)  # A waits in the room first, then B's join pairs it
            lines = [Lines(p) for p in conns]
            connected = {}
            for label, p in zip(("A", "B"), lines):
                ev, seen = p.event("forwarding", 30)
                conn = next((e for e in seen if e.get("event") == "connected"), None)
                if conn is None or ev is None or ev.get("event") != "forwarding":
                    why = ev["reason"] if ev and ev.get("event") == "failed" else "no answer (%s)" % seen
                    detail("%s: did not connect: %s" % (label, why))
                    return 1
                connected[label] = conn
                detail("%s: connected, path %s to peer %s" % (label, conn["path"], conn["peer"]))
                detail("    %.1f ms after starting, %.1f ms from the introduction to the verified path, "
                       "path RTT %.1f ms" % (conn["elapsed_ms"], conn["punch_ms"], conn["rtt_ms"]))
                detail("    forwarding 127.0.0.1:%d <-> peer, peer's datagrams to 127.0.0.1:%d"
                       % (FWD_PORT, APP_PORT))

            step("Traffic both ways: each host pings the other through its forward port")
            apps = [h.spawn([sys.executable, str(HERE / "peerapp.py"), label, str(APP_PORT), str(FWD_PORT),
                             str(args.count)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
                    for label, h in (("A", ha), ("B", hb))]
            for a in apps:
                if a.stdout.readline().strip() != "ready":
                    detail("a ping program did not start: %s" % a.stderr.read())
                    return 1
            for a in apps:
                a.stdin.write("go\n")
                a.stdin.flush()
            results = []
            for a in apps:
                out, err = a.communicate(timeout=60)  # also closes its stdin
                results.append(json.loads(out.strip().splitlines()[-1]))
            for r in results:
                detail("%s: sent %d pings, %d pongs came back (RTT median %s ms, max %s ms); answered %d of the "
                       "peer's pings; %d corrupt" % (r["name"], r["pings_sent"], r["pongs_back"], r["rtt_ms_median"],
                                                     r["rtt_ms_max"], r["peer_pings_answered"], r["corrupt"]))
                detail("    first datagram from the peer: %r" % r["first_peer_ping"])
            traffic_ok = all(r["pongs_back"] == args.count and r["peer_pings_answered"] == args.count
                             and not r["corrupt"] for r in results)

            step("Stopping both natsalon connect processes (SIGTERM)")
            for p in conns:
                p.terminate()
            for label, p, lp in zip(("A", "B"), conns, lines):
                ev, _ = lp.event("closed", 10)
                p.wait(timeout=10)
                if ev and ev.get("event") == "closed":
                    detail("%s: closed: %d datagrams to the peer, %d from the peer, %d rejected, %d dropped"
                           % (label, ev["to_peer"], ev["from_peer"], ev["rejected"], ev["dropped"]))
                else:
                    detail("%s: exited (%s) without its counters" % (label, p.returncode))
            ok = traffic_ok
            step("Tearing the lab down (salon, clients, routers, namespaces)")
    except (LabError, OSError, subprocess.SubprocessError, ValueError) as e:
        say()
        say("demo: failed: %s: %s" % (type(e).__name__, e))
        ok = False
    finally:
        secret_dir.cleanup()
    if prefix is not None:
        left = [ns for ns in list_netns() if ns.startswith(prefix)]
        if left:
            detail("namespaces left behind: %s" % " ".join(left))
            ok = False
        else:
            detail("no namespace of this lab is left (prefix %s)" % prefix)
    say()
    say("[%5.1fs] %s" % (time.monotonic() - T0, "demo finished: the two sites connected and exchanged traffic"
                         if ok else "demo finished with a failure (see above)"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
