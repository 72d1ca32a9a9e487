#!/usr/bin/env python3
"""Connect benchmark: from the second join to a verified path, in path RTTs,
natsalon beside aioice (ICE, RFC 8445) in the NAT lab.

One lab (network namespaces, real nftables NATs; needs root) holds every
pair's sites; the real ``twistd -n natsalon`` runs at 203.0.113.10:3478 and
is both the salon and aioice's STUN server.  Pairs run one at a time (the
machine's cores are not shared between pairs); each pair is repeated
``--reps`` times, the two tools alternating which goes first.

natsalon: ``natsalon connect --json`` in host A, then (``--head-start`` s
later, so A already waits in the room) in host B: B's join is the second
join.  Each side reports ``punch_ms``, from the introduction reaching it to
its path being verified both ways, and ``rtt_ms``, the path RTT its probe
measured.  The time from the second join to a path verified on both sides
is taken as max(punch_ms of A, punch_ms of B): both introductions leave the
salon the moment it handles the second join (B's as the answer, A's as a
pushed indication), so this leaves out only the salon-to-client one-way
delay.  B's ``elapsed_ms`` (from its ``connect()`` call, so with the
cookie and join round trips to the salon) is shown too.

aioice: a small script (``ICE_PEER`` below) in both hosts: A is
controlling.  Each gathers its candidates (host + server-reflexive from our
salon as STUN server), writes them (with ufrag/pwd) to a file in a shared
temporary folder (namespaces share the filesystem: that is the signalling
channel), waits for the other's file, adds the remote candidates and
end-of-candidates, and runs ``connect()``.  It reports the time from having
the remote candidates to ``connect()`` returning; the figure for the pair is
the larger of the two sides (B starts ``--head-start`` s after A, so both
get the remote candidates within a few ms: the analogue of the two
introductions).  After connecting, A sends 10 pings over the nominated pair
and B echoes them: the median is aioice's data RTT.

Relayed pairs (S-S, S-Q: random symmetric against random or sequential
symmetric, no direct path): the salon runs its TURN relay
(``TURN_ARGS``), natsalon relays through it with the credentials the
introduction carries, so *2nd join -> verified* is the time to a verified
relayed path (allocation and signalling included); aioice gets the same
TURN server with credentials of the same form and gathers a relayed
candidate beside its others (its allocation happens while gathering, before
its clock starts).

The relayed session's lifecycle (``--part lifecycle``, its own section of
the report): on fresh S-S pairs forwarding through the relay, a flow of
fixed-size datagrams at each offered rate, then site A's NAT becomes a full
cone (``Site.set_nat``): the time until both sides report ``upgraded``,
then the same flows direct.

IPv6 (``--part ipv6``, its own section, issue 15): the same figures for
pairs of dual-stack sites whose IPv6 is a stateful firewall, open, or
NAT66 (``PAIRS6``; the headline: random symmetric IPv4 on both sides, so
the only direct path is IPv6), a dual-stack site against an IPv6-only one,
and, in the same lab and run, the IPv4 path of comparable sites
(port-restricted cones, ``--no-ipv6``) that every row is divided by.  The
salon serves both families; each side's ``connected`` family, strategy and
path are counted.

Each part replaces only its own section of the report (sections start at
an HTML comment line; one written by hand under its own mark is kept);
``--part all`` (the default) runs the three.

Both times are expressed in path RTTs, the unit being the pair's median
natsalon ``rtt_ms`` (one reference for both tools).  Results go to
bench/results/connect.md.  Only lab addresses; every process is ended by the
lab's teardown; nothing is asserted on timing.
"""
from __future__ import annotations

from benchinfo import cpu_model
import argparse
import collections
import datetime
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
RESULTS = BENCH / "results" / "connect.md"
RAW = BENCH / "build" / "connect_raw.json"  # every run, to re-render the report (--from-raw)

SERVER_IP = "203.0.113.10"
SERVER = SERVER_IP + ":3478"
SECRET = "bench secret, lab only"

# label -> (nat of A, nat of B); "same" puts both hosts behind one NAT
PAIRS = [
    ("P-P", "port_restricted_cone", "port_restricted_cone"),
    ("F-S", "full_cone", "symmetric_random"),
    ("O-R", "open", "restricted_cone"),
    ("W-P", "symmetric_udp_firewall", "port_restricted_cone"),
    ("same NAT (P)", "port_restricted_cone", "same"),
    # no direct path: natsalon relays through the salon's TURN; aioice gets
    # the same TURN server with credentials the salon would hand out
    ("S-S (relay)", "symmetric_random", "symmetric_random"),
    ("S-Q (relay)", "symmetric_random", "symmetric_sequential"),
]
TURN_SECRET = "bench turn secret, lab only"
#: the salon runs its TURN relay; the lab's sites are in 192.0.2.0/24 (a
#: documentation range, refused as a peer by default)
TURN_ARGS = ["--turn-secret", TURN_SECRET, "--turn-allow-peer", "192.0.2.0/24"]

