#!/usr/bin/env python3
"""Introducer benchmark: JOINs handled per second, and memory per waiting member.

In-process, no sockets: a :class:`natsalon.server.service.SalonService` built on a
``twisted.internet.task.Clock`` (time does not move during a run), its
primary :class:`natsalon.server.reflector.ReflectorProtocol` connected to the
in-memory :class:`natsalon.testing.FakeDatagramTransport`.  Each JOIN is
fed as bytes to ``datagramReceived``, so a figure covers what the salon does
per datagram after the kernel: STUN decode, dispatch, the introducer's
cookie HMAC and checks, the room registry, encoding the answer (and, for
the pairing join, the pushed indication), and the write to the (fake)
transport.  Not covered: the kernel, the reactor's socket loop.

Kinds of JOIN, each measured over ``--joins`` datagrams (distinct rooms and
source addresses, 10.x lab addresses; nothing is sent anywhere):

- ``cookie``: a JOIN without cookie, answered 401 + NS-COOKIE (stateless);
- ``register``: a JOIN with its cookie opening a new room (member waits);
- ``poll``: the waiting member's repeated JOIN (refresh);
- ``pair``: the second member's JOIN, answered with the introduction, the
  first member's introduction pushed as an indication;
- ``room``: a whole meeting, cookie + join for each of the two members
  (4 datagrams; the figure is rooms per second).

Every run is checked (right answer kind per datagram) and repeated
``--repeats`` times on a fresh service; medians are reported.

Memory per waiting member: N members join N rooms (each from its own source
address, as members behind different NATs do) and stay waiting;
``tracemalloc`` counts the bytes still allocated after a ``gc.collect()``
(the JOINs are built inside the measured window, so the JOIN each member
keeps for its peer is counted), and, as a cross-check without tracemalloc, a
child process reports its RSS growth.  Per-source rate limiting is off
(``rate_limit=0``): its table is per source and cleared every second, not
per member.

Writes bench/results/introducer.md; asserts nothing about speed.
"""
from __future__ import annotations

from benchinfo import cpu_model
import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
RESULTS = BENCH / "results" / "introducer.md"

from twisted.internet.task import Clock  # noqa: E402

from natsalon import wire  # noqa: E402
from natsalon.server.service import SalonConfig, SalonService  # noqa: E402
from natsalon.stun import Address, decode  # noqa: E402
from natsalon.testing import FakeDatagramTransport  # noqa: E402

KINDS = ("cookie", "register", "poll", "pair", "room")
START = 1_000_000.0  # the Clock's time during a run


LOAD_AT_START = " / ".join("%.2f" % x for x in os.getloadavg())


def log(msg: str) -> None:
    print("[bench] " + msg, file=sys.stderr, flush=True)


def source(i: int, side: int) -> tuple:
    """Distinct lab source addresses: side 0 in 10.0-63.x.x, side 1 in 10.64-127.x.x."""
    return ("10.%d.%d.%d" % ((i >> 16) + 64 * side, (i >> 8) & 255, i & 255), 40000 + side)


class Salon:
    """A fresh in-process salon and its fake transport."""

    def __init__(self, rooms: int) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.svc = SalonService(self.clock, SalonConfig(rate_limit=0, max_rooms=rooms + 10,
                                                        max_waiting_per_ip=16))
        self.proto = self.svc.protocols[0]
        self.transport = FakeDatagramTransport()
        self.proto.makeConnection(self.transport)
        self.cookies = self.svc.introducer.cookies

    def cookie(self, src: tuple, room_id: bytes) -> bytes:
        return self.cookies.issue(Address(*src), room_id, self.clock.seconds())


class Member:
    __slots__ = ("room_id", "k_join", "nonce", "src", "bare", "joined")

    def __init__(self, room_id: bytes, k_join: bytes, src: tuple) -> None:
        self.room_id, self.k_join, self.src = room_id, k_join, src
        self.nonce = os.urandom(16)
        cands = (Address("10.200.0.2", src[1]),)
        self.bare = wire.join_request(room_id, self.nonce, cands, k_join)[1]
        self.joined = b""

    def with_cookie(self, salon: Salon) -> None:
        cands = (Address("10.200.0.2", self.src[1]),)
        self.joined = wire.join_request(self.room_id, self.nonce, cands, self.k_join,
                                        cookie=salon.cookie(self.src, self.room_id))[1]


def feed(salon: Salon, datagrams) -> float:
    """Hand every (data, addr) to the protocol; seconds taken."""
    receive = salon.proto.datagramReceived
    t = time.perf_counter()
    for data, addr in datagrams:
        receive(data, addr)
    return time.perf_counter() - t


