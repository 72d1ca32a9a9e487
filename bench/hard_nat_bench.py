#!/usr/bin/env python3
"""Hard-NAT benchmark: port prediction and birthday punching in the NAT lab,
aioice (ICE) beside it on the same pairs.

One lab (network namespaces, real nftables NATs; needs root): every pair has
sites of its own; the real ``twistd -n natsalon`` (two IPs, so the
join-time probe can classify) is the salon and aioice's STUN server.  A
repetition starts every pair at once (each in its own room, A then B
``--head-start`` s later) and waits for all; ``--reps`` repetitions.

Per pair and strategy: the success rate; the time from the introduction to a
path verified on both sides (max of the two sides' ``punch_ms``), median
and p90; the extra probes sent (sweep or spray, both sides, from the
``punched`` events), median; for strategy none the time from the
introduction to the "no direct path" failure.  **Packets per second**: each
router of a predicted or birthday pair counts the UDP packets leaving its
WAN port (an nftables counter), sampled every ``--sample`` s while the
repetition runs: the worst window over all runs is reported beside the
documented bound (``StrategySettings``: 800 probes/s sweeping, 640/s
spraying, plus plain punching's 10 per candidate; the windows include the
salon traffic and the join-time probe).  The busy row (``Q*-P``) has a
second host behind the sequential NAT opening 20 new flows per second.

aioice: ``ICE_PEER`` of ``connect_bench.py`` (signalling through a shared
folder, our salon as STUN server), ``--ice-reps`` times per pair, all pairs
at once, giving up after 10 s.  ICE has no port prediction: its failures
are the point of comparison.  Results go to bench/results/hard-nat.md.

Asymmetric delay (``--delay-a 10 --delay-b 80``: one-way ms on the WAN
link of every A site and every B site; ``--pairs`` picks pairs by label,
``--ice-reps 0`` leaves aioice out): the table then replaces the section
named by ``--tag`` ("before" / "after" the salon-coordinated moment, for
example) under "Asymmetric delay" in the results file instead of
rewriting the file, and also gives the predicted / birthday sides' wait
(``wait_ms`` of their ``strategy`` event; A, the near side, is the one
that waits).  Run the "before" figures against an older tree with
``PYTHONPATH=<its checkout>``: the salon and clients the lab starts
inherit it.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

from benchinfo import cpu_model  # noqa: E402
from connect_bench import ICE_PEER  # noqa: E402

RESULTS = BENCH / "results" / "hard-nat.md"
RAW = BENCH / "build" / "hard_nat_raw.json"
SERVER_IP = "203.0.113.10"
SERVER = SERVER_IP + ":3478"
SECRET = "bench secret, lab only"
ICE_TIMEOUT = 10

# label, strategy expected, nat of A, nat of B, busy (a second host behind A making 20 flows/s)
PAIRS = [
    ("Q-P", "predicted", "symmetric_sequential", "port_restricted_cone", False),
    ("Q-W", "predicted", "symmetric_sequential", "symmetric_udp_firewall", False),
    ("Q-Q", "predicted", "symmetric_sequential", "symmetric_sequential", False),
    ("Q*-P", "predicted", "symmetric_sequential", "port_restricted_cone", True),
    ("Q*-Q", "predicted", "symmetric_sequential", "symmetric_sequential", True),
    ("S-P", "birthday", "symmetric_random", "port_restricted_cone", False),
    ("S-W", "birthday", "symmetric_random", "symmetric_udp_firewall", False),
    ("S-F", "plain", "symmetric_random", "full_cone", False),
    ("Q-R", "plain", "symmetric_sequential", "restricted_cone", False),
    ("S-S", "none", "symmetric_random", "symmetric_random", False),
    ("S-Q", "none", "symmetric_random", "symmetric_sequential", False),
]
SHORT = {"open": "o", "full_cone": "f", "restricted_cone": "r", "port_restricted_cone": "p",
         "symmetric_udp_firewall": "w", "symmetric_random": "s", "symmetric_sequential": "q"}
COUNTER = """
table inet hnbench {
    counter up { }
    chain c { type filter hook postrouting priority 300; policy accept; oifname "wan0" meta l4proto udp counter name "up"; }
}
"""
BOUND_PPS = 800 + 10 * 10  # the sweep's rate plus plain punching's rounds (a few candidates) and salon traffic


def log(msg: str) -> None:
    print("[bench] " + msg, file=sys.stderr, flush=True)


def timed_events(proc: subprocess.Popen, timeout: float):
    events, errors = [], []

    def read():
        for line in proc.stdout:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            ev["_t"] = time.monotonic()
            events.append(ev)

    readers = [threading.Thread(target=read, daemon=True),
               threading.Thread(target=lambda: errors.append(proc.stderr.read()), daemon=True)]
    for r in readers:
        r.start()
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        rc = -9
    for r in readers:
        r.join(5)
    return rc, events, "".join(errors)[-300:]


def first(events, name):
    return next((e for e in events if e.get("event") == name), None)


def run_natsalon(pairs, hosts, rep: int, head_start: float):
    from natlab import Lab
    procs = {}

    def client(h, room):
        return h.spawn([Lab.bin("natsalon"), "connect", "--server", SERVER, "--room", room, "--secret", SECRET,
                        "--json", "--timeout", "20", "--punch-timeout", "10"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    for label, *_ in pairs:
        procs[label] = [client(hosts[label][0], "hn-%d-%s" % (rep, label))]
    time.sleep(head_start)
    for label, *_ in pairs:
        procs[label].append(client(hosts[label][1], "hn-%d-%s" % (rep, label)))
    out = {}
    threads = []
    for label in procs:
        out[label] = [None, None]
        for i, p in enumerate(procs[label]):
            t = threading.Thread(target=lambda label=label, i=i, p=p: out[label].__setitem__(i, timed_events(p, 40)))
            t.start()
            threads.append(t)
    for t in threads:
        t.join()
    results = {}
    for label, strategy, *_ in pairs:
        sides = out[label]
        conns = [first(ev, "connected") for _, ev, _ in sides]
        punched = [first(ev, "punched") for _, ev, _ in sides]
        intros = [first(ev, "introduced") for _, ev, _ in sides]
        fails = [first(ev, "failed") for _, ev, _ in sides]
        plans = [first(ev, "strategy") for _, ev, _ in sides]
        r = {"strategy": (punched[0] or punched[1] or {}).get("strategy", "plain"),
             "plan": (plans[0] or plans[1] or {}).get("strategy", "plain"),
             "wait_ms": max((p.get("wait_ms", 0.0) for p in plans if p), default=0.0)}
        if all(conns):
            r.update(ok=True, ms=max(c["punch_ms"] for c in conns), b_ms=conns[1].get("elapsed_ms"),
                     probes=sum(p["probes"] for p in punched if p) if any(punched) else 0,
                     sockets=max((p["sockets"] for p in punched if p), default=1))
        elif all(fails) and all(intros):
            r.update(ok=False, none_s=max(f["_t"] - i["_t"] for f, i in zip(fails, intros)),
                     reason=fails[0]["reason"], why="planned %s, failed: %s" % (r["plan"], fails[0]["reason"]))
        else:
            r.update(ok=False, why="; ".join("rc=%s %s %s" % (rc, (ev[-1] if ev else None), err)
                                             for rc, ev, err in sides))
        results[label] = r
    return results


def run_aioice(pairs, hosts, head_start: float):
    peer = ICE_PEER.replace("conn.connect(), 20", "conn.connect(), %d" % ICE_TIMEOUT)
    dirs, procs = {}, {}
    for label, *_ in pairs:
        d = dirs[label] = tempfile.mkdtemp(prefix="natsalon-hn-ice-")
        os.chmod(d, 0o755)
        procs[label] = [hosts[label][0].spawn([sys.executable, "-c", peer, "a", d, SERVER_IP, "3478"],
                                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
    time.sleep(head_start)
    for label, *_ in pairs:
        procs[label].append(hosts[label][1].spawn([sys.executable, "-c", peer, "b", dirs[label], SERVER_IP, "3478"],
                                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = {}
    for label, *_ in pairs:
        sides = []
        for p in procs[label]:
            try:
                o, _ = p.communicate(timeout=ICE_TIMEOUT + 30)
            except subprocess.TimeoutExpired:
                p.kill()
                o, _ = p.communicate()
            j = None
            for line in reversed(o.strip().splitlines()):
                try:
                    j = json.loads(line)
                    break
                except ValueError:
                    continue
            sides.append(j or {})
        ok = all(s.get("ok") for s in sides)
        results[label] = {"ok": ok, "ms": max(s["connect_ms"] for s in sides) if ok else None,
                          "pair": sides[0].get("pair") if ok else None}
        for f in Path(dirs[label]).iterdir():
            f.unlink()
        os.rmdir(dirs[label])
    return results


class Sampler:
    """UDP packets leaving each router's WAN port, sampled every ``every`` s."""

    def __init__(self, routers, every: float) -> None:
        self.routers, self.every = routers, every
        self.worst = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _count(self, router) -> int:
        out = router.run(["nft", "list", "counter", "inet", "hnbench", "up"]).stdout
        m = re.search(r"packets (\d+)", out)
        return int(m.group(1)) if m else 0

    def _run(self) -> None:
        last = {r.name: (time.monotonic(), self._count(r)) for r in self.routers}
        while not self._stop.wait(self.every):
            for r in self.routers:
                now, n = time.monotonic(), self._count(r)
                t0, n0 = last[r.name]
                if now > t0:
                    self.worst = max(self.worst, (n - n0) / (now - t0))
                last[r.name] = (now, n)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)