ICE_PEER = r"""
import asyncio, json, os, statistics, sys, time
import aioice

role, sigdir, stun_host, stun_port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
turn = sys.argv[5:7]  # username, password: a relayed candidate from the salon's TURN too
other = "b" if role == "a" else "a"


async def main():
    t_start = time.monotonic()
    kw = dict(turn_server=(stun_host, stun_port), turn_username=turn[0], turn_password=turn[1],
              turn_transport="udp") if turn else {}
    conn = aioice.Connection(ice_controlling=(role == "a"), stun_server=(stun_host, stun_port), use_ipv6=False,
                             **kw)
    await conn.gather_candidates()
    t_gathered = time.monotonic()
    mine = {"ufrag": conn.local_username, "pwd": conn.local_password,
            "candidates": [c.to_sdp() for c in conn.local_candidates]}
    tmp = os.path.join(sigdir, role + ".tmp")
    with open(tmp, "w") as f:
        json.dump(mine, f)
    os.replace(tmp, os.path.join(sigdir, role + ".json"))
    path = os.path.join(sigdir, other + ".json")
    while not os.path.exists(path):
        await asyncio.sleep(0.002)
    with open(path) as f:
        theirs = json.load(f)
    t_remote = time.monotonic()
    conn.remote_username, conn.remote_password = theirs["ufrag"], theirs["pwd"]
    for sdp in theirs["candidates"]:
        await conn.add_remote_candidate(aioice.Candidate.from_sdp(sdp))
    await conn.add_remote_candidate(None)
    out = {"role": role, "gather_ms": (t_gathered - t_start) * 1000,
           "local": [c.type + " " + c.host + ":" + str(c.port) for c in conn.local_candidates]}
    try:
        await asyncio.wait_for(conn.connect(), 20)
    except Exception as e:
        out.update(ok=False, error="%s: %s" % (type(e).__name__, e))
        print(json.dumps(out), flush=True)
        return
    t_connected = time.monotonic()
    out.update(ok=True, connect_ms=(t_connected - t_remote) * 1000)
    pair = conn._nominated.get(1) if hasattr(conn, "_nominated") else None
    if pair is not None:
        out["pair"] = "%s %s:%d -> %s %s:%d" % (pair.local_candidate.type, pair.local_addr[0], pair.local_addr[1],
                                                pair.remote_candidate.type, pair.remote_addr[0], pair.remote_addr[1])
    rtts = []
    if role == "a":
        for i in range(10):
            t = time.monotonic()
            await conn.send(b"ping %d" % i)
            try:
                while True:
                    data = await asyncio.wait_for(conn.recv(), 2)
                    if data == b"pong %d" % i:
                        rtts.append((time.monotonic() - t) * 1000)
                        break
            except asyncio.TimeoutError:
                pass
            await asyncio.sleep(0.01)
        await conn.send(b"bye")
        await asyncio.sleep(0.05)
    else:
        try:
            while True:
                data = await asyncio.wait_for(conn.recv(), 5)
                if data == b"bye":
                    break
                if data.startswith(b"ping "):
                    await conn.send(b"pong " + data[5:])
        except asyncio.TimeoutError:
            pass
    out["data_rtt_ms"] = statistics.median(rtts) if rtts else None
    out["pings_answered"] = len(rtts)
    await conn.close()
    print(json.dumps(out), flush=True)


asyncio.run(main())
"""


LOAD_AT_START = " / ".join("%.2f" % x for x in os.getloadavg())


def log(msg: str) -> None:
    print("[bench] " + msg, file=sys.stderr, flush=True)


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, spec=".1f", dash="–") -> str:
    return dash if v is None else format(v, spec)


def pair_kinds(pair: str) -> str:
    """"host 10.1.0.2:5 -> srflx 192.0.2.11:6" -> "host → srflx"."""
    parts = pair.split()
    return "%s → %s" % (parts[0], parts[3]) if len(parts) >= 5 else pair


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def command() -> str:
    """How this run was started, for the report."""
    return " ".join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:])


def fmt_ratio(v) -> str:
    return fmt(v, ".1f" if v is not None and v < 10 else ".0f")


def communicate(proc: subprocess.Popen, timeout: float) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return -9, out, err
    return proc.returncode, out, err


def last_json(text: str) -> dict | None:
    for line in reversed(text.strip().splitlines()):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return None


