#!/usr/bin/env python3
"""Introducer benchmark: JOINs and whole meetings per second against a running
``twistd -n natsalon`` over real sockets, with the memory registry and with the
Redis registry; memory per waiting member at 100,000 members.

Method:

- The salon runs as the user runs it (``.venv/bin/twistd -n --pidfile= natsalon
  --interface 127.0.0.1 --rate-limit 0 ...``) pinned to core 0 (``taskset -c
  0``); with ``--rooms unix:...`` for the Redis rows, a ``redis-server --save ''
  --appendonly no`` on a unix socket, pinned to core 1.  The load generator,
  ``bench/build/joinload`` (C, ``bench/joinload.c``), runs on core 1 too: it
  replays prepared datagrams from two UDP sockets with at most ``--window``
  requests outstanding (closed loop) and counts answers by STUN class, and
  the indications the salon pushes.  With nothing to read it keeps polling
  (yielding its core) for ``--spin-us`` before it sleeps: on loopback the
  sender of a datagram pays, in its own system time, for waking a sleeping
  receiver, which the salon does not towards clients on other hosts.
- The salon is given a ``--cookie-secret-file``; the harness knows the
  secret, so it prepares JOINs that carry valid cookies for the generator's
  two source ports (a client fetches its cookie with a JOIN without one: the
  ``cookie`` kind measures that round trip, and the ``meeting`` kind sends it
  as a client does).  ``--member-timeout 120`` keeps members while a run
  lasts; ``--max-waiting-per-ip`` and ``--max-rooms`` are raised since every
  member comes from 127.0.0.1.
- Kinds, each ``--joins`` datagrams, distinct rooms, one candidate per JOIN:
  ``cookie`` (no cookie: 401 + NS-COOKIE), ``register`` (new room: waiting),
  ``poll`` (the same members again: waiting), ``pair`` (the second member of
  each room, from the other socket: introduced, and an indication pushed to
  the first), ``meeting`` (per room: A without cookie, A with, B without, B
  with; the figure is rooms per second).  Each run checks every answer's class
  and the number of indications.
- Binding answers per second, for scale: ``bench/build/stunload`` against the
  same salon right after the JOIN kinds (2 s, window 1024).
- Rounds alternate memory and Redis; medians over rounds.
- ``--salon-tree DIR`` runs the salon from another copy of the code (say
  ``git archive`` of an earlier commit, unpacked), with this venv;
  ``--compare-tree DIR`` runs that copy too, in every round beside this
  tree's (both registries), and adds a before / after table: the figures
  of both from one run, one machine and one generator.
- Memory: a fresh salon, 100,000 members registered (each its own room);
  salon RSS growth (``VmRSS``) with memory, Redis ``used_memory`` growth with
  Redis (and the salon's RSS growth beside it), divided by the members.

Writes bench/results/introducer.md; asserts nothing about speed.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))
RESULTS = BENCH / "results" / "introducer.md"
JOINLOAD = BENCH / "build" / "joinload"
STUNLOAD = BENCH / "build" / "stunload"
TWISTD = ROOT / ".venv" / "bin" / "twistd"
SALON_CPU, LOAD_CPU = "0", "1"

from benchinfo import cpu_model  # noqa: E402
from natsalon import wire  # noqa: E402
from natsalon.server.introducer.cookies import CookieJar  # noqa: E402
from natsalon.stun import Address  # noqa: E402

KINDS = ("cookie", "register", "poll", "pair", "meeting")
SECRET = os.urandom(24).hex().encode()
_children: list = []


def log(msg: str) -> None:
    print("[bench] " + msg, file=sys.stderr, flush=True)


#: the salon's code when not this tree's (``--salon-tree``)
SALON_TREE = None
#: joinload's ``--spin-us``
SPIN_US = 2000


def spawn(argv, logfile: Path, cpu: str, env=None) -> subprocess.Popen:
    with open(logfile, "wb") as out:
        proc = subprocess.Popen(["taskset", "-c", cpu, *argv], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=ROOT, start_new_session=True, env=env)
    _children.append(proc)
    return proc


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    if proc in _children:
        _children.remove(proc)


def free_udp_ports(n: int) -> list:
    """``n`` free UDP ports below the kernel's ephemeral range (20000 to
    32767), so that no other program's ephemeral bind takes one while the
    generator rebinds it for each kind (it happened on a shared machine)."""
    import random

    socks, ports = [], []
    while len(ports) < n:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.bind(("127.0.0.1", random.randrange(20000, 32768)))
        except OSError:
            s.close()
            continue
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def binding_answers(port: int, tries: int = 100) -> bool:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(0.1)
    try:
        for _ in range(tries):
            s.sendto(b"\x00\x01\x00\x00\x21\x12\xa4\x42" + os.urandom(12), ("127.0.0.1", port))
            try:
                s.recv(1500)
                return True
            except socket.timeout:
                continue
        return False
    finally:
        s.close()


def rss(pid: int) -> int:
    for line in Path("/proc/%d/status" % pid).read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


class Redis:
    def __init__(self, tmp: Path) -> None:
        tmp.mkdir(exist_ok=True)
        self.sock = tmp / "redis.sock"
        self.proc = spawn(["redis-server", "--save", "", "--appendonly", "no", "--port", "0", "--dir", str(tmp),
                           "--unixsocket", str(self.sock), "--unixsocketperm", "700"], tmp / "redis.log", LOAD_CPU)
        for _ in range(200):
            if self.sock.exists() and self.cli("PING").strip() == "PONG":
                return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def cli(self, *words: str) -> str:
        return subprocess.run(["redis-cli", "-s", str(self.sock), *words], capture_output=True, text=True,
                              timeout=30).stdout

    def used_memory(self) -> int:
        for line in self.cli("INFO", "memory").splitlines():
            if line.startswith("used_memory:"):
                return int(line.split(":")[1])
        raise RuntimeError("no used_memory")


class Salon:
    def __init__(self, tmp: Path, redis: "Redis | None", tree: "Path | None" = None) -> None:
        self.port, alt = free_udp_ports(2)
        secret = tmp / "cookie-secret"
        secret.write_bytes(SECRET + b"\n")
        argv = [str(TWISTD), "-n", "--pidfile=", "natsalon", "--interface", "127.0.0.1", "--port", str(self.port),
                "--alt-port", str(alt), "--rate-limit", "0", "--max-rooms", "1000000",
                "--max-waiting-per-ip", "1000000", "--member-timeout", "120", "--stats-interval", "86400",
                "--cookie-secret-file", str(secret)]
        if redis is not None:
            argv += ["--rooms", "unix:" + str(redis.sock), "--instance-id", "bench"]
        self.logfile = tmp / ("salon-%s.log" % ("redis" if redis else "memory"))
        env = None
        tree = tree or SALON_TREE
        if tree is not None:
            env = dict(os.environ, PYTHONPATH=str(tree))
        self.proc = spawn(argv, self.logfile, SALON_CPU, env)
        if not binding_answers(self.port):
            stop(self.proc)
            raise RuntimeError("salon did not start:\n" + self.logfile.read_text()[-2000:])
        if redis is not None:  # wait until its link to Redis is up
            for _ in range(100):
                if "connected" in self.logfile.read_text():
                    break
                time.sleep(0.05)
        self.jar = CookieJar(SECRET)


class Members:
    """Prepared JOINs: member ``i`` of side ``s`` is in room ``base + i``."""

    def __init__(self, base: int, n: int, sides=(0, 1)) -> None:
        self.rooms = [(base + i).to_bytes(16, "big") for i in range(n)]
        self.nonces = {s: [os.urandom(16) for _ in range(n)] for s in sides}

    def join(self, txid_index: int, side: int, i: int, cookie_for=None) -> bytes:
        cookie = cookie_for(self.rooms[i]) if cookie_for else None
        txid = struct.pack("!I", txid_index) + os.urandom(8)
        return wire.join_request(self.rooms[i], self.nonces[side][i], (Address("10.200.0.2", 40000 + side),),
                                 b"k" * 32, cookie, txid=txid)[1]


def write_file(path: Path, records) -> None:
    with open(path, "wb") as f:
        for side, data in records:
            f.write(struct.pack("!BH", side, len(data)) + data)


def replay(salon: Salon, path: Path, gen_ports, window: int) -> dict:
    r = subprocess.run(["taskset", "-c", LOAD_CPU, str(JOINLOAD), "--port", str(salon.port), "--file", str(path),
                        "--ports", "%d,%d" % tuple(gen_ports), "--window", str(window), "--timeout-ms", "10000",
                        "--spin-us", str(SPIN_US)],
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError("joinload failed: " + r.stderr)
    return json.loads(r.stdout.strip().splitlines()[-1])


def check(kind: str, res: dict, success: int, error: int, indications: int) -> None:
    """Every request answered, with the right class; an answer later than
    the generator's timeout (the shared machine stalled the salon) still
    counts as long as it came."""
    late = min(res["lost"], res["duplicate"])
    if late and res["error"] == error:
        res = dict(res, success=res["success"] + late, lost=res["lost"] - late, duplicate=res["duplicate"] - late)
    bad = [k for k in ("lost", "unknown", "duplicate") if res[k]]
    if res["success"] != success or res["error"] != error or res["indications"] != indications or bad:
        raise RuntimeError("%s: unexpected answers %s (expected %d success, %d error, %d indications)"
                           % (kind, res, success, error, indications))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (the salon's own core
    time: a rate per CPU-second does not depend on what else the shared
    machine runs)."""
    fields = Path("/proc/%d/stat" % pid).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def kinds_run(salon: Salon, n: int, tmp: Path, window: int, base: int, redis=None) -> dict:
    """Each kind's rate: per wall-clock second, and per second of the
    salon's CPU time (and Redis's CPU time per unit)."""
    gen_ports = free_udp_ports(2)
    src = [Address("127.0.0.1", p) for p in gen_ports]

    def cookie(side):
        now = time.time()
        return lambda room: salon.jar.issue(src[side], room, now)

    m = Members(base, n)
    rooms = n // 4
    mm = Members(base + n, rooms)

    def meeting():
        out = []
        for i in range(rooms):
            for side in (0, 1):
                out.append((side, mm.join(len(out), side, i)))
                out.append((side, mm.join(len(out), side, i, cookie(side))))
        return out

    # built just before each run: a cookie is valid 30 to 60 s
    plans = {
        "cookie": (lambda: [(0, m.join(i, 0, i)) for i in range(n)], (0, n, 0), n),
        "register": (lambda: [(0, m.join(i, 0, i, cookie(0))) for i in range(n)], (n, 0, 0), n),
        "poll": (lambda: [(0, m.join(i, 0, i, cookie(0))) for i in range(n)], (n, 0, 0), n),
        "pair": (lambda: [(1, m.join(i, 1, i, cookie(1))) for i in range(n)], (n, 0, n), n),
        "meeting": (meeting, (2 * rooms, 2 * rooms, rooms), rooms),
    }
    out = {}
    for kind in KINDS:
        build, expected, units = plans[kind]
        path = tmp / (kind + ".bin")
        write_file(path, build())
        cpu0 = cpu_seconds(salon.proc.pid)
        rcpu0 = cpu_seconds(redis.proc.pid) if redis else 0.0
        res = replay(salon, path, gen_ports, window)
        time.sleep(0.2)  # let the salon finish what it still does (pushes)
        cpu = cpu_seconds(salon.proc.pid) - cpu0
        check(kind, res, *expected)
        out[kind] = {"wall": units / res["seconds"], "cpu": units / cpu if cpu else float("nan"),
                     "redis_us": (cpu_seconds(redis.proc.pid) - rcpu0) / units * 1e6 if redis else None}
    return out