def pct(values, q):
    values = sorted(values)
    if not values:
        return None
    k = min(len(values) - 1, max(0, int(round(q * (len(values) - 1)))))
    return values[k]


def fmt(v, spec=".0f"):
    return "–" if v is None else format(v, spec)


def report(results, ice, worst_pps, args, took) -> str:
    lines = [
        "# Hard NATs: port prediction and birthday punching",
        "",
        "natsalon's strategies for symmetric NATs (issue 10) in the NAT lab, aioice (ICE) beside them on the same"
        " pairs. Generated by `bench/hard_nat_bench.py` (method in its docstring).",
        "",
        "- %s, %s; Python %s" % (datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                                 cpu_model() or platform.machine(), platform.python_version()),
        "- %d runs per pair (all pairs at once in each run), aioice %d runs per pair; no added delay or loss;"
        " load at start %s; took %.0f s" % (args.reps, args.ice_reps, " / ".join("%.2f" % x for x in os.getloadavg()),
                                             took),
        "",
        "Q = symmetric sequential, S = symmetric random, P = port-restricted cone, W = symmetric UDP firewall,"
        " F = full cone, R = restricted cone; Q* = sequential NAT with a busy second host (20 new flows/s):"
        " Q*-Q is two sequential NATs, one of them busy.",
        "",
        "| pair | strategy | natsalon ok | intro → verified ms, median | p90 | extra probes, median | sockets |"
        " 'no direct path' after, s (max) | aioice ok | aioice ms, median |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, strategy, *_ in selected(args):
        runs = results[label]
        ok = [r for r in runs if r["ok"]]
        right = [r for r in ok if r["strategy"] == strategy]
        nones = [r["none_s"] for r in runs if "none_s" in r and r["plan"] == "none"]
        ice_runs = ice.get(label, [])
        ice_ok = [r for r in ice_runs if r["ok"]]
        if strategy == "none":
            okcol = "%d/%d said so" % (len(nones), len(runs))
        else:
            okcol = "%d/%d" % (len(right), len(runs))
        lines.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            label, strategy, okcol,
            fmt(statistics.median([r["ms"] for r in ok]) if ok else None, ".1f"),
            fmt(pct([r["ms"] for r in ok], 0.9), ".1f"),
            fmt(statistics.median([r["probes"] for r in ok]) if ok else None),
            fmt(max((r["sockets"] for r in ok), default=None)),
            fmt(max(nones) if nones else None, ".2f"),
            "%d/%d" % (len(ice_ok), len(ice_runs)) if ice_runs else "–",
            fmt(statistics.median([r["ms"] for r in ice_ok]) if ice_ok else None, ".1f")))
    lines += [
        "",
        "**Worst packets per second** leaving one site's WAN port during the predicted and birthday runs"
        " (%.1f s windows, salon traffic and the join-time probe included): **%.0f**; documented bound: %d"
        " (a sweep's 800 probes/s or a spray's 640/s, plus plain punching)." % (args.sample, worst_pps, BOUND_PPS),
        "",
        "Failures and odd runs:",
    ]
    odd = ["- %s run %d: %s" % (label, i + 1, r.get("why") or "strategy %s" % r["strategy"])
           for label, strategy, *_ in selected(args) for i, r in enumerate(results[label])
           if strategy != "none" and not (r["ok"] and r["strategy"] == strategy)]
    lines += odd or ["- none"]
    return "\n".join(lines) + "\n"