def answers(salon: Salon) -> list:
    out = [wire.parse_join_answer(decode(d)).status for d, _ in salon.transport.written]
    salon.transport.written.clear()
    return out


def one_repeat(n: int) -> dict:
    """Every kind once over n rooms (a fresh salon each); rates in datagrams/s."""
    rates = {}
    salon = Salon(n)
    firsts = [Member(os.urandom(16), os.urandom(32), source(i, 0)) for i in range(n)]
    seconds = [Member(m.room_id, m.k_join, source(i, 1)) for i, m in enumerate(firsts)]
    for m in firsts + seconds:
        m.with_cookie(salon)
    checks = []

    dt = feed(salon, [(m.bare, m.src) for m in firsts])
    rates["cookie"] = n / dt
    checks.append(("cookie", answers(salon), ["cookie"] * n))
    dt = feed(salon, [(m.joined, m.src) for m in firsts])
    rates["register"] = n / dt
    checks.append(("register", answers(salon), ["waiting"] * n))
    dt = feed(salon, [(m.joined, m.src) for m in firsts])
    rates["poll"] = n / dt
    checks.append(("poll", answers(salon), ["waiting"] * n))
    dt = feed(salon, [(m.joined, m.src) for m in seconds])
    rates["pair"] = n / dt
    checks.append(("pair", sorted(answers(salon)), ["introduced"] * (2 * n)))

    salon = Salon(n)  # whole meetings on a fresh salon, cookies fetched as clients do
    for m in firsts + seconds:
        m.with_cookie(salon)
    seq = []
    for a, b in zip(firsts, seconds):
        seq += [(a.bare, a.src), (a.joined, a.src), (b.bare, b.src), (b.joined, b.src)]
    dt = feed(salon, seq)
    rates["room"] = n / dt
    got = answers(salon)
    checks.append(("room", sorted(got), sorted(["cookie", "waiting", "cookie", "introduced", "introduced"] * n)))
    for kind, got, want in checks:
        if got != want:
            raise RuntimeError("%s: unexpected answers (%d of %d as expected)"
                               % (kind, sum(1 for g, w in zip(got, want) if g == w), len(want)))
    return rates


def fill(salon: Salon, n: int, start: int = 0) -> None:
    """n members join n rooms and wait; the JOINs are built here (their bytes
    are kept by the registry, so they count).  ``start`` numbers the first
    member's source address, so later fills use new sources."""
    receive = salon.proto.datagramReceived
    written = salon.transport.written
    for i in range(start, start + n):
        m = Member(os.urandom(16), os.urandom(32), source(i, 0))
        m.with_cookie(salon)
        receive(m.joined, m.src)
        if i % 1024 == 0:
            written.clear()
    written.clear()


def memory_tracemalloc(n: int) -> dict:
    salon = Salon(n)
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    fill(salon, n)
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    rooms = salon.svc.introducer.rooms
    if rooms.waiting() != n:
        raise RuntimeError("%d members waiting, expected %d" % (rooms.waiting(), n))
    return {"bytes": used, "per_member": used / n}


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_rss_child(n: int) -> None:
    salon = Salon(n)
    fill(salon, 1000)  # warm up: first allocations of every type
    gc.collect()
    before = rss_bytes()
    fill(salon, n, start=1000)
    gc.collect()
    used = rss_bytes() - before
    print(json.dumps({"bytes": used, "per_member": used / n, "waiting": salon.svc.introducer.rooms.waiting()}))