def binding_rate(salon: Salon) -> float:
    r = subprocess.run(["taskset", "-c", LOAD_CPU, str(STUNLOAD), "--port", str(salon.port), "--warmup", "0.5",
                        "--duration", "2", "--window", "1024", "--batch", "64"],
                       capture_output=True, text=True, timeout=60)
    res = json.loads(r.stdout.strip().splitlines()[-1])
    for key in ("answers_per_sec", "rate", "answers_per_second"):
        if key in res:
            return float(res[key])
    raise RuntimeError("stunload: no rate in %s" % res)


def memory_run(tmp: Path, registry: str, members: int, window: int) -> dict:
    redis = Redis(tmp / "mem-redis") if registry == "redis" else None
    try:
        salon = Salon(tmp, redis)
        try:
            gen_ports = free_udp_ports(2)
            time.sleep(1.0)
            before = rss(salon.proc.pid)
            used_before = redis.used_memory() if redis else 0
            m = Members(10 ** 9, members, sides=(0,))
            now = time.time()
            src = Address("127.0.0.1", gen_ports[0])
            records = [(0, m.join(i, 0, i, lambda room: salon.jar.issue(src, room, now))) for i in range(members)]
            path = tmp / "memory.bin"
            write_file(path, records)
            res = replay(salon, path, gen_ports, window)
            check("memory", res, members, 0, 0)
            time.sleep(1.0)
            out = {"rss": (rss(salon.proc.pid) - before) / members, "join_bytes": len(records[0][1])}
            if redis:
                out["used_memory"] = (redis.used_memory() - used_before) / members
            return out
        finally:
            stop(salon.proc)
    finally:
        if redis:
            stop(redis.proc)


