#!/usr/bin/env python3
"""TURN relay benchmark: natsalon (CPython, PyPy) vs coturn's turnserver.

Each server runs pinned to core 0 (``taskset -c 0``); the C load generator
``bench/build/stunload --relay`` runs pinned to core 1.  Per server and
round (rounds interleaved, the order rotating), this harness makes one
allocation from a client socket and binds a channel to a peer socket,
then hands both sockets to stunload, which measures:

- relayed ChannelData packets/s, client to peer (ChannelData in, datagram
  out) and peer to client (datagram in, ChannelData out): closed loop, a
  window of datagrams in flight, 100-byte payloads, every datagram checked
  (source, channel header, length, every payload byte, once);
- the latency of the relayed path at a light open-loop rate, against the
  same sockets talking directly (measured in the same round);

and, for the ``-metrics`` variants, the server runs with ``--metrics`` and
is scraped every second meanwhile; its per-direction TURN counters are
checked against what the generator sent and received, and the server's CPU
time per relayed packet is compared with the same runtime without metrics
(``ours-cpython-before`` runs the code from ``--before-tree``, a checkout
from before the counters, to price the counting itself; ``ours-pypy-nursery``
runs PyPy with ``PYPY_GC_NURSERY=--pypy-nursery``, 8M by default, a setting
of the runtime that lowers PyPy's CPU per relayed packet by about a fifth);

then it makes --allocations allocations (each: Allocate, 401, Allocate with
credentials, from its own socket) for allocations/s, and reads the
server's RSS before and after for the memory per allocation.  Medians go
to bench/results/turn.md.  Helpers come from reflector_bench.py.

Only loopback addresses are used.  Every process started is ended.
Nothing is asserted on timing: the exit status is non-zero only when a
relayed datagram was invalid or a server did not start.
"""

from __future__ import annotations

import argparse
import atexit
import collections
import json
import os
import resource
import selectors
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import reflector_bench as rb
from reflector_bench import ROOT, STUNLOAD, ServerKind, fmt_int, log, med

sys.path.insert(0, str(ROOT))
from natsalon.server.turn.auth import mint  # noqa: E402
from natsalon.stun import Address, Attr, Class, Message, Method, decode, encode, long_term_key  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "turn.md"
SECRET = "bench-secret"
REALM = "natsalon"
CHANNEL = 0x4000
#: relayed ports: below Linux's ephemeral range (32768-60999), where the
#: harness's client sockets live
RELAY_PORTS = (12000, 31999)
TARGETS = {"ours-cpython": 0.8, "ours-pypy": 1.0, "ours-pypy-nursery": 1.0}

OURS = (
    "{venv}/bin/twistd -n --pidfile= natsalon --interface 127.0.0.1 --port {port} --alt-port {alt_port}"
    " --rate-limit 0 --turn-secret {secret} --turn-allow-peer 127.0.0.0/8 --relay-ports {lo}-{hi}"
    " --turn-max-allocations 50000 --no-turn-tcp{extra}"
)
#: the allocations/s runs make 10,000 allocations from 127.0.0.1: no
#: per-source quota (the code before it had none, and no such option)
NO_SOURCE_QUOTA = " --turn-source-quota 0"


def with_env(argv_fn, *assignments: str):
    """``argv_fn``'s command run under ``env`` with ``assignments``
    (``NAME=VALUE``), e.g. a PyPy GC setting."""
    def argv(port: int, alt_port: int, tmp: Path) -> list[str]:
        return ["env", *assignments] + argv_fn(port, alt_port, tmp)

    return argv


def coturn_argv(port: int, alt_port: int, tmp: Path) -> list[str]:
    del alt_port
    return [
        "turnserver", "-n", "-m", "1", "--no-tls", "--no-dtls", "--no-tcp",
        "--listening-ip", "127.0.0.1", "--listening-port", str(port), "--relay-ip", "127.0.0.1",
        "--min-port", str(RELAY_PORTS[0]), "--max-port", str(RELAY_PORTS[1]),
        "--use-auth-secret", "--static-auth-secret", SECRET, "--realm", REALM,
        "--allow-loopback-peers", "--cli-password", "x",
        "--log-file", "stdout", "--simple-log",
        "--db", str(tmp / "turndb"), "--pidfile", str(tmp / "turnserver.pid"),
    ]  # fmt: skip