def run_natsalon(lab, ha, hb, room: str, head_start: float, servers=(("--server", SERVER),) * 2) -> dict:
    """One natsalon pair; ``servers``: the salon options of A and of B
    (``--server`` and ``--server6``, ``--no-ipv6``)."""
    from natlab import Lab

    def client(h, salon):
        return h.spawn([Lab.bin("natsalon"), "connect", *salon, "--room", room, "--secret", SECRET,
                        "--json", "--timeout", "20", "--punch-timeout", "10"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    pa = client(ha, servers[0])
    time.sleep(head_start)
    pb = client(hb, servers[1])
    sides = []
    for p in (pa, pb):
        rc, out, err = communicate(p, 40)
        ev = last_json(out) or {}
        conn = next((json.loads(l) for l in out.splitlines() if '"connected"' in l), None)
        # the hard-NAT plan (IPv4), announced unless plain
        plan = next((e["strategy"] for e in map(last_json, out.splitlines()) if e and e.get("event") == "strategy"),
                    "plain")
        sides.append({"rc": rc, "conn": conn, "plan": plan, "last": ev, "err": err.strip()[-300:]})
    if not all(s["conn"] for s in sides):
        return {"ok": False, "why": "; ".join("%s rc=%s %s %s" % (n, s["rc"], s["last"], s["err"])
                                              for n, s in zip("AB", sides))}
    a, b = sides[0]["conn"], sides[1]["conn"]
    return {"ok": True, "both_ms": max(a["punch_ms"], b["punch_ms"]), "punch_a": a["punch_ms"],
            "punch_b": b["punch_ms"], "rtt_ms": statistics.mean([a["rtt_ms"], b["rtt_ms"]]),
            "elapsed_b": b["elapsed_ms"], "path": a["path"],
            "sides": [dict({k: s["conn"].get(k) for k in ("path", "family", "strategy")}, plan=s["plan"])
                      for s in sides]}


def turn_credentials() -> list:
    """What the salon hands the members of a room this hour."""
    from natsalon.server.turn.auth import room_credentials
    return list(room_credentials(TURN_SECRET.encode(), os.urandom(16), time.time()))


def run_aioice(lab, ha, hb, head_start: float, relay: bool = False) -> dict:
    turn = turn_credentials() if relay else []
    with tempfile.TemporaryDirectory(prefix="natsalon-ice-") as sigdir:
        os.chmod(sigdir, 0o755)
        pa = ha.spawn([sys.executable, "-c", ICE_PEER, "a", sigdir, SERVER_IP, "3478"] + turn,
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(head_start)
        pb = hb.spawn([sys.executable, "-c", ICE_PEER, "b", sigdir, SERVER_IP, "3478"] + turn,
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        sides = []
        for p in (pa, pb):
            rc, out, err = communicate(p, 60)
            sides.append((rc, last_json(out), err.strip()[-300:]))
    if not all(j and j.get("ok") for _, j, _ in sides):
        return {"ok": False, "why": "; ".join("%s rc=%s %s %s" % (n, rc, j, err)
                                              for n, (rc, j, err) in zip("AB", sides))}
    a, b = sides[0][1], sides[1][1]
    return {"ok": True, "both_ms": max(a["connect_ms"], b["connect_ms"]), "gather_ms": max(a["gather_ms"],
            b["gather_ms"]), "data_rtt_ms": a.get("data_rtt_ms"), "pair": a.get("pair"),
            "candidates": len(a["local"]) + len(b["local"])}


def build(lab, pairs, delays):
    """The sites of every pair at every delay: (host A, host B) by (label,
    delay).  A pair's sites are a NAT name (IPv4 alone) or (IPv4 NAT name
    or None for IPv6-only, IPv6 behaviour or None); site B "same" puts
    both hosts behind A's router."""
    from natlab import V6, Nat

    def site(name, spec, delay, hosts=1):
        nat, v6 = spec if isinstance(spec, tuple) else (spec, None)
        return lab.add_site(name, nat and Nat(nat), hosts=hosts, delay_ms=delay, v6=v6 and V6(v6))

    hosts = {}
    for delay in delays:
        for i, (label, na, nb, *_) in enumerate(pairs):
            tag = "%s%d" % ("d" if delay else "n", i)
            if nb == "same":
                hosts[(label, delay)] = tuple(site(tag + "l", na, delay, hosts=2).hosts)
            else:
                hosts[(label, delay)] = (site(tag + "a", na, delay).hosts[0], site(tag + "b", nb, delay).hosts[0])
    return hosts


def report(pairs, delays, results, args, notes) -> str:
    import twisted
    aioice_version = "n/a"
    try:
        import aioice
        aioice_version = getattr(aioice, "__version__", None) or _dist_version("aioice")
    except ImportError:
        pass
    cpu = cpu_model()
    rows = ["| pair | delay/site | natsalon ok | natsalon: 2nd join → verified, ms | path RTT ms | "
            "natsalon in RTTs | B's connect() → verified, ms | aioice ok | aioice: remote candidates → "
            "connected, ms | aioice in RTTs | aioice gather ms | aioice data RTT ms | aioice ÷ natsalon |",
            "|" + "---|" * 13]
    for delay in delays:
        for label, _, _ in pairs:
            ns = [r for r in results[(label, delay)]["natsalon"] if r["ok"]]
            ic = [r for r in results[(label, delay)]["aioice"] if r["ok"]]
            n_ns, n_ic = len(results[(label, delay)]["natsalon"]), len(results[(label, delay)]["aioice"])
            ns_ms = med([r["both_ms"] for r in ns])
            rtt = med([r["rtt_ms"] for r in ns])
            ic_ms = med([r["both_ms"] for r in ic])
            ratio_ns = ns_ms / rtt if ns_ms is not None and rtt else None
            ratio_ic = ic_ms / rtt if ic_ms is not None and rtt else None
            rel = ic_ms / ns_ms if ic_ms is not None and ns_ms else None
            rows.append("| %s | %s ms | %d/%d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                label, fmt(delay, "g"), len(ns), n_ns, fmt(ns_ms), fmt(rtt, ".2f"), fmt_ratio(ratio_ns),
                fmt(med([r["elapsed_b"] for r in ns])), "%d/%d" % (len(ic), n_ic) if n_ic else "–",
                fmt(ic_ms), fmt_ratio(ratio_ic), fmt(med([r["gather_ms"] for r in ic])),
                fmt(med([r["data_rtt_ms"] for r in ic]), ".2f"), fmt(rel, ".2f") + ("x" if rel else "")))
    paths = sorted({"%s: %s" % (label, r["path"]) for (label, d), v in results.items() for r in v["natsalon"]
                    if r["ok"] and d == delays[0]})
    ice_pairs = sorted({"%s: %s" % (label, pair_kinds(r["pair"])) for (label, d), v in results.items() for r in v["aioice"]
                        if r["ok"] and d == delays[0] and r.get("pair")})
    failures = ["%s (%g ms) %s: %s" % (label, d, tool, r["why"]) for (label, d), v in results.items()
                for tool in ("natsalon", "aioice") for r in v[tool] if not r["ok"]]
    text = [
        "# Connect benchmark: second join to a verified path",
        "",
        "natsalon's salon + punch beside aioice (ICE) in the NAT lab, our salon being aioice's STUN server. "
        "Generated by `bench/connect_bench.py` (method in its docstring).",
        "",
        "- date: %s" % utc_now(),
        "- machine: %s, nproc %s, %s, Linux %s" % (platform.node(), os.cpu_count(), cpu, platform.release()),
        "- load average when the run started: %s (anything else running shares the cores)" % LOAD_AT_START,
        "- Python %s, Twisted %s, aioice %s" % (platform.python_version(), twisted.__version__, aioice_version),
        "- %d repetitions per pair and tool, pairs one at a time, tools alternating which goes first; "
        "B starts %.1f s after A" % (args.reps, args.head_start),
        "- command: `%s`" % command(),
        "",
        "Pairs: P port-restricted cone, F full cone, O open (public address), R restricted cone, "
        "W symmetric UDP firewall (public address, stateful filter), S symmetric (random ports), "
        "Q symmetric (sequential ports); "
        "\"same NAT\" is two hosts behind one P router (natsalon takes the LAN path). "
        "*delay/site* is the one-way delay each site's WAN link adds (the path RTT grows by 4x that).",
        "",
        *rows,
        "",
        "Medians over the successful runs. **natsalon: 2nd join → verified**: max of the two sides' "
        "`punch_ms` (from the introduction reaching that side to its path verified both ways; both "
        "introductions leave the salon as it handles the second join, so the salon-to-client one-way delay "
        "is not counted). **path RTT**: natsalon's own probe RTT on the verified path (`rtt_ms`, mean of the "
        "two sides); it is the unit of both *in RTTs* columns. **B's connect() → verified**: B's `elapsed_ms`, "
        "which adds B's cookie and join round trips to the salon and its interface scan. "
        "**aioice: remote candidates → connected**: max over the two sides of the time from having the "
        "peer's candidates to `Connection.connect()` returning (the controlled side returns once the "
        "nominated pair is confirmed). **aioice gather**: `gather_candidates()` (host + server-reflexive "
        "from our salon). **aioice data RTT**: median of 10 pings over the nominated pair.",
        "",
        "Reading it. Without added delay the path RTT is well under a millisecond, so both tools' times "
        "are set by their timers, and the in-RTT figures there measure timers, not the network: natsalon "
        "verifies in about 1 ms when its first probes get through, and in one probe interval (100 ms) "
        "when the first probe towards a port-restricted cone or a stateful firewall arrives before the "
        "peer's own probe has opened that filter (P-P, W-P); aioice paces its checks every 20 ms and "
        "nominates afterwards (about 21 ms; 42 ms when it must learn a peer-reflexive candidate from a "
        "symmetric NAT), and when its first check is dropped by such a filter it waits for its 500 ms "
        "STUN retransmission (P-P, W-P). With 25 ms per site (path RTT about 100 ms) the network "
        "dominates: natsalon verifies in about one path RTT (1.5 with the symmetric NAT, whose new port "
        "is learnt from the peer's probe), aioice in 1.2 to 1.7. The \"same NAT\" rows never cross the "
        "delayed WAN link once introduced (LAN path), so there the delay only shows in B's join and in "
        "aioice's gathering.",
        "",
        "Relayed pairs (S-S, S-Q: no direct path). The salon runs its TURN relay (`--turn-secret`) and "
        "hands each introduction credentials for the room; natsalon's plan says `none`, so it allocates "
        "at once, re-joins with its relayed address, and verifies the relayed path with PUNCH probes like "
        "any other: *2nd join → verified* is then the time to a verified **relayed** path, allocation "
        "included (two round trips to the salon: the 401 that brings the nonce, then the Allocate), then "
        "the re-join that tells the peer (one more), then the probes through the relay: the side that "
        "learnt the other's relayed address first verifies after one path RTT, the other half an RTT "
        "later (on the answer to its triggered check). A salon round trip is half a path RTT here (one "
        "site's delayed link, twice): about 3 path RTTs in all, 8 ms without delay. *path RTT* is "
        "then the RTT through the relay. aioice gets the same TURN server with credentials of the same "
        "form and gathers a relayed candidate too: its Allocate round trips fall in *gather*, before its "
        "clock starts, so its figure counts only the checks (and its relayed pairs run on its 20 ms "
        "pacing and 500 ms retransmissions).",
    ]
    if paths:
        text += ["", "natsalon paths (no delay): " + "; ".join(paths)]
    if ice_pairs:
        text += ["", "aioice nominated pairs (no delay, A's local → remote candidate type): " + "; ".join(ice_pairs)]
    if notes or failures:
        text += ["", "Notes:", ""] + ["- " + n for n in notes] + ["- failed run: " + f for f in failures]
    return "\n".join(text) + "\n"


def _dist_version(name: str) -> str:
    try:
        from importlib.metadata import version
        return version(name)
    except Exception:  # noqa: BLE001 - only for the report header
        return "?"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--delays", default="0,25", help="comma list of one-way delays per site, ms")
    ap.add_argument("--head-start", type=float, default=1.5, help="seconds between starting A and B")
    ap.add_argument("--tools", default="natsalon,aioice")
    ap.add_argument("--output", type=Path, default=RESULTS)
    ap.add_argument("--raw", type=Path, default=RAW, help="where every run's figures are saved")
    ap.add_argument("--from-raw", action="store_true", help="only re-render the report from --raw")
    ap.add_argument("--part", choices=("all", "matrix", "ipv6", "lifecycle"), default="all",
                    help="the connect matrix, the IPv6 pairs, the relayed session's lifecycle (upgrade, "
                    "throughput), or all three")
    ap.add_argument("--lifecycle-delays", default="0", help="comma list of one-way delays per site for the "
                    "lifecycle part, ms")
    ap.add_argument("--flow-seconds", type=float, default=2.0, help="seconds of each throughput flow")
    ap.add_argument("--flow-rates", default="3000,8000", help="comma list of datagrams/s offered in the flows")
    ap.add_argument("--flow-size", type=int, default=1000, help="payload bytes per flow datagram")
    args = ap.parse_args()
    if args.reps < 1:
        ap.error("--reps must be at least 1")
    if args.from_raw and args.part == "ipv6":
        saved = json.loads(IPV6_RAW.read_text())
        results = {(label, d): v for label, d, v in saved["results"]}
        args.reps, args.head_start, sys.argv = saved["reps"], saved["head_start"], saved["argv"]
        write(merge_section(args.output, IPV6_MARK, ipv6_report(results, saved["delays"], args, saved["load"])),
              args.output)
        return 0
    if args.from_raw:
        saved = json.loads(args.raw.read_text())
        global LOAD_AT_START
        LOAD_AT_START = saved.get("load", "not recorded")
        results = {(label, d): v for label, d, v in saved["results"]}
        args.reps, args.head_start = saved["reps"], saved["head_start"]
        sys.argv = saved["argv"]
        write(merge_section(args.output, None, report(PAIRS, saved["delays"], results, args, saved["notes"])),
              args.output)
        return 0

    from natlab import Lab, unavailable_reason
    from natlab.salon import start_salon
    reason = unavailable_reason()
    if reason:
        # `make bench` goes on with the other benchmarks; the previous results stay
        log("connect benchmark SKIPPED, %s unchanged: cannot run the NAT lab here: %s"
            % (os.path.relpath(args.output), reason))
        return 0
    # a SIGTERM ends the run through SystemExit: the Lab context tears everything down
    signal.signal(signal.SIGTERM, lambda s, f: sys.exit(128 + s))
    if args.part == "lifecycle":
        return lifecycle_main(args)
    if args.part == "ipv6":
        return ipv6_main(args)
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    notes = []
    if "aioice" in tools:
        try:
            import aioice  # noqa: F401
        except ImportError:
            tools.remove("aioice")
            notes.append("aioice column skipped: aioice is not installed (`.venv/bin/pip install aioice`)")
            log(notes[-1])
    delays = [float(d) for d in args.delays.split(",") if d.strip()]
    results = {(label, d): {"natsalon": [], "aioice": []} for d in delays for label, _, _ in PAIRS}
    t0 = time.monotonic()
    with Lab() as lab:
        hosts = build(lab, PAIRS, delays)
        start_salon(lab, extra_args=TURN_ARGS)
        log("lab built: %d sites, %d namespaces, %.1f s" % (len(lab.sites), len(lab.namespaces),
                                                              time.monotonic() - t0))
        k = 0
        for rep in range(args.reps):
            for delay in delays:
                for label, _, _ in PAIRS:
                    ha, hb = hosts[(label, delay)]
                    order = tools if (rep + k) % 2 == 0 else list(reversed(tools))
                    k += 1
                    for tool in order:
                        if tool == "natsalon":
                            r = run_natsalon(lab, ha, hb, "bench-%d-%d" % (rep, k), args.head_start)
                        else:
                            r = run_aioice(lab, ha, hb, args.head_start, relay="relay" in label)
                        results[(label, delay)][tool].append(r)
                        log("rep %d %s %g ms %s: %s" % (rep + 1, label, delay, tool, (
                            "%.1f ms%s" % (r["both_ms"], " rtt %.2f ms" % r["rtt_ms"] if "rtt_ms" in r else "")
                            if r["ok"] else "FAILED " + r["why"])))
    left = [ns for ns in __import__("natlab").list_netns() if ns.startswith(lab.prefix)]
    if left:
        notes.append("namespaces left after the run: %s" % " ".join(left))
    args.raw.parent.mkdir(parents=True, exist_ok=True)
    args.raw.write_text(json.dumps({"results": [[label, d, v] for (label, d), v in results.items()],
                                    "delays": delays, "reps": args.reps, "head_start": args.head_start,
                                    "argv": sys.argv, "notes": notes, "load": LOAD_AT_START}))
    write(merge_section(args.output, None, report(PAIRS, delays, results, args, notes)), args.output)
    log("took %.0f s" % (time.monotonic() - t0))
    if args.part == "all":
        ipv6_main(args)
        return lifecycle_main(args)
    return 0


def merge_section(output: Path, mark: str | None, section: str) -> str:
    """The report at ``output`` with one part replaced by ``section``: the
    part under ``mark`` (a section runs from its mark, an HTML comment
    line, to the next one; a mark not there yet appends the section), or
    with ``mark`` None the matrix at the head, before the first mark.
    Sections written by hand under a mark of their own are kept."""
    text = output.read_text() if output.exists() else ""
    head, *marked = re.split(r"(?m)^(?=<!-- )", text)
    if mark is None:
        head = section
    else:
        at = next((k for k, part in enumerate(marked) if part.startswith(mark)), len(marked))
        marked[at:at + 1] = [section]
    return "\n\n".join(part.strip("\n") for part in [head, *marked] if part.strip()) + "\n"


# -- IPv6 pairs: time to a verified path over IPv6, beside IPv4 (issue 15) --

IPV6_MARK = "<!-- IPv6 pairs (bench/connect_bench.py --part ipv6) -->"
IPV6_RAW = BENCH / "build" / "connect_ipv6_raw.json"

#: label, site A, site B: (IPv4 NAT, or None for an IPv6-only site; IPv6
#: behaviour), and the clients' families: "both" (--server and --server6; an
#: IPv6-only site's client gets the salon's IPv6 address alone) or "ipv4"
#: (--no-ipv6)
PAIRS6 = [
    ("S-S + W6-W6", ("symmetric_random", "firewall"), ("symmetric_random", "firewall"), "both"),
    ("S-S + O6-W6", ("symmetric_random", "open"), ("symmetric_random", "firewall"), "both"),
    ("S-S + N66-W6", ("symmetric_random", "nat66"), ("symmetric_random", "firewall"), "both"),
    ("P+W6 – W6 only", ("port_restricted_cone", "firewall"), (None, "firewall"), "both"),
    ("P-P + W6-W6", ("port_restricted_cone", "firewall"), ("port_restricted_cone", "firewall"), "both"),
    ("P-P + W6-W6, --no-ipv6", ("port_restricted_cone", "firewall"), ("port_restricted_cone", "firewall"), "ipv4"),
]
#: the IPv4 pair every row is divided by (same delay, same run)
IPV4_REFERENCE = "P-P + W6-W6, --no-ipv6"


def salon_options(pair) -> tuple:
    """The salon options of A's and B's ``natsalon connect`` for a PAIRS6 row."""
    from natlab import SERVER_IPS6
    server6 = "[%s]:3478" % SERVER_IPS6[0]
    if pair[3] == "ipv4":
        return (("--server", SERVER, "--no-ipv6"),) * 2
    return tuple(("--server", server6) if nat is None else ("--server", SERVER, "--server6", server6)
                 for nat, _ in pair[1:3])


def ipv6_main(args) -> int:
    from natlab import Lab
    from natlab.salon import start_salon
    load = " / ".join("%.2f" % x for x in os.getloadavg())
    delays = [float(d) for d in args.delays.split(",") if d.strip()]
    results = {(pair[0], d): [] for d in delays for pair in PAIRS6}
    with Lab() as lab:
        hosts = build(lab, PAIRS6, delays)
        start_salon(lab, ipv6=True, extra_args=TURN_ARGS)
        k = 0
        for rep in range(args.reps):
            for delay in delays:
                for pair in PAIRS6:
                    k += 1
                    r = run_natsalon(lab, *hosts[(pair[0], delay)], "v6-%d" % k, args.head_start,
                                     salon_options(pair))
                    results[(pair[0], delay)].append(r)
                    log("ipv6 rep %d %s %g ms: %s" % (rep + 1, pair[0], delay, "%.1f ms rtt %.2f ms %s" % (
                        r["both_ms"], r["rtt_ms"], r["sides"]) if r["ok"] else "FAILED " + r["why"]))
    IPV6_RAW.parent.mkdir(parents=True, exist_ok=True)
    IPV6_RAW.write_text(json.dumps({"results": [[label, d, v] for (label, d), v in results.items()],
                                    "delays": delays, "reps": args.reps, "head_start": args.head_start,
                                    "argv": sys.argv, "load": load}))
    write(merge_section(args.output, IPV6_MARK, ipv6_report(results, delays, args, load)), args.output)
    return 0


def tally(runs, key: str) -> str:
    """How often each side of the successful runs said each ``key``: "6 ×10"."""
    counts = collections.Counter(side[key] for r in runs for side in r["sides"])
    return ", ".join("%s ×%d" % kv for kv in counts.most_common()) or "–"


def ipv6_rows(results: dict, delays) -> list:
    rows = ["| pair | delay/site | ok | family (sides) | strategy (sides) | path (sides) | IPv4 plan (sides) "
            "| 2nd join → verified, ms | path RTT ms | in RTTs | B's connect() → verified, ms "
            "| ÷ IPv4 P-P: 2nd join → verified | ÷ IPv4 P-P: B's connect() → verified |", "|" + "---|" * 13]
    for delay in delays:
        ref = [r for r in results[(IPV4_REFERENCE, delay)] if r["ok"]]
        ref_both, ref_b = med([r["both_ms"] for r in ref]), med([r["elapsed_b"] for r in ref])
        for pair in PAIRS6:
            runs = results[(pair[0], delay)]
            ok = [r for r in runs if r["ok"]]
            both, rtt, el_b = (med([r[k] for r in ok]) for k in ("both_ms", "rtt_ms", "elapsed_b"))
            in_rtts = both / rtt if both is not None and rtt else None
            ratios = [x / y if x is not None and y else None for x, y in ((both, ref_both), (el_b, ref_b))]
            rows.append("| %s | %s ms | %d/%d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                pair[0], fmt(delay, "g"), len(ok), len(runs), *(tally(ok, k) for k in (
                    "family", "strategy", "path", "plan")), fmt(both), fmt(rtt, ".2f"), fmt_ratio(in_rtts),
                fmt(el_b), *(fmt(x, ".2f") + ("x" if x is not None else "") for x in ratios)))
    return rows