def med(values):
    return statistics.median(values) if values else float("nan")


def report(args, rates, bindings, mem) -> str:
    regs = ("memory", "redis")
    lines = [
        "# Introducer benchmark: JOINs and meetings per second over real sockets, memory per waiting member",
        "",
        "A running `twistd -n natsalon` (core 0) answers prepared JOINs from `bench/build/joinload` (C, core 1) "
        "over loopback UDP; with `--rooms unix:…` a `redis-server` (core 1, beside the generator) holds the rooms. "
        "Generated by `bench/introducer_bench.py` (method in its docstring).",
        "",
        "- date: %s UTC" % datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "- machine: %s, nproc %d, %s, Linux %s" % (platform.node() or "?", os.cpu_count(), cpu_model(),
                                                 platform.release()),
        "- load average when the run started: %s (the machine is shared: other work ran beside it)" % LOAD_AT_START,
        "- CPython %s; %s" % (platform.python_version(), subprocess.run(["redis-server", "--version"],
                                                                     capture_output=True, text=True).stdout.strip()),
        "- %d datagrams per kind per round, window %d, %d rounds alternating memory and Redis; memory: %d members"
        % (args.joins, args.window, args.rounds, args.members),
        "- command: `bench/introducer_bench.py%s`" % ("" if not sys.argv[1:] else " " + " ".join(sys.argv[1:])),
        "- generator: `joinload --window %d --spin-us %d` (polls for %d µs before it sleeps; see the docstring)"
        % (args.window, SPIN_US, SPIN_US),
        "- salon code: %s%s" % ("this tree" if SALON_TREE is None else "`%s` (--salon-tree)" % SALON_TREE,
                                "" if not args.compare_tree else "; and `%s` (--compare-tree, the *before* rows)"
                                % args.compare_tree),
        "",
        "## Per second (one core for the salon; medians over rounds)",
        "",
        "*per CPU-s*: units per second of the salon process's own CPU time (user + system, from `/proc`), what one "
        "core fully given to the salon would do; it does not depend on the other work sharing the machine. "
        "*wall*: units per wall-clock second of the run, which does (see the load average above). "
        "*Redis µs*: redis-server CPU time per unit.",
        "",
        "| kind | memory: per CPU-s | Redis: per CPU-s | Redis / memory | memory: wall | Redis: wall "
        "| Redis µs | target |",
        "|---|---|---|---|---|---|---|---|",
    ]
    names = {
        "cookie": "JOIN without cookie → 401 + cookie",
        "register": "JOIN with cookie, new room → waiting",
        "poll": "waiting member's poll → waiting",
        "pair": "second member's JOIN → introduction + pushed indication",
        "meeting": "**whole meetings** (2 × cookie + join = 4 datagrams): rooms/s",
    }
    def m(reg, kind, key):
        return med([x[key] for x in rates[reg][kind]])

    for kind in KINDS:
        mv, rv = m("memory", kind, "cpu"), m("redis", kind, "cpu")
        target = "memory ≥ 20,000; Redis ≥ 0.5× memory" if kind in ("register", "poll", "pair") else ""
        lines.append("| %s | %s | %s | %.2f× | %s | %s | %.0f | %s |" % (
            names[kind], "{:,.0f}".format(mv), "{:,.0f}".format(rv), rv / mv if mv else float("nan"),
            "{:,.0f}".format(m("memory", kind, "wall")), "{:,.0f}".format(m("redis", kind, "wall")),
            m("redis", kind, "redis_us"), target))
    lines.append("| reflector: Binding answers/s, wall (stunload, same salon, after the JOIN kinds) | | | | %s | %s "
                 "| | |" % tuple("{:,.0f}".format(med(bindings[r])) for r in regs))
    lines += ["", "Per round, per CPU-s / wall (JOINs, or rooms for meetings):", "",
              "| registry | kind | " + " | ".join("round %d" % (i + 1) for i in range(args.rounds)) + " |",
              "|---|---|" + "---|" * args.rounds]
    for r in rates:
        for kind in KINDS:
            lines.append("| %s | %s | %s |" % (r, kind, " | ".join(
                "{:,.0f} / {:,.0f}".format(v["cpu"], v["wall"]) for v in rates[r][kind])))
    if "memory-before" in rates:
        lines += before_after(args, m)
    lines += [
        "",
        "## Memory per waiting member (%s members, each in its own room)" % "{:,}".format(args.members),
        "",
        "| registry | salon RSS growth, bytes/member | Redis `used_memory` growth, bytes/member | target |",
        "|---|---|---|---|",
        "| memory | %.0f | | ≤ 1,024 |" % mem["memory"]["rss"],
        "| Redis | %.0f | %.0f | ≤ 1,024 |" % (mem["redis"]["rss"], mem["redis"]["used_memory"]),
        "",
        "Each JOIN here is %d bytes (one candidate and a cookie), kept verbatim for the peer. With Redis, a member is "
        "a field of its room's hash (the JOIN and a short header), an entry in the `seen` sorted set, and counts "
        "(rooms, per source); the salon itself keeps nothing per member." % mem["memory"]["join_bytes"],
        "",
        "Every answer was checked: its STUN class (401 error for the cookie kind, success otherwise), no request "
        "lost, unknown or answered twice, and one pushed indication per pairing.",
    ]
    return "\n".join(lines) + "\n"