def memory_rss(n: int) -> dict:
    r = subprocess.run([sys.executable, __file__, "--rss-child", str(n)], capture_output=True, text=True,
                       timeout=600)
    if r.returncode != 0:
        raise RuntimeError("RSS child failed: %s" % r.stderr.strip()[-500:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def med(values):
    return statistics.median(values)


def report(args, rates: list, mem: dict) -> str:
    import twisted
    cpu = cpu_model()
    labels = {
        "cookie": "JOIN without cookie → 401 + cookie",
        "register": "JOIN with cookie, new room → waiting",
        "poll": "waiting member's poll → waiting",
        "pair": "second member's JOIN → introduction + pushed indication",
        "room": "whole meeting (2 × cookie + join = 4 datagrams): **rooms/s**",
    }
    rows = ["| JOIN | per second (median) | min–max | µs each |", "|---|---|---|---|"]
    for k in KINDS:
        vals = [r[k] for r in rates]
        m = med(vals)
        rows.append("| %s | %s | %s–%s | %.1f |" % (labels[k], format(m, ",.0f"), format(min(vals), ",.0f"),
                                                   format(max(vals), ",.0f"), 1e6 / m))
    mrows = ["| waiting members | tracemalloc bytes/member (median) | RSS growth bytes/member (median) | "
             "tracemalloc total MB |", "|---|---|---|---|"]
    for n in args.members:
        t = [x["per_member"] for x in mem[n]["tracemalloc"]]
        r = [x["per_member"] for x in mem[n]["rss"]]
        mrows.append("| %s | %.0f | %.0f | %.1f |" % (format(n, ","), med(t), med(r),
                                                      med([x["bytes"] for x in mem[n]["tracemalloc"]]) / 1e6))
    return "\n".join([
        "# Introducer benchmark: joins per second, memory per waiting member",
        "",
        "**In-process** measurement (no sockets, no kernel): the salon's `ReflectorProtocol.datagramReceived` "
        "fed JOIN datagrams as bytes, over an in-memory transport, time frozen by a `task.Clock`. "
        "Generated by `bench/introducer_bench.py` (method in its docstring).",
        "",
        "- date: %s" % datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "- machine: %s, nproc %s, %s, Linux %s" % (platform.node(), os.cpu_count(), cpu, platform.release()),
        "- load average when the run started: %s (anything else running shares the cores)" % LOAD_AT_START,
        "- %s %s, Twisted %s" % (platform.python_implementation(), platform.python_version(), twisted.__version__),
        "- %s JOINs of each kind per run, %d runs, each on a fresh salon; memory: %d runs per size"
        % (format(args.joins, ","), args.repeats, args.mem_repeats),
        "- command: `%s`" % " ".join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:]),
        "",
        "## JOINs handled per second (one core, CPython)",
        "",
        *rows,
        "",
        "Each datagram: STUN decode, dispatch, cookie HMAC-SHA256 check (or issue), room registry, answer "
        "encoding, write to the transport. Every answer was checked (cookie / waiting / introduced as "
        "expected). Not counted: the kernel and the reactor's socket loop; the reflector benchmark "
        "(`results/reflector.md`) shows what those cost per Binding answer on the same machine.",
        "",
        "## Memory per waiting member",
        "",
        *mrows,
        "",
        "A waiting member holds a room entry (dict slot, `Room` and `Member` dataclasses, its `Address`), "
        "its JOIN kept verbatim for the peer (~130 bytes), and a count in the per-source-IP table "
        "(each member here has its own source address, the worst case for that table). "
        "*tracemalloc* counts Python allocations still live after `gc.collect()`; *RSS growth* is the "
        "child process's resident set growth for the same fill (allocator and page granularity included). "
        "At the default `--max-rooms` of 10,000 a full salon holds about %.1f MB of rooms."
        % (med([x["per_member"] for n in args.members for x in mem[n]["tracemalloc"]]) * 10000 / 1e6),
    ]) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--joins", type=int, default=20000, help="JOINs of each kind per run")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--members", default="10000,100000", help="comma list of waiting-member counts")
    ap.add_argument("--mem-repeats", type=int, default=3)
    ap.add_argument("--output", type=Path, default=RESULTS)
    ap.add_argument("--rss-child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_child:
        memory_rss_child(args.rss_child)
        return 0
    args.members = [int(x) for x in args.members.split(",") if x.strip()]
    if args.joins < 1 or args.repeats < 1 or not args.members or min(args.members) < 1:
        ap.error("bad --joins/--repeats/--members")
    rates = []
    for r in range(args.repeats):
        rates.append(one_repeat(args.joins))
        log("run %d: %s" % (r + 1, ", ".join("%s %.0f/s" % (k, v) for k, v in rates[-1].items())))
    mem = {}
    for n in args.members:
        mem[n] = {"tracemalloc": [], "rss": []}
        for r in range(args.mem_repeats):
            mem[n]["tracemalloc"].append(memory_tracemalloc(n))
            mem[n]["rss"].append(memory_rss(n))
            log("%d waiting members: tracemalloc %.0f B/member, RSS %.0f B/member"
                % (n, mem[n]["tracemalloc"][-1]["per_member"], mem[n]["rss"][-1]["per_member"]))
    text = report(args, rates, mem)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_suffix(".md.tmp")
    tmp.write_text(text)
    os.replace(tmp, args.output)
    print(text)
    log("wrote %s" % os.path.relpath(args.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