def ipv6_report(results: dict, delays, args, load: str) -> str:
    failures = ["%s %g ms: %s" % (label, d, r["why"]) for (label, d), runs in results.items() for r in runs
                if not r["ok"]]
    text = [IPV6_MARK, "", "## IPv6: time to a verified path over IPv6, beside IPv4 (issue 15)", "",
            "- date: %s; load average at its start: %s (other work shares the two cores)" % (
                utc_now(), load),
            "- %d runs per pair and delay, pairs one at a time, B starts %.1f s after A; one lab, the salon "
            "dual-stack (`--interface` 203.0.113.10 and 2001:db8::10, an RFC 5780 grid per family) with its "
            "TURN relay; natsalon only (aioice is not run here)" % (args.reps, args.head_start),
            "- command: `%s`" % command(),
            "",
            "Sites: IPv4 behaviour as in the matrix above (S random symmetric, P port-restricted cone), then "
            "the IPv6 one: W6 stateful firewall (global address, endpoint-independent mapping, "
            "address-and-port-dependent filtering: the IPv6 analogue of P), O6 open (global address, no "
            "filter), N66 NAT66 masquerade; \"W6 only\" is an IPv6-only site (no IPv4 at all) behind a "
            "firewall. The clients are dual-stack (`--server` IPv4 and `--server6` IPv6; the IPv6-only one "
            "`--server [2001:db8::10]:3478` alone), except the last row's, the IPv4 reference: the same "
            "sites as the row above with `--no-ipv6` on both clients.",
            "", *ipv6_rows(results, delays), "",
            "Medians over the successful runs; the figures are those of the matrix above. **2nd join → "
            "verified**: max of the two sides' `punch_ms` (introduction to a path verified both ways). "
            "**path RTT**: the verified path's probe RTT, the unit of *in RTTs*. **B's connect() → verified**: "
            "B's `elapsed_ms` (its cookie and join round trips to the salon, over both families when "
            "dual-stack, and its interface scan included). **family / strategy / path (sides)**: what each "
            "side's `connected` event said, counted over the successful runs (two sides a run); **IPv4 plan**: "
            "each side's hard-NAT plan for IPv4 (its `strategy` event; plain when none was announced). **÷ IPv4 "
            "P-P**: the row's median divided by the IPv4 reference's at the same delay, in the same run. "
            "S-S pairs have no direct IPv4 path (their IPv4 strategy says `none` and they allocate on the "
            "salon's relay), so their direct path is the IPv6 one or nothing."]
    if failures:
        text += ["", "Failed runs:", ""] + ["- " + f for f in failures]
    return "\n".join(text) + "\n"