def ours_argv_fn(venv: Path, tree: Path | None = None):
    """natsalon's command line; with ``tree``, the natsalon package from
    that directory (PYTHONPATH) instead of the installed one."""
    def argv(port: int, alt_port: int, tmp: Path) -> list[str]:
        del tmp
        cmd = shlex.split(OURS.format(venv=venv, port=port, alt_port=alt_port, secret=SECRET, lo=RELAY_PORTS[0],
                                      hi=RELAY_PORTS[1], extra="" if tree else NO_SOURCE_QUOTA))
        return ["env", f"PYTHONPATH={tree}"] + cmd if tree else cmd

    return argv


def scrape_counters(url: str) -> dict:
    """The TURN per-direction packet counters on a metrics page."""
    from natsalon.ops.testing import samples, value

    with urllib.request.urlopen(url, timeout=10) as r:
        s = samples(r.read().decode())
    return {d: value(s, "natsalon_turn_packets_total", direction=d) for d in ("client_to_peer", "peer_to_client")}


def check_counters(counted: dict, out: dict) -> str:
    """'' when the scraped counters agree with what the generator saw
    (relayed at least what arrived, at most what was sent), else why not."""
    runs = {"client_to_peer": [out[k] for k in ("light", "up") if k in out], "peer_to_client": [out["down"]]}
    why = []
    for d, blasts in runs.items():
        got = sum(b["answered_total"] for b in blasts)
        sent = sum(b["sent_total"] for b in blasts)
        if counted.get(d) is None or not got <= counted[d] <= sent:
            why.append(f"{d}: counted {counted.get(d)}, generator received {got} of {sent}")
    return "; ".join(why)


# --------------------------------------------------------------------------
# a small blocking TURN client (setup only)
# --------------------------------------------------------------------------
class TurnClient:
    def __init__(self, server: tuple, user: str) -> None:
        self.server = server
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(1.0)
        self.username, password = mint(SECRET, user, int(time.time()) + 3600)
        self.key = long_term_key(self.username, REALM, password)
        self.nonce = None

    def request(self, method: int, attrs=()) -> Message:
        for _ in range(5):
            txid = os.urandom(12)
            auth = () if self.nonce is None else (
                (Attr.USERNAME, self.username), (Attr.REALM, REALM), (Attr.NONCE, self.nonce))
            msg = Message(method, Class.REQUEST, txid, tuple(attrs) + auth)
            self.sock.sendto(encode(msg, integrity_key=self.key if self.nonce else None), self.server)
            try:
                while True:
                    data, _ = self.sock.recvfrom(2048)
                    resp = decode(data)
                    if resp.transaction_id == txid:
                        break
            except socket.timeout:
                continue
            err = resp.get(Attr.ERROR_CODE)
            if err is not None and err.code in (401, 438) and resp.get(Attr.NONCE):
                self.nonce = resp.get(Attr.NONCE)
                continue
            if resp.cls != Class.SUCCESS:
                raise RuntimeError("TURN %s refused: %s" % (method, err))
            return resp
        raise RuntimeError("TURN server did not answer")