def asym_section(results, args, took) -> str:
    """The "Asymmetric delay" table of one run (``--tag``)."""
    lines = [
        "### %s" % args.tag,
        "",
        "- %s, %s; %d runs per pair; A sites %g ms, B sites %g ms one way; load at start %s; took %.0f s" % (
            datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            cpu_model() or platform.machine(), args.reps, args.delay_a, args.delay_b,
            " / ".join("%.2f" % x for x in os.getloadavg()), took),
        "",
        "| pair | strategy | ok | intro → verified ms, median | p90 | B's connect() → verified ms, median |"
        " extra probes, median | wait ms (A), median |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, strategy, *_ in selected(args):
        runs = results[label]
        ok = [r for r in runs if r["ok"] and r["strategy"] == strategy]
        waits = [r.get("wait_ms", 0.0) for r in runs]
        b_ms = [r["b_ms"] for r in ok if r.get("b_ms") is not None]
        lines.append("| %s | %s | %d/%d | %s | %s | %s | %s | %s |" % (
            label, strategy, len(ok), len(runs),
            fmt(statistics.median([r["ms"] for r in ok]) if ok else None, ".1f"),
            fmt(pct([r["ms"] for r in ok], 0.9), ".1f"),
            fmt(statistics.median(b_ms) if b_ms else None, ".1f"),
            fmt(statistics.median([r["probes"] for r in ok]) if ok else None),
            fmt(statistics.median(waits) if waits else None, ".1f")))
    odd = ["- %s run %d: %s" % (label, i + 1, r.get("why") or "strategy %s" % r["strategy"])
           for label, strategy, *_ in selected(args) for i, r in enumerate(results[label])
           if not (r["ok"] and r["strategy"] == strategy)]
    return "\n".join(lines + ["", "Failures and odd runs:"] + (odd or ["- none"])) + "\n"


ASYM = "## Asymmetric delay"


def put_section(text: str, tag: str, section: str) -> str:
    """``text`` with the ``### tag`` section under :data:`ASYM` replaced by
    ``section`` (added at the end when missing)."""
    if ASYM not in text:
        text = text.rstrip("\n") + "\n\n" + ASYM + "\n\n"
    head, _, tail = text.partition(ASYM)
    parts = re.split(r"(?m)^(?=### )", tail)
    intro, subs = parts[0], parts[1:]
    mine = [i for i, sub in enumerate(subs) if sub.startswith("### %s\n" % tag)]
    if mine:
        subs[mine[0]] = section
    else:
        subs.append(section)
    return head + ASYM + intro + "".join(sub.rstrip("\n") + "\n\n" for sub in subs).rstrip("\n") + "\n"


def selected(args):
    if not args.pairs:
        return PAIRS
    wanted = [p.strip() for p in args.pairs.split(",")]
    return [p for p in PAIRS if p[0] in wanted]


def build(lab, pairs, delay_a: float = 0, delay_b: float = 0):
    from natlab import Nat
    from natlab.flows import start_flows
    hosts, routers = {}, []
    for i, (label, strategy, na, nb, busy) in enumerate(pairs):
        sa = lab.add_site("h%d%sa" % (i, SHORT[na]), Nat(na), hosts=2 if busy else 1, delay_ms=delay_a)
        sb = lab.add_site("h%d%sb" % (i, SHORT[nb]), Nat(nb), delay_ms=delay_b)
        if busy:
            start_flows(sa.hosts[1], rate=20)
        hosts[label] = (sa.hosts[0], sb.hosts[0])
        if strategy in ("predicted", "birthday"):
            for site in (sa, sb):
                site.router.run(["nft", "-f", "-"], input=COUNTER, check=True)
                routers.append(site.router)
    return hosts, routers


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--ice-reps", type=int, default=3)
    ap.add_argument("--head-start", type=float, default=0.5)
    ap.add_argument("--sample", type=float, default=0.5, help="seconds between packet-counter samples")
    ap.add_argument("--output", type=Path, default=RESULTS)
    ap.add_argument("--delay-a", type=float, default=0.0, help="one-way ms on every A site's WAN link")
    ap.add_argument("--delay-b", type=float, default=0.0, help="one-way ms on every B site's WAN link")
    ap.add_argument("--pairs", default="", help="comma list of pair labels (default: all)")
    ap.add_argument("--tag", default="", help="with delays: the name of this run's section (e.g. before, after)")
    args = ap.parse_args()
    asym = bool(args.delay_a or args.delay_b)
    if asym and not args.tag:
        ap.error("--delay-a/--delay-b need --tag (the section they write)")
    from natlab import Lab, unavailable_reason
    from natlab.salon import start_salon
    reason = unavailable_reason()
    if reason:
        log("hard-NAT benchmark SKIPPED, %s unchanged: %s" % (os.path.relpath(args.output), reason))
        return 0
    signal.signal(signal.SIGTERM, lambda s, f: sys.exit(128 + s))
    try:
        import aioice  # noqa: F401
    except ImportError:
        args.ice_reps = 0
    t0 = time.monotonic()
    pairs = selected(args)
    results = {label: [] for label, *_ in pairs}
    ice = {label: [] for label, *_ in pairs}
    with Lab() as lab:
        hosts, routers = build(lab, pairs, args.delay_a, args.delay_b)
        start_salon(lab)
        log("lab built: %d sites in %.1f s" % (len(lab.sites), time.monotonic() - t0))
        with Sampler(routers, args.sample) as sampler:
            for rep in range(args.reps):
                for label, r in run_natsalon(pairs, hosts, rep, args.head_start).items():
                    results[label].append(r)
                log("run %d: %s" % (rep + 1, ", ".join(
                    "%s %s" % (label, ("%.0f ms" % r["ms"]) if r["ok"] else
                               ("none %.2f s" % r["none_s"] if "none_s" in r else "FAILED"))
                    for label, r in sorted(results_last(results).items()))))
        worst = sampler.worst
        for rep in range(args.ice_reps):
            for label, r in run_aioice(pairs, hosts, args.head_start).items():
                ice[label].append(r)
            log("aioice run %d: %s" % (rep + 1, ", ".join("%s %s" % (k, "ok" if v["ok"] else "failed")
                                                           for k, v in sorted(ice_last(ice).items()))))
    took = time.monotonic() - t0
    RAW.parent.mkdir(parents=True, exist_ok=True)
    RAW.write_text(json.dumps({"results": results, "ice": ice, "worst_pps": worst}))
    if asym:
        old = args.output.read_text() if args.output.exists() else ""
        args.output.write_text(put_section(old, args.tag, asym_section(results, args, took)))
        log("wrote section %r of %s in %.0f s" % (args.tag, os.path.relpath(args.output), took))
        return 0
    text = report(results, ice, worst, args, took)
    old = args.output.read_text() if args.output.exists() else ""
    if ASYM in old:  # the asymmetric-delay runs stay
        text = text.rstrip("\n") + "\n\n" + ASYM + old.partition(ASYM)[2]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(text)
    log("wrote %s in %.0f s" % (os.path.relpath(args.output), took))
    return 0


def results_last(results):
    return {k: v[-1] for k, v in results.items() if v}


def ice_last(ice):
    return {k: v[-1] for k, v in ice.items() if v}


if __name__ == "__main__":
    sys.exit(main())