# -- the relayed session's lifecycle: upgrade to direct, relay vs direct throughput --

LIFECYCLE_MARK = "<!-- relay lifecycle (bench/connect_bench.py --part lifecycle) -->"
LIFECYCLE_RAW = BENCH / "build" / "connect_lifecycle_raw.json"

#: a forwarded flow at a steady rate (bursts every 10 ms): argv count, payload
#: bytes, datagrams/s (to the forward port 7000)
BLAST = r"""
import socket, sys, time
count, size, rate = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
s.bind(("127.0.0.1", 7002))
body = b"x" * size
start, n = time.monotonic(), 0
while n < count:
    due = min(count, int((time.monotonic() - start) * rate) + 1)
    while n < due:
        s.sendto(body, ("127.0.0.1", 7000))
        n += 1
    time.sleep(0.01)
print("sent", count, flush=True)
"""

#: its receiver (the peer's --deliver 7001): bytes and first/last arrival, as JSON once idle
SINK = r"""
import json, socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
s.bind(("127.0.0.1", 7001))
print("ready", flush=True)
s.settimeout(float(sys.argv[1]))
n = size = 0
first = last = None
try:
    while True:
        size += len(s.recv(65536))
        last = time.monotonic()
        first = first or last
        n += 1
except socket.timeout:
    pass
print(json.dumps({"datagrams": n, "bytes": size, "seconds": (last - first) if n > 1 else 0}), flush=True)
"""