# --------------------------------------------------------------------------
# many allocations at once
# --------------------------------------------------------------------------
def allocate_many(server: tuple, n: int, window: int, timeout: float = 1.0):
    """``n`` allocations, each from its own socket (Allocate, 401,
    Allocate with credentials), ``window`` in flight.  Returns (seconds,
    allocations made, failures, harness CPU seconds, the sockets)."""
    expiry = int(time.time()) + 3600
    creds = []
    for i in range(n):
        username, password = mint(SECRET, "u%d" % i, expiry)
        creds.append((username, long_term_key(username, REALM, password)))
    sel = selectors.DefaultSelector()
    socks = [None] * n
    state = {}  # index -> [txid, sent_at, attempts, data]
    todo = collections.deque(range(n))
    done = failed = 0
    transport = ((Attr.REQUESTED_TRANSPORT, 17),)

    def send(i: int, nonce=None) -> None:
        txid = os.urandom(12)
        if nonce is None:
            data = encode(Message(Method.ALLOCATE, Class.REQUEST, txid, transport))
        else:
            username, key = creds[i]
            data = encode(Message(Method.ALLOCATE, Class.REQUEST, txid, transport + (
                (Attr.USERNAME, username), (Attr.REALM, REALM), (Attr.NONCE, nonce))), integrity_key=key)
        state[i] = [txid, time.monotonic(), state.get(i, [0, 0, 0])[2], data]
        socks[i].sendto(data, server)

    def start(i: int) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
        socks[i] = s
        sel.register(s, selectors.EVENT_READ, i)
        send(i)

    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    while todo or state:
        while todo and len(state) < window:
            start(todo.popleft())
        for key, _ in sel.select(0.05):
            i = key.data
            try:
                data = key.fileobj.recv(2048)
            except OSError:
                continue
            st = state.get(i)
            try:
                resp = decode(data)
            except Exception:  # noqa: BLE001 - not ours to judge here; counted as a failure below
                continue
            if st is None or resp.transaction_id != st[0]:
                continue
            err = resp.get(Attr.ERROR_CODE)
            if err is not None and err.code in (401, 438) and resp.get(Attr.NONCE):
                send(i, resp.get(Attr.NONCE))
                continue
            del state[i]
            sel.unregister(key.fileobj)
            if resp.cls == Class.SUCCESS:
                done += 1
            else:
                failed += 1
        now = time.monotonic()
        for i, st in list(state.items()):
            if now - st[1] > timeout:
                if st[2] >= 5:
                    del state[i]
                    sel.unregister(socks[i])
                    failed += 1
                    continue
                st[1], st[2] = now, st[2] + 1
                socks[i].sendto(st[3], server)
    elapsed = time.monotonic() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    sel.close()
    cpu = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
    return elapsed, done, failed, cpu, [s for s in socks if s is not None]


def rss_kib(pid: int) -> int:
    for line in Path("/proc/%d/status" % pid).read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


# --------------------------------------------------------------------------
# runs
# --------------------------------------------------------------------------
def drain(socks, quiet: float = 0.3, limit: float = 5.0) -> None:
    """Read and drop what arrives until ``quiet`` s pass without a
    datagram (a backed-up server may still relay an earlier run's)."""
    sel = selectors.DefaultSelector()
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    deadline = time.monotonic() + limit
    try:
        while time.monotonic() < deadline:
            ready = sel.select(quiet)
            if not ready:
                return
            for key, _ in ready:
                try:
                    while True:
                        key.fileobj.recv(65536)
                except OSError:
                    pass
    finally:
        sel.close()


def blast(args, send: socket.socket, recv: socket.socket, send_to: int, expect_from: int, send_channel=0,
          expect_channel=0, rate=None) -> dict:
    drain((send, recv))
    cmd = ["taskset", "-c", rb.LOAD_CPU, str(STUNLOAD), "--relay",
           "--send-fd", str(send.fileno()), "--recv-fd", str(recv.fileno()),
           "--send-to", str(send_to), "--expect-from", str(expect_from),
           "--send-channel", str(send_channel), "--expect-channel", str(expect_channel),
           "--payload", str(args.payload), "--warmup", str(args.warmup), "--batch", str(args.batch)]  # fmt: skip
    if rate:
        cmd += ["--rate", str(rate), "--window", "8192", "--duration", str(args.latency_duration)]
    else:
        cmd += ["--window", str(args.window), "--duration", str(args.duration)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=args.duration + args.warmup + 60,
                       pass_fds=(send.fileno(), recv.fileno()))
    if r.returncode != 0 or not r.stdout.strip():
        raise RuntimeError(f"stunload failed ({r.returncode}): {r.stderr.strip()}")
    if r.stderr.strip():
        log(r.stderr.strip())
    return json.loads(r.stdout.strip().splitlines()[-1])


def direct_round(args) -> dict:
    a, b = (socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2))
    try:
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        return blast(args, a, b, b.getsockname()[1], a.getsockname()[1], rate=args.latency_rate)
    finally:
        a.close()
        b.close()


def measured(proc, *a, **kw) -> dict:
    """:func:`blast`, with the server's CPU time per relayed packet."""
    cpu0 = rb.cpu_seconds(proc.pid)
    out = blast(*a, **kw)
    out["cpu_us"] = (rb.cpu_seconds(proc.pid) - cpu0) * 1e6 / max(1, out["answered_total"])
    return out