def before_after(args, m) -> list:
    """The table comparing this tree with ``--compare-tree``'s, per CPU-s."""
    lines = ["", "## Before / after, in this run", "",
             "This tree against `%s` (`--compare-tree`), salons of both run in every round, with the same generator: "
             "medians per CPU-s." % args.compare_tree, "",
             "| kind | memory: before | memory: after | after / before | Redis: before | Redis: after "
             "| after / before |", "|---|---|---|---|---|---|---|"]
    for kind in KINDS:
        cells = []
        for reg in ("memory", "redis"):
            before, after = m(reg + "-before", kind, "cpu"), m(reg, kind, "cpu")
            cells += ["{:,.0f}".format(before), "{:,.0f}".format(after), "%.2f×" % (after / before)]
        lines.append("| %s | %s |" % (kind, " | ".join(cells)))
    return lines


LOAD_AT_START = " / ".join("%.2f" % x for x in os.getloadavg())


def registry_round(tmp: Path, registry: str, redis, rnd: int, args, tree=None) -> dict:
    """One round of every kind against a fresh salon (and an empty Redis),
    then its Binding rate.  On a shared machine another program sometimes
    binds the generator's port between two kinds: the round is then run
    again from the start, with other ports (at most three times)."""
    for attempt in range(3):
        if registry == "redis":
            redis.cli("FLUSHALL")
        salon = Salon(tmp, redis if registry == "redis" else None, tree)
        try:
            got = kinds_run(salon, args.joins, tmp, args.window, base=(rnd * 3 + attempt) * 10 * args.joins,
                            redis=redis if registry == "redis" else None)
            got["bindings"] = binding_rate(salon)
            return got
        except RuntimeError as e:
            if "bind" not in str(e) or attempt == 2:
                raise
            log("round %d %s: %s; running it again with other ports" % (rnd + 1, registry, str(e).strip()))
        finally:
            stop(salon.proc)
    raise AssertionError("unreachable")