def _events_reader(proc, into: list):
    import threading

    def read():
        for line in proc.stdout:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            ev["_t"] = time.monotonic()
            into.append(ev)

    t = threading.Thread(target=read, daemon=True)
    t.start()
    return t


def _wait_event(events: list, name: str, timeout: float) -> dict | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [e for e in events if e.get("event") == name]
        if found:
            return found[-1]
        time.sleep(0.02)
    return None


def measure_flow(ha, hb, count: int, size: int, rate: float) -> dict:
    """``count`` datagrams of ``size`` bytes from A's forward port at
    ``rate`` a second; what B's local receiver got, and at what rate."""
    sink = hb.spawn([sys.executable, "-c", SINK, "2"], stdout=subprocess.PIPE, text=True)
    assert sink.stdout.readline().strip() == "ready"
    rc, _, err = communicate(ha.spawn([sys.executable, "-c", BLAST, str(count), str(size), str(rate)],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), 120)
    got = last_json(communicate(sink, 60)[1]) or {}
    secs = got.get("seconds") or 0
    return {"received": got.get("datagrams", 0) / count, "mbit_s": got["bytes"] * 8 / secs / 1e6 if secs else None}


def run_lifecycle(lab, rep: int, delay: float, seconds: float, size: int, rates) -> dict:
    """One S-S pair (fresh sites): relayed; a flow; site a's NAT becomes a
    full cone; the time to the upgrade on both sides; the same flow direct."""
    from natlab import Lab, Nat
    sa = lab.add_site("u%da%d" % (rep, delay), Nat.SYMMETRIC_RANDOM, delay_ms=delay)
    sb = lab.add_site("u%db%d" % (rep, delay), Nat.SYMMETRIC_RANDOM, delay_ms=delay)
    ha, hb = sa.hosts[0], sb.hosts[0]
    procs, events = [], [[], []]
    for h, evs in zip((ha, hb), events):
        p = h.spawn([Lab.bin("natsalon"), "connect", "--server", SERVER, "--room", "life-%d-%g" % (rep, delay),
                     "--secret", SECRET, "--json", "--timeout", "20", "--forward", "7000",
                     "--deliver", "127.0.0.1:7001"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(p)
        _events_reader(p, evs)
    try:
        if not all(_wait_event(evs, "forwarding", 30) for evs in events):
            return {"ok": False, "why": "no forwarding: %s" % events}
        paths = [_wait_event(evs, "connected", 1)["path"] for evs in events]
        relay = {str(r): measure_flow(ha, hb, int(r * seconds), size, r) for r in rates}
        t_swap = time.monotonic()
        sa.set_nat(Nat.FULL_CONE)
        ups = [_wait_event(evs, "upgraded", 30) for evs in events]
        if not all(ups) or paths != ["relay", "relay"]:
            return {"ok": False, "why": "paths %s, upgraded %s" % (paths, ups)}
        direct = {str(r): measure_flow(ha, hb, int(r * seconds), size, r) for r in rates}
        return {"ok": True, "upgrade_ms": max(u["_t"] - t_swap for u in ups) * 1000,
                "direct_rtt_ms": statistics.mean(u["rtt_ms"] for u in ups),
                "relay_rtt_ms": statistics.mean(_wait_event(evs, "connected", 1)["rtt_ms"] for evs in events),
                "probes": max(u["probes"] for u in ups), "relay": relay, "direct": direct}
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            communicate(p, 10)


#: a steady flow's receiver: the monotonic arrival time of each datagram, as JSON once idle
ARRIVALS = r"""
import json, socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 7001))
print("ready", flush=True)
s.settimeout(float(sys.argv[1]))
times = []
try:
    while True:
        s.recv(65536)
        times.append(time.monotonic())
except socket.timeout:
    pass
print(json.dumps(times), flush=True)
"""


def run_recovery(lab, salon: list, rep: int, delay: float) -> dict:
    """One S-S pair relaying a steady flow (200/s each way) through the
    salon; the salon's process restarted (``salon[0]``, replaced): when
    each side said relay-lost and relay-recovered, and how long the flow
    stopped, from the kill."""
    from natlab import Lab, Nat
    from natlab.salon import start_salon
    hosts = [lab.add_site("r%d%s%d" % (rep, n, delay), Nat.SYMMETRIC_RANDOM, delay_ms=delay).hosts[0] for n in "ab"]
    procs, events = [], [[], []]
    for h, evs in zip(hosts, events):
        p = h.spawn([Lab.bin("natsalon"), "connect", "--server", SERVER, "--room", "lost-%d-%g" % (rep, delay),
                     "--secret", SECRET, "--json", "--timeout", "20", "--forward", "7000",
                     "--deliver", "127.0.0.1:7001"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(p)
        _events_reader(p, evs)
    try:
        if not all(_wait_event(evs, "forwarding", 30) for evs in events):
            return {"ok": False, "why": "no forwarding: %s" % events}
        sinks = [h.spawn([sys.executable, "-c", ARRIVALS, "15"], stdout=subprocess.PIPE, text=True) for h in hosts]
        for k in sinks:
            k.stdout.readline()
        flows = [h.spawn([sys.executable, "-c", BLAST, "4000", "100", "200"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True) for h in hosts]
        time.sleep(3)
        t_kill = time.monotonic()
        os.killpg(salon[0].pid, signal.SIGTERM)
        salon[0].wait(timeout=10)
        salon[0] = start_salon(lab, extra_args=TURN_ARGS)
        t_up = time.monotonic()
        recovered = [_wait_event(evs, "relay-recovered", 30) for evs in events]
        for f in flows:
            communicate(f, 60)
        arrivals = [json.loads(last_line) for last_line in (communicate(k, 60)[1].strip().splitlines()[-1]
                                                             for k in sinks)]
        lost = [_wait_event(evs, "relay-lost", 1) for evs in events]
        if not all(recovered) or any(e["event"] in ("path-lost", "joined") for evs in events for e in evs[1:]
                                     if e["_t"] > t_kill):
            return {"ok": False, "why": "not recovered in the session: %s" % events}
        gaps = []
        for times in arrivals:
            after = [t for t in times if t > t_kill]
            gaps.append((min(after) - max([t for t in times if t <= t_kill] or [t_kill])) if after else None)
        return {"ok": True, "down_s": t_up - t_kill, "lost_s": max(e["_t"] for e in lost) - t_kill,
                "recovered_s": max(e["_t"] for e in recovered) - t_kill,
                "after_up_s": max(e["_t"] for e in recovered) - t_up, "gap_s": max(gaps) if all(gaps) else None}
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            communicate(p, 10)


def recovery_rows(recovery: dict) -> list:
    rows = ["| delay/site | runs ok | salon down, s | kill → relay-lost (both), s | kill → relay-recovered (both), s "
            "| salon up → recovered, s | flow stopped, s |", "|" + "---|" * 7]
    for delay, runs in sorted(recovery.items()):
        ok = [r for r in runs if r["ok"]]
        rows.append("| %s ms | %d/%d | %s | %s | %s | %s | %s |" % (
            fmt(delay, "g"), len(ok), len(runs), *(fmt(med([r[k] for r in ok if r[k] is not None]), ".2f")
                                                   for k in ("down_s", "lost_s", "recovered_s", "after_up_s",
                                                             "gap_s"))))
    return rows


def lifecycle_report(results: dict, rates, args, recovery: dict) -> str:
    up = ["| delay/site | runs ok | NAT change → upgraded (both sides), ms | upgrade probes | RTT relay / direct, ms |",
          "|" + "---|" * 5]
    flows = ["| delay/site | offered | over relay: Mbit/s (received) | direct: Mbit/s (received) | direct ÷ relay |",
             "|" + "---|" * 5]
    for delay, runs in sorted(results.items()):
        ok = [r for r in runs if r["ok"]]
        up.append("| %s ms | %d/%d | %s | %s | %s / %s |" % (
            fmt(delay, "g"), len(ok), len(runs), fmt(med([r["upgrade_ms"] for r in ok]), ".0f"),
            fmt(med([r["probes"] for r in ok]), ".0f"), fmt(med([r["relay_rtt_ms"] for r in ok]), ".2f"),
            fmt(med([r["direct_rtt_ms"] for r in ok]), ".2f")))
        for rate in rates:
            k = str(rate)
            cells = []
            for path in ("relay", "direct"):
                mbit = med([r[path][k]["mbit_s"] for r in ok if r[path][k]["mbit_s"]])
                cells.append((mbit, med([100 * r[path][k]["received"] for r in ok])))
            ratio = cells[1][0] / cells[0][0] if cells[0][0] and cells[1][0] else None
            flows.append("| %s ms | %g/s = %.0f Mbit/s | %s (%s%%) | %s (%s%%) | %s |" % (
                fmt(delay, "g"), rate, rate * args.flow_size * 8 / 1e6, fmt(cells[0][0]), fmt(cells[0][1], ".1f"),
                fmt(cells[1][0]), fmt(cells[1][1], ".1f"), fmt(ratio, ".2f") + ("x" if ratio else "")))
    failures = ["%g ms: %s" % (d, r["why"]) for d, runs in results.items() for r in runs if not r["ok"]]
    text = [LIFECYCLE_MARK, "", "## Relayed pairs: upgrade to direct, a forwarded flow over relay against direct, relay lost",
            "",
            "- date: %s; load average at its start: %s (other work shares the two cores)" % (
                utc_now(), LOAD_AT_START),
            "- %d runs per delay, each on a fresh pair of random symmetric sites (S-S: relayed through the salon's "
            "TURN); flows of %g s, %d-byte datagrams, into A's forward port at each offered rate, one way (A → B), "
            "first relayed, then (after the upgrade) direct, same hosts" % (args.reps, args.flow_seconds,
                                                                            args.flow_size),
            "- command: `%s`" % command(),
            "", *up, "", *flows, "",
            "Medians. Each run: both `natsalon connect --forward` report `connected` with path relay; the flows "
            "go through the relay; then site A's router becomes a full cone (`natlab` `Site.set_nat`, one nft "
            "transaction, live mappings kept) and **NAT change → upgraded** is the time until both sides "
            "reported `upgraded` with path direct (the upgrade probes once a second, so about half a second "
            "on average plus the round trips; B finds A's mapping through its allocation, A learns B's new "
            "source). Then the same flows over the direct path. **Mbit/s**: payload bytes B's receiver got "
            "over the time between its first and last datagram (the offered rate when nothing is lost); "
            "**received**: the share of the datagrams sent. Every process here (both forwarders with their "
            "AEAD, the salon's relay, senders, receivers) is Python sharing the machine's two cores, so the "
            "rates are this machine's; read the ratio, and whether the relay or the forwarders give out first.",
            "", "### Relay lost: the salon restarted under a relayed flow", "", *recovery_rows(recovery), "",
            "Medians. Each run: a fresh S-S pair forwarding a steady flow of 100-byte datagrams, 200/s each way, "
            "through the salon's relay; then the salon's process is ended (SIGTERM: its allocations, relayed "
            "sockets and rooms go with it) and started again on the same ports (**salon down**: until it "
            "answers a Binding request on each socket). Both clients notice (a relayed path is probed every "
            "second; after 2 s of silence a Refresh of the allocation meets 437 allocation mismatch), allocate "
            "again, re-join as the same member with the new relayed address and verify a relayed pair through "
            "it, in the same session (no `path-lost`, no re-join). **flow stopped**: the longest of the two "
            "directions' gap between the last datagram before the kill and the first after (issue 12 asks for "
            "traffic again within 10 s)."]
    failures += ["recovery %g ms: %s" % (d, r["why"]) for d, runs in recovery.items() for r in runs if not r["ok"]]
    if failures:
        text += ["", "Failed runs:", ""] + ["- " + f for f in failures]
    return "\n".join(text) + "\n"


def lifecycle_main(args) -> int:
    from natlab import Lab
    from natlab.salon import start_salon
    delays = [float(d) for d in args.lifecycle_delays.split(",") if d.strip()]
    rates = [float(r) for r in args.flow_rates.split(",") if r.strip()]
    results = {d: [] for d in delays}
    recovery = {d: [] for d in delays}
    with Lab() as lab:
        salon = [start_salon(lab, extra_args=TURN_ARGS)]
        for rep in range(args.reps):
            for delay in delays:
                r = run_recovery(lab, salon, rep, delay)
                recovery[delay].append(r)
                log("recovery rep %d %g ms: %s" % (rep + 1, delay, "recovered %.2f s after the kill, flow stopped %s s"
                                                   % (r["recovered_s"], fmt(r["gap_s"], ".2f")) if r["ok"]
                                                   else "FAILED " + r["why"]))
                r = run_lifecycle(lab, rep, delay, args.flow_seconds, args.flow_size, rates)
                results[delay].append(r)
                log("lifecycle rep %d %g ms: %s" % (rep + 1, delay, (
                    "upgraded %.0f ms, Mbit/s relay %s, direct %s" % (
                        r["upgrade_ms"], [fmt(f["mbit_s"]) for f in r["relay"].values()],
                        [fmt(f["mbit_s"]) for f in r["direct"].values()])
                    if r["ok"] else "FAILED " + r["why"])))
    LIFECYCLE_RAW.parent.mkdir(parents=True, exist_ok=True)
    LIFECYCLE_RAW.write_text(json.dumps({"results": [[d, v] for d, v in results.items()],
                                         "recovery": [[d, v] for d, v in recovery.items()], "argv": sys.argv}))
    write(merge_section(args.output, LIFECYCLE_MARK, lifecycle_report(results, rates, args, recovery)),
          args.output)
    return 0


def write(text: str, output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_suffix(".md.tmp")
    tmp.write_text(text)
    os.replace(tmp, output)
    print(text)
    log("wrote %s" % os.path.relpath(output))


if __name__ == "__main__":
    sys.exit(main())