def one_round(kind: ServerKind, args, tmp: Path) -> dict:
    port, alt_port = rb.free_udp_ports(2)
    logfile = tmp / f"{kind.name}.log"
    argv = kind.argv_fn(port, alt_port, tmp)
    scraper = None
    if kind.metrics:
        mport = rb.free_tcp_port()
        argv += ["--metrics", str(mport)]
        scraper = rb.Scraper(f"http://127.0.0.1:{mport}/metrics", rb.METRICS_SCRAPE)
    proc = rb.spawn(argv, logfile, rb.SERVER_CPU)
    server = ("127.0.0.1", port)
    client = peer = None
    socks = []
    try:
        rb.wait_ready(proc, port, logfile, kind.start_limit)
        if scraper is not None:
            scraper.start()
        client = TurnClient(server, "bench")
        relayed = client.request(Method.ALLOCATE, ((Attr.REQUESTED_TRANSPORT, 17),)).get(Attr.XOR_RELAYED_ADDRESS)
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.bind(("127.0.0.1", 0))
        client.request(Method.CHANNEL_BIND, ((Attr.CHANNEL_NUMBER, CHANNEL),
                                             (Attr.XOR_PEER_ADDRESS, Address(*peer.getsockname()))))
        out = {}
        if args.latency_rate:  # first: on a server no saturation run has backed up
            out["light"] = blast(args, client.sock, peer, port, relayed.port, send_channel=CHANNEL,
                                 rate=args.latency_rate)
        out["up"] = measured(proc, args, client.sock, peer, port, relayed.port, send_channel=CHANNEL)
        out["down"] = measured(proc, args, peer, client.sock, relayed.port, port, expect_channel=CHANNEL)
        if scraper is not None:
            drain((client.sock, peer))  # what is still in flight is relayed (and counted) by now
            out["counters"] = scrape_counters(scraper.url)
            out["counters_wrong"] = check_counters(out["counters"], out)
        if args.allocations:
            time.sleep(0.5)
            before = rss_kib(proc.pid)
            elapsed, done, failed, cpu, socks = allocate_many(server, args.allocations, args.alloc_window)
            time.sleep(1.0)
            after = rss_kib(proc.pid)
            out["alloc"] = {"seconds": elapsed, "done": done, "failed": failed, "harness_cpu": cpu,
                            "rate": done / elapsed if elapsed else 0.0,
                            "bytes_each": (after - before) * 1024 / done if done else None,
                            "rss_before_kib": before, "rss_after_kib": after}
        if proc.poll() is not None:
            raise RuntimeError(f"server died during the run; log:\n{rb.tail(logfile)}")
    finally:
        if scraper is not None and scraper.is_alive():
            scraper.done.set()
            scraper.join(10)
        rb.stop(proc)
        for s in socks:
            s.close()
        if client is not None:
            client.sock.close()
        if peer is not None:
            peer.close()
    if scraper is not None:
        out["scrapes"], out["scrape_failures"] = scraper.ok, scraper.failed
    return out


# --------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------
def summarize(runs: list) -> dict:
    up = [r["up"] for r in runs]
    down = [r["down"] for r in runs]
    light = [r["light"] for r in runs if "light" in r]
    alloc = [r["alloc"] for r in runs if "alloc" in r]
    every = up + down + light
    return {
        "up": med([s["rate"] for s in up]), "down": med([s["rate"] for s in down]),
        "up_all": [s["rate"] for s in up], "down_all": [s["rate"] for s in down],
        "loss_up": med([s["lost"] / max(1, s["sent_total"]) * 100 for s in up]),
        "loss_down": med([s["lost"] / max(1, s["sent_total"]) * 100 for s in down]),
        "lp50": med([s["p50_us"] for s in light]), "lp99": med([s["p99_us"] for s in light]),
        "allocs": med([a["rate"] for a in alloc]),
        "alloc_cpu": med([a["harness_cpu"] / a["seconds"] for a in alloc if a["seconds"]]),
        "alloc_failed": sum(a["failed"] for a in alloc),
        "bytes_each": med([a["bytes_each"] for a in alloc]),
        "invalid": sum(s["invalid"] for s in every),
        "reasons": [s["invalid_reasons"] for s in every if s["invalid"]],
        "cpu_up": med([s.get("cpu_us") for s in up]), "cpu_down": med([s.get("cpu_us") for s in down]),
        "scrapes": sum(r.get("scrapes", 0) for r in runs),
        "scrape_failures": sum(r.get("scrape_failures", 0) for r in runs),
        "counters_checked": sum(1 for r in runs if "counters" in r),
        "counters_wrong": [r["counters_wrong"] for r in runs if r.get("counters_wrong")],
    }