def name(registry: str, tree) -> str:
    """A variant's key: the registry, and ``-before`` for ``--compare-tree``'s code."""
    return registry if tree is None else registry + "-before"


def main() -> int:
    global SALON_TREE, SPIN_US
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--joins", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--members", type=int, default=100000)
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--spin-us", type=int, default=2000, help="joinload's --spin-us (0: it sleeps at once)")
    ap.add_argument("--salon-tree", type=Path, help="run the salon from this copy of the code")
    ap.add_argument("--compare-tree", type=Path, help="run this copy of the code too, each round (before / after)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    SALON_TREE, SPIN_US = args.salon_tree, args.spin_us
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))
    for tool, src in ((JOINLOAD, "joinload.c"), (STUNLOAD, "stunload.c")):
        if not tool.exists() or tool.stat().st_mtime < (BENCH / src).stat().st_mtime:
            tool.parent.mkdir(exist_ok=True)
            subprocess.run(["cc", "-O2", "-Wall", "-o", str(tool), str(BENCH / src)], check=True)
    variants = [("memory", None), ("redis", None)]
    if args.compare_tree:
        variants += [("memory", args.compare_tree), ("redis", args.compare_tree)]
    rates = {name(r, t): {k: [] for k in KINDS} for r, t in variants}
    bindings = {name(r, t): [] for r, t in variants}
    mem = {}
    try:
        with tempfile.TemporaryDirectory(prefix="natsalon-ibench-") as t:
            tmp = Path(t)
            redis = Redis(tmp)
            try:
                for rnd in range(args.rounds):
                    for registry, tree in (variants if rnd % 2 == 0 else variants[::-1]):
                        key = name(registry, tree)
                        got = registry_round(tmp, registry, redis, rnd, args, tree)
                        bindings[key].append(got.pop("bindings"))
                        for k, v in got.items():
                            rates[key][k].append(v)
                        log("round %d %s: %s; bindings %.0f/s" % (rnd + 1, key, ", ".join(
                            "%s %.0f/s (%.0f per CPU-s)" % (k, v["wall"], v["cpu"]) for k, v in got.items()),
                            bindings[key][-1]))
            finally:
                stop(redis.proc)
            for registry in ("memory", "redis"):
                mem[registry] = memory_run(tmp, registry, args.members, args.window)
                log("memory %s: %s" % (registry, mem[registry]))
    finally:
        for proc in list(_children):
            stop(proc)
    text = report(args, rates, bindings, mem)
    if not args.no_write:
        RESULTS.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