#: (what is compared, the kind with it, the kind without it)
COMPARISONS = (
    ("`--metrics`, scraped every 1 s", "ours-cpython-metrics", "ours-cpython"),
    ("`--metrics`, scraped every 1 s", "ours-pypy-metrics", "ours-pypy"),
    ("the per-direction counters (always on), against the code before them", "ours-cpython", "ours-cpython-before"),
)


def paired_ratio(on: list, off: list, d: str) -> str:
    ratios = [a[d]["rate"] / b[d]["rate"] for a, b in zip(on, off) if b[d]["rate"]]
    return f"{med(ratios):.3f}" if ratios else "–"


def metrics_section(kinds, results, rows) -> list:
    """The cost of counting and of scraping: CPU per relayed packet (the
    server's user + system time over the packets relayed, steadier than
    packets/s on a shared machine) and packets/s, on against off."""
    names = {k.name: k for k in kinds}
    lines = []
    for what, on, off in COMPARISONS:
        if on not in rows or off not in rows:
            continue
        a, b = rows[on], rows[off]
        cells = []
        for d in ("up", "down"):
            cap = b["cpu_" + d] / a["cpu_" + d] if a["cpu_" + d] and b["cpu_" + d] else None
            cells += [f"{b['cpu_' + d]:.2f} / {a['cpu_' + d]:.2f}" if cap else "–",
                      f"{cap:.3f}" if cap else "–", ratio(a[d], b[d]).rstrip("x"),
                      paired_ratio(results[on], results[off], d)]
        checked = (f"{a['counters_checked']} runs, {len(a['counters_wrong'])} wrong" if a["counters_checked"]
                   else "–")
        scrapes = f"{a['scrapes']} ({a['scrape_failures']} failed)" if names[on].metrics else "–"
        lines.append(f"| {what} | {names[on].runtime} | " + " | ".join(cells) + f" | {scrapes} | {checked} |")
    if not lines:
        return []
    return [
        "Metrics: the cost of counting TURN packets and bytes per direction, and of serving `/metrics`. "
        "*CPU µs/pkt off / on*: the server's CPU time (user + system) per relayed packet in the throughput "
        "runs, medians over rounds; *capacity*: off / on of that, the share of the packets one core relays that "
        "it still relays with it (target ≥ 0.97: no more than a 3% drop); *pkt/s on/off*: the ratio of the "
        "medians, and the median of the same-round ratios. *counters*: after the throughput runs, the scraped "
        "`natsalon_turn_packets_total` of each direction lay between what the generator received and what it "
        "sent.",
        "",
        "| compared | runtime | →peer CPU µs/pkt off / on | →peer capacity | →peer pkt/s on/off | (paired) "
        "| →client CPU µs/pkt off / on | →client capacity | →client pkt/s on/off | (paired) | scrapes | counters |",
        "|" + "---|" * 12,
        *lines,
        "",
    ]


def _us(v) -> str:
    return "–" if v is None else f"{v:.2f}"


def ratio(v, base) -> str:
    return f"{v / base:.2f}x" if v and base else "–"


def report(kinds, results, direct, args, notes, venvs, loads) -> tuple[str, bool]:
    rows = {k.name: summarize(results[k.name]) for k in kinds if results.get(k.name)}
    base = rows.get("coturn", {})
    d50, d99 = med([d["p50_us"] for d in direct]), med([d["p99_us"] for d in direct])
    bad = False
    table = [
        "| server | runtime | client→peer pkt/s | ratio | target | peer→client pkt/s | ratio "
        "| loss % (→peer/→client) | CPU µs/pkt →peer/→client | latency p50/p99 µs | added p50/p99 µs "
        "| allocations/s | ratio | bytes/allocation | invalid |",
        "|" + "---|" * 15,
    ]
    for k in kinds:
        r = rows.get(k.name)
        if r is None:
            continue
        if r["invalid"]:
            bad = True
        added = (f"{r['lp50'] - d50:+.0f} / {r['lp99'] - d99:+.0f}" if r["lp50"] is not None and d50 is not None
                 else "–")
        target = f"≥ {TARGETS[k.name]:.1f}x" if k.name in TARGETS else ""
        table.append(
            f"| {k.label} | {k.runtime} | {fmt_int(r['up'])} | {ratio(r['up'], base.get('up'))} | {target} "
            f"| {fmt_int(r['down'])} | {ratio(r['down'], base.get('down'))} "
            f"| {r['loss_up']:.1f} / {r['loss_down']:.1f} | {_us(r['cpu_up'])} / {_us(r['cpu_down'])} "
            f"| {fmt_int(r['lp50'])} / {fmt_int(r['lp99'])} | {added} "
            f"| {fmt_int(r['allocs'])} | {ratio(r['allocs'], base.get('allocs'))} | {fmt_int(r['bytes_each'])} "
            f"| {'**%d**' % r['invalid'] if r['invalid'] else 0} |")
    per_round = ["| server | runtime | direction | " + " | ".join(f"round {i + 1}" for i in range(args.rounds)) + " |",
                 "|" + "---|" * (args.rounds + 3)]
    for k in kinds:
        r = rows.get(k.name)
        if r:
            for d in ("up", "down"):
                per_round.append(f"| {k.label} | {k.runtime} | {'client→peer' if d == 'up' else 'peer→client'} | "
                                 + " | ".join(fmt_int(v) for v in r[d + "_all"]) + " |")
            per_round.append(f"| {k.label} | {k.runtime} | 1-min load average when done | "
                             + " | ".join(x.get("load", "?") for x in results[k.name]) + " |")
    paired = []
    if rows.get("coturn") and len(results["coturn"]) == args.rounds:
        for k in kinds:
            runs = results.get(k.name)
            if k.name == "coturn" or not runs or len(runs) != args.rounds:
                continue
            cells = []
            for d in ("up", "down"):
                ratios = [mine[d]["rate"] / theirs[d]["rate"] for mine, theirs in zip(runs, results["coturn"])
                          if theirs[d]["rate"]]
                cells.append(f"{med(ratios):.2f}x ({min(ratios):.2f}–{max(ratios):.2f})" if ratios else "–")
            paired.append(f"| {k.label} | {k.runtime} | {cells[0]} | {cells[1]} |")
    if paired:
        paired = ["Ratio to coturn within each round (the two ran a few seconds apart), median and range over "
                  "rounds:", "", "| server | runtime | client→peer | peer→client |", "|---|---|---|---|"] + paired + [""]
    alloc_notes = []
    for k in kinds:
        r = rows.get(k.name)
        if r and r["allocs"]:
            alloc_notes.append(f"{k.label} ({k.runtime}): harness CPU {r['alloc_cpu'] * 100:.0f}% of wall time "
                               f"while allocating; {r['alloc_failed']} allocations failed over all rounds")
    text = [
        "# TURN relay benchmark",
        "",
        "Relayed ChannelData packets per second on one core (server `taskset -c 0`, load generator "
        "`bench/build/stunload --relay` `taskset -c 1`), loopback only, one allocation and one channel, "
        f"{args.payload}-byte payloads. Generated by `bench/turn_bench.py` (`make bench`).",
        "",
        *rb.machine_info(kinds, venvs),
        f"- load average (1/5/15 min) at start: {loads[0]}; at end: {loads[1]}",
        f"- runs: {args.rounds} interleaved rounds; throughput: closed loop, window {args.window}, batch "
        f"{args.batch}, {args.warmup} s warm-up + {args.duration} s per direction; latency: open loop "
        f"{args.latency_rate:,.0f} datagrams/s, {args.warmup} s + {args.latency_duration} s; allocations: "
        f"{args.allocations:,} from as many sockets, {args.alloc_window} in flight",
        f"- coturn: `{shlex.join(coturn_argv(3478, 0, Path('TMP')))}`",
        f"- natsalon: `{OURS.format(venv='VENV', port='P', alt_port='P2', secret=SECRET, lo=RELAY_PORTS[0], hi=RELAY_PORTS[1], extra=NO_SOURCE_QUOTA)}` (`ours-cpython-before`: without `--turn-source-quota 0`)",  # noqa: E501
        f"- command: `{shlex.join([os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])}`",
        "",
        *table,
        "",
        f"Direct loopback path (the same two sockets, no relay) at the same rate: p50 {fmt_int(d50)} µs, "
        f"p99 {fmt_int(d99)} µs; *added* is the relayed latency minus that.",
        "",
        "Medians over rounds. *client→peer*: ChannelData from the client socket to the salon's port, the payload "
        "out of the relayed port to the peer socket; *peer→client*: a datagram from the peer to the relayed port, "
        "ChannelData back to the client. Every relayed datagram was checked by the generator: its source address, "
        "the ChannelData header (channel, length; padding zero), every payload byte (a sequence number, a keyed "
        "hash of it, and a pattern of it), and that it had not arrived before. *loss %*: datagrams that never "
        "arrived in the throughput runs (a full socket buffer drops them; closed loop, so loss lowers the rate). "
        "*bytes/allocation*: the server's RSS after the allocations minus before, over the number made "
        "(kernel socket memory not included, for either server). Allocations/s is bounded by this Python harness "
        "too (two round trips and an HMAC per allocation): its CPU share is given below.",
        "",
        *paired,
        *metrics_section(kinds, results, rows),
        "Packets/s per round:",
        "",
        *per_round,
    ]
    notes = notes + alloc_notes
    for k in kinds:
        r = rows.get(k.name)
        if r and r["invalid"]:
            notes.append(f"**{k.label} ({k.runtime}): invalid datagrams**: {r['reasons']}")
        if r and r["counters_wrong"]:
            bad = True
            notes.append(f"**{k.label} ({k.runtime}): TURN counters disagree with the generator**: "
                         f"{r['counters_wrong']}")
    if notes:
        text += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    return "\n".join(text) + "\n", bad


#: what follows this line in the results file was written by hand: kept
HAND_MARK = "<!-- written by hand (bench/turn_bench.py keeps what follows) -->"


def kept_by_hand(path: Path) -> str:
    """The hand-written end of the results file, from :data:`HAND_MARK` on."""
    try:
        old = path.read_text()
    except OSError:
        return ""
    at = old.find(HAND_MARK)
    return "" if at < 0 else "\n" + old[at:]


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=float, default=3.0, help="seconds per throughput run")
    ap.add_argument("--warmup", type=float, default=1.5)
    ap.add_argument("--window", type=int, default=1024, help="datagrams in flight (throughput)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--payload", type=int, default=100)
    ap.add_argument("--latency-rate", type=float, default=20000.0, help="light-load datagrams/s (0: skip)")
    ap.add_argument("--latency-duration", type=float, default=2.0)
    ap.add_argument("--allocations", type=int, default=10000, help="allocations made per round (0: skip)")
    ap.add_argument("--alloc-window", type=int, default=256)
    ap.add_argument("--servers",
                    default="coturn,ours-cpython,ours-cpython-metrics,ours-pypy,ours-pypy-metrics,ours-pypy-nursery",
                    help="comma list of coturn, ours-cpython, ours-pypy (-metrics: with --metrics, scraped "
                         "every second), ours-pypy-nursery (PyPy with PYPY_GC_NURSERY=--pypy-nursery), "
                         "ours-cpython-before (with --before-tree)")
    ap.add_argument("--before-tree", type=Path, help="a checkout holding the natsalon package to compare with "
                    "(ours-cpython-before), e.g. `git archive COMMIT natsalon twisted | tar -x -C DIR`")
    ap.add_argument("--cpython-venv", type=Path, default=ROOT / ".venv")
    ap.add_argument("--pypy-venv", type=Path,
                    default=Path(os.environ.get("NATSALON_PYPY_VENV", ROOT / ".venv-pypy")))  # fmt: skip
    ap.add_argument("--no-pypy-setup", action="store_true")
    ap.add_argument("--pypy-nursery", default="8M", help="PyPy's GC nursery for ours-pypy-nursery "
                    "(PYPY_GC_NURSERY; the plain PyPy rows keep PyPy's default)")
    ap.add_argument("--output", type=Path, default=RESULTS)
    args = ap.parse_args()
    if args.rounds < 1 or args.duration <= 0 or args.window < 1 or not 12 <= args.payload <= 1400:
        ap.error("bad --rounds/--duration/--window/--payload")

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.allocations + 256
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(need, soft)), hard))
        if min(hard, need) < need:
            log(f"warning: open files limited to {hard}; fewer allocations may succeed")
    atexit.register(rb.stop_all)
    signal.signal(signal.SIGTERM, rb._on_signal)
    signal.signal(signal.SIGINT, rb._on_signal)
    rb.build_stunload()

    notes: list[str] = []
    kinds: list[ServerKind] = []
    venvs: dict[str, Path] = {}
    for name in [s.strip() for s in args.servers.split(",") if s.strip()]:
        if name == "coturn":
            if shutil.which("turnserver"):
                kinds.append(ServerKind("coturn", "coturn `turnserver -m 1`", "C", coturn_argv, 15))
            else:
                notes.append("coturn row skipped: `turnserver` not installed")
        elif name in ("ours-cpython", "ours-cpython-metrics"):
            venvs["CPython venv"] = args.cpython_venv
            metrics = name.endswith("-metrics")
            kinds.append(ServerKind(name, "natsalon --metrics" if metrics else "natsalon", "CPython",
                                    ours_argv_fn(args.cpython_venv), 30, metrics))
        elif name == "ours-cpython-before":
            if args.before_tree is None or not (args.before_tree / "natsalon").is_dir():
                ap.error("ours-cpython-before needs --before-tree DIR (holding the natsalon package)")
            kinds.append(ServerKind(name, "natsalon before the counters", "CPython",
                                    ours_argv_fn(args.cpython_venv, args.before_tree.resolve()), 30))
        elif name in ("ours-pypy", "ours-pypy-metrics", "ours-pypy-nursery"):
            why = None if args.no_pypy_setup else rb.ensure_pypy_venv(args.pypy_venv)
            if why is None and not (args.pypy_venv / "bin" / "python").exists():
                why = f"{args.pypy_venv} does not exist"
            if why:
                notes.append(f"PyPy row skipped: {why}")
                log(f"PyPy row skipped: {why}")
            else:
                venvs["PyPy venv"] = args.pypy_venv
                metrics = name.endswith("-metrics")
                argv_fn = ours_argv_fn(args.pypy_venv)
                label = "natsalon --metrics" if metrics else "natsalon"
                if name == "ours-pypy-nursery":
                    argv_fn = with_env(argv_fn, f"PYPY_GC_NURSERY={args.pypy_nursery}")
                    label = f"natsalon, `PYPY_GC_NURSERY={args.pypy_nursery}`"
                kinds.append(ServerKind(name, label, "PyPy", argv_fn, 60, metrics))
        else:
            ap.error(f"unknown server kind {name!r}")

    loads = [loadavg(), ""]
    results: dict[str, list] = {k.name: [] for k in kinds}
    direct: list[dict] = []
    failed = False
    with tempfile.TemporaryDirectory(prefix="natsalon-turn-bench-") as tmpdir:
        tmp = Path(tmpdir)
        for rnd in range(args.rounds):
            if args.latency_rate:
                direct.append(direct_round(args))
            order = kinds[rnd % len(kinds):] + kinds[: rnd % len(kinds)] if kinds else []
            for kind in order:
                if results.get(kind.name) is None:
                    continue
                try:
                    res = one_round(kind, args, tmp)
                except Exception as e:  # noqa: BLE001
                    msg = f"{kind.name} failed in round {rnd + 1}: {e}"
                    log(msg)
                    notes.append(msg.splitlines()[0] + " (see stderr)")
                    failed = True
                    results[kind.name] = None
                    continue
                res["load"] = loadavg().split()[0]
                results[kind.name].append(res)
                a = res.get("alloc", {})
                log(f"round {rnd + 1} {kind.name}: up {res['up']['rate']:,.0f}/s down {res['down']['rate']:,.0f}/s "
                    f"invalid {res['up']['invalid'] + res['down']['invalid']}"
                    + (f" | light p50 {res['light']['p50_us']:.0f} p99 {res['light']['p99_us']:.0f} µs"
                       if "light" in res else "")
                    + (f" | {a['rate']:,.0f} allocations/s, {a['bytes_each'] or 0:,.0f} B each, {a['failed']} failed"
                       if a else ""))
    loads[1] = loadavg()
    results = {k: v for k, v in results.items() if v}
    text, bad = report(kinds, results, direct, args, notes, venvs, loads)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.output.with_suffix(args.output.suffix + ".tmp")
    tmp_out.write_text(text + kept_by_hand(args.output))
    os.replace(tmp_out, args.output)
    print(text)
    log(f"wrote {os.path.relpath(args.output)}")
    return 1 if (bad or failed) else 0


if __name__ == "__main__":
    sys.exit(main())
