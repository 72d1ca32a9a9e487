#!/usr/bin/env python3
"""STUN reflector benchmark: natsalon (CPython, PyPy) vs coturn's turnserver.

Each server runs pinned to core 0 (``taskset -c 0``); the C load generator
``bench/build/stunload`` runs pinned to core 1.  Rounds are interleaved (the
order rotates each round); per server and round there is one saturation run
(closed loop, a window of outstanding requests: answers/s and latency under
saturation) and one light-load run (open loop at a fixed rate: latency).
Every answer is validated by the generator (type, length, cookie,
transaction id, attributes, XOR-MAPPED-ADDRESS).  Medians go to a markdown
table in bench/results/reflector.md.

The ``-v6`` kinds run the same way over IPv6: the server on ``::1``, the
generator with ``--ipv6`` (it then checks an XOR-MAPPED-ADDRESS of family
0x02); their ratio is against coturn on ``::1``.

Only loopback addresses are used.  Every process started is ended (process
groups; SIGTERM, then SIGKILL).  No timing is asserted: the exit status is
non-zero only when an answer was invalid or a server did not start.
"""

from __future__ import annotations

from benchinfo import cpu_model
import argparse
import atexit
import datetime
import hashlib
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
BUILD = BENCH / "build"
STUNLOAD_SRC = BENCH / "stunload.c"
STUNLOAD = BUILD / "stunload"
RESULTS = BENCH / "results" / "reflector.md"

SERVER_CPU = "0"
LOAD_CPU = "1"
COOKIE = 0x2112A442

OURS_DEFAULT = (
    "{venv}/bin/twistd -n --pidfile= natsalon --interface {host}"
    " --port {port} --alt-port {alt_port} --rate-limit 0"
)
TARGETS = {"ours-cpython": 0.75, "ours-pypy": 1.0, "ours-pypy-nursery": 1.0}
#: the metrics variants (``--metrics``, scraped every METRICS_SCRAPE s during
#: the runs) against the same runtime without: at most 3% fewer answers
METRICS_TARGET = 0.97
METRICS_SCRAPE = 1.0

_children: list[subprocess.Popen] = []
#: the machine's 1-minute load average when the run started (reported: a
#: busy machine makes answers/s unreliable)
LOAD_AT_START = os.getloadavg()[0]


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# process handling
# --------------------------------------------------------------------------
def stop(proc: subprocess.Popen) -> None:
    """End a child started in its own process group: TERM, then KILL."""
    if proc.poll() is None:
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
    else:
        # the leader is gone; make sure nothing it started lingers
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    if proc in _children:
        _children.remove(proc)


def stop_all() -> None:
    for proc in list(_children):
        stop(proc)


def _on_signal(signum, frame):  # noqa: ARG001
    stop_all()
    sys.exit(128 + signum)


def spawn(argv: list[str], logfile: Path, cpu: str, cwd: Path = ROOT) -> subprocess.Popen:
    out = open(logfile, "wb")
    proc = subprocess.Popen(
        ["taskset", "-c", cpu, *argv],
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=cwd,
        start_new_session=True,
    )
    out.close()
    _children.append(proc)
    return proc


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------
def loopback(family: int) -> str:
    return "::1" if family == 6 else "127.0.0.1"


def _af(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def free_udp_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """n consecutive free UDP ports on ``host`` (port, port+1, ...)."""
    for _ in range(200):
        probe = socket.socket(_af(host), socket.SOCK_DGRAM)
        probe.bind((host, 0))
        base = probe.getsockname()[1]
        probe.close()
        if base + n > 65535:
            continue
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket(_af(host), socket.SOCK_DGRAM)
                socks.append(s)
                s.bind((host, p))
            return list(range(base, base + n))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no free UDP ports on {host}")


def stun_probe(port: int, timeout: float = 0.2, host: str = "127.0.0.1") -> bool:
    """One validated Binding request/answer against host:port."""
    s = socket.socket(_af(host), socket.SOCK_DGRAM)
    try:
        s.bind((host, 0))
        s.settimeout(timeout)
        txid = os.urandom(12)
        s.sendto(struct.pack("!HHI", 1, 0, COOKIE) + txid, (host, port))
        data = s.recv(2048)
    except OSError:
        return False
    finally:
        my_port = s.getsockname()[1] if s.fileno() >= 0 else 0
        s.close()
    if len(data) < 20:
        return False
    mtype, length, cookie = struct.unpack_from("!HHI", data)
    if mtype != 0x0101 or cookie != COOKIE or data[8:20] != txid or length != len(data) - 20:
        return False
    off = 20
    while off + 4 <= len(data):
        atype, alen = struct.unpack_from("!HH", data, off)
        if atype == 0x0020 and alen in (8, 20):
            xport = struct.unpack_from("!H", data, off + 6)[0] ^ (COOKIE >> 16)
            mask = struct.pack("!I", COOKIE) + txid
            xaddr = bytes(a ^ b for a, b in zip(data[off + 8 : off + 4 + alen], mask))
            return xport == my_port and xaddr == socket.inet_pton(_af(host), host)
        off += 4 + ((alen + 3) & ~3)
    return False


class PortTaken(RuntimeError):
    """The server could not bind a port free_udp_ports() had found free."""


def wait_ready(proc: subprocess.Popen, port: int, logfile: Path, limit: float, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            text = tail(logfile)
            if "Address already in use" in text:
                raise PortTaken(text)
            raise RuntimeError(f"server exited with {proc.returncode}; log:\n{text}")
        if stun_probe(port, host=host):
            return
        time.sleep(0.1)
    raise RuntimeError(f"server did not answer within {limit:.0f} s; log:\n{tail(logfile)}")


def tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def run_out(argv: list[str], cwd: Path | None = None) -> str:
    try:
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=120, cwd=cwd
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def build_stunload() -> None:
    if STUNLOAD.exists() and STUNLOAD.stat().st_mtime >= STUNLOAD_SRC.stat().st_mtime:
        return
    BUILD.mkdir(parents=True, exist_ok=True)
    cc = os.environ.get("CC", "cc")
    cmd = [cc, "-O2", "-Wall", "-o", str(STUNLOAD), str(STUNLOAD_SRC)]
    log(" ".join(cmd))
    subprocess.run(cmd, check=True)


# --------------------------------------------------------------------------
# PyPy venv
# --------------------------------------------------------------------------
def ensure_pypy_venv(venv: Path) -> str | None:
    """Make sure venv has Twisted (<= 26.4) and the project; None if usable,
    else the reason it is not."""
    pypy = shutil.which("pypy3")
    stamp = venv / ".natsalon-bench-stamp"
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if (venv / "bin" / "twistd").exists() and stamp.exists() and stamp.read_text() == want:
        return None
    if not (venv / "bin" / "python").exists():
        if not pypy:
            return "pypy3 not installed"
        log(f"creating {venv} with {pypy}")
        r = subprocess.run([pypy, "-m", "venv", str(venv)])
        if r.returncode:
            return "pypy3 -m venv failed"
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    # Debian's pypy3 is Python 3.9: Twisted 26.4 is the newest for it, and
    # cryptography must come as a wheel (its sdist needs a Rust toolchain).
    cmd = pip + [
        "--only-binary=cryptography",
        "twisted<=26.4",
        "-e",
        str(ROOT),
        "--config-settings",
        "editable_mode=compat",
    ]
    log("installing into PyPy venv: " + shlex.join(cmd))
    r = subprocess.run(cmd)
    if r.returncode:
        return f"pip install into {venv} failed (exit {r.returncode})"
    stamp.write_text(want)
    return None


# --------------------------------------------------------------------------
# servers
# --------------------------------------------------------------------------
class ServerKind:
    def __init__(self, name: str, label: str, runtime: str, argv_fn, start_limit: float, metrics: bool = False,
                 family: int = 4):
        self.name = name
        #: the IP version of the loopback the server and the generator use
        self.family = family
        self.label = label
        self.runtime = runtime
        self.argv_fn = argv_fn
        self.start_limit = start_limit
        #: run with --metrics and scrape it during the load
        self.metrics = metrics


def coturn_argv(port: int, alt_port: int, tmp: Path, host: str = "127.0.0.1") -> list[str]:
    del alt_port
    return [
        "turnserver", "-n", "--stun-only", "--no-auth", "-m", "1",
        "--listening-ip", host, "--listening-port", str(port),
        "--no-cli", "--no-tls", "--no-dtls", "--no-tcp",
        "--log-file", "stdout", "--simple-log",
        "--db", str(tmp / "turndb"), "--pidfile", str(tmp / "turnserver.pid"),
    ]  # fmt: skip


def ours_argv_fn(template: str, venv: Path):
    def argv(port: int, alt_port: int, tmp: Path, host: str = "127.0.0.1") -> list[str]:
        del tmp
        return shlex.split(template.format(venv=venv, port=port, alt_port=alt_port, host=host))

    return argv


def cref_argv(port: int, alt_port: int, tmp: Path, host: str = "127.0.0.1") -> list[str]:
    del alt_port, tmp, host
    return [str(STUNLOAD), "--serve", str(port), "--serve-seconds", "120"]


def load(port: int, args, rate: float | None, family: int = 4) -> dict:
    cmd = [
        "taskset", "-c", LOAD_CPU, str(STUNLOAD), "--port", str(port),
        "--warmup", str(args.warmup), "--batch", str(args.batch),
    ]  # fmt: skip
    if family == 6:
        cmd.append("--ipv6")
    if rate:
        cmd += ["--rate", str(rate), "--window", "8192", "--duration", str(args.latency_duration)]
    else:
        cmd += ["--window", str(args.window), "--duration", str(args.duration)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=args.duration + args.warmup + 60)
    if r.returncode != 0 or not r.stdout.strip():
        raise RuntimeError(f"stunload failed ({r.returncode}): {r.stderr.strip()}")
    if r.stderr.strip():
        log(r.stderr.strip())
    return json.loads(r.stdout.strip().splitlines()[-1])


def free_tcp_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Scraper(threading.Thread):
    """Scrapes a /metrics page every ``interval`` seconds (as Prometheus
    would, only more often) until stopped; counts the good scrapes."""

    def __init__(self, url: str, interval: float) -> None:
        super().__init__(daemon=True)
        self.url, self.interval = url, interval
        self.done = threading.Event()
        self.ok = self.failed = 0
        self.last = ""

    def run(self) -> None:
        while not self.done.wait(self.interval):
            try:
                with urllib.request.urlopen(self.url, timeout=5) as r:
                    self.last = r.read().decode()
                self.ok += 1
            except OSError:
                self.failed += 1


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_round(kind: ServerKind, args, tmp: Path) -> dict:
    host = loopback(kind.family)
    port, alt_port = free_udp_ports(2, host)
    logfile = tmp / f"{kind.name}.log"
    argv = kind.argv_fn(port, alt_port, tmp, host)
    scraper = None
    if kind.metrics:
        mport = free_tcp_port()
        argv += ["--metrics", str(mport)]
        scraper = Scraper(f"http://127.0.0.1:{mport}/metrics", METRICS_SCRAPE)
    proc = spawn(argv, logfile, SERVER_CPU)
    try:
        wait_ready(proc, port, logfile, kind.start_limit, host)
        if scraper is not None:
            scraper.start()
        cpu0 = cpu_seconds(proc.pid)
        sat = load(port, args, None, kind.family)
        # CPU time per answer: what a saturated second costs the server,
        # steadier than answers/s on a shared machine (time spent
        # descheduled is not counted)
        sat["cpu_us_per_answer"] = (cpu_seconds(proc.pid) - cpu0) * 1e6 / max(1, sat["answered_total"])
        light = load(port, args, args.latency_rate, kind.family) if args.latency_rate else None
        if proc.poll() is not None:
            raise RuntimeError(f"server died during the run; log:\n{tail(logfile)}")
    finally:
        if scraper is not None and scraper.is_alive():
            scraper.done.set()
            scraper.join(10)
        stop(proc)
    result = {"sat": sat, "light": light}
    if scraper is not None:
        if not scraper.ok or "natsalon_answers_total" not in scraper.last:
            raise RuntimeError(f"no good scrape of the metrics ({scraper.failed} failed)")
        result["scrapes"] = scraper.ok
        result["scrape_failures"] = scraper.failed
    return result


# --------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------
def med(values):
    values = [v for v in values if v is not None and v >= 0]
    return statistics.median(values) if values else None


def fmt_int(v) -> str:
    return "–" if v is None else f"{v:,.0f}"


def machine_info(kinds, venvs) -> list[str]:
    cpu = cpu_model()
    lines = [
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"- load average (1 min) at start / end: {LOAD_AT_START:.1f} / {os.getloadavg()[0]:.1f}",
        f"- machine: {platform.node()}, nproc {os.cpu_count()}, {cpu}, Linux {platform.release()}",
    ]
    probe = "import sys, platform, twisted; print(platform.python_implementation(), sys.version.split()[0], '| Twisted', twisted.__version__)"
    for name, venv in venvs.items():
        v = run_out([str(venv / "bin" / "python"), "-c", probe], cwd=Path("/"))
        lines.append(f"- {name}: {v or 'n/a'} ({venv})")
    if any(k.name == "coturn" for k in kinds):
        v = run_out(["turnserver", "--version"])
        lines.append(f"- coturn: turnserver {v.splitlines()[0] if v else 'n/a'}")
    return lines


def report(kinds, results, args, notes, venvs) -> tuple[str, bool]:
    bad = False
    base = {}  # IP version -> coturn's answers/s on that loopback
    rows = {}
    for k in kinds:
        runs = results.get(k.name, [])
        if not runs:
            continue
        sat = [r["sat"] for r in runs]
        light = [r["light"] for r in runs if r["light"]]
        row = {
            "rate": med([s["rate"] for s in sat]),
            "min": min(s["rate"] for s in sat),
            "max": max(s["rate"] for s in sat),
            "p50": med([s["p50_us"] for s in sat]),
            "p99": med([s["p99_us"] for s in sat]),
            "loss": med([s["lost"] / max(1, s["sent_total"]) * 100 for s in sat]),
            "lp50": med([s["p50_us"] for s in light]) if light else None,
            "lp99": med([s["p99_us"] for s in light]) if light else None,
            "invalid": sum(s["invalid"] for s in sat + light),
            "late": sum(s["late"] for s in sat + light),
            "light_short": any(s["answered"] < 0.99 * s["offered_rate"] * s["duration_s"] for s in light),
            "n": len(runs),
            "cpu": med([s.get("cpu_us_per_answer") for s in sat]),
        }
        rows[k.name] = row
        if k.name in ("coturn", "coturn-v6"):
            base[k.family] = row["rate"]

    hdr = (
        "| server | runtime | answers/s (median) | min–max | ratio vs coturn (same family) | target "
        "| CPU µs/answer | sat. p50 µs | sat. p99 µs | loss % | light p50 µs | light p99 µs | invalid | note |"
    )
    out = [hdr, "|" + "---|" * 14]
    top = max((r["rate"] for n, r in rows.items() if n != "c-ref" and not n.endswith("-v6")), default=0)
    for k in kinds:
        r = rows.get(k.name)
        if r is None:
            continue
        ratio = f"{r['rate'] / base[k.family]:.2f}x" if base.get(k.family) else "–"
        cpu = "–" if r["cpu"] is None else f"{r['cpu']:.2f}"
        target = f"≥ {TARGETS[k.name]:.2f}x" if k.name in TARGETS else ""
        flags = []
        if r["invalid"]:
            flags.append(f"**INVALID ANSWERS: {r['invalid']}**")
            bad = True
        if r["late"]:
            flags.append(f"{r['late']} late answers")
        if r["light_short"]:
            flags.append("light load not sustained")
        if k.name == "c-ref" and top and r["rate"] < 1.2 * top:
            flags.append("**generator may be the bottleneck**")
        out.append(
            f"| {k.label} | {k.runtime} | {fmt_int(r['rate'])} | {fmt_int(r['min'])}–{fmt_int(r['max'])} "
            f"| {ratio} | {target} | {cpu} "
            f"| {fmt_int(r['p50'])} | {fmt_int(r['p99'])} | {r['loss']:.1f} "
            f"| {fmt_int(r['lp50'])} | {fmt_int(r['lp99'])} | {r['invalid']} | {'; '.join(flags)} |"
        )

    metrics_rows = []
    for k in kinds:
        r = rows.get(k.name)
        off = rows.get(k.name[: -len("-metrics")]) if k.metrics else None
        if r is None or off is None:
            continue
        ratio = r["rate"] / off["rate"]
        runs = results.get(k.name, [])
        off_runs = results.get(k.name[: -len("-metrics")], [])
        paired = [on["sat"]["rate"] / o["sat"]["rate"] for on, o in zip(runs, off_runs) if o["sat"]["rate"]]
        best = max(x["sat"]["rate"] for x in runs) / max(x["sat"]["rate"] for x in off_runs)
        scrapes = sum(x.get("scrapes", 0) for x in runs)
        failures = sum(x.get("scrape_failures", 0) for x in runs)
        cpu_ratio = off["cpu"] / r["cpu"] if off["cpu"] and r["cpu"] else None
        ok = cpu_ratio is not None and cpu_ratio >= METRICS_TARGET
        metrics_rows.append(
            f"| {k.runtime} | {off['cpu']:.2f} | {r['cpu']:.2f} | {cpu_ratio:.3f} "
            f"| {ratio:.3f} | {med(paired):.3f} | {best:.3f} "
            f"| ≥ {METRICS_TARGET:.2f} | {'ok' if ok else '**below target**'} | {scrapes} ({failures} failed) |"
        )
    per_round = ["| server | runtime | " + " | ".join(f"round {i + 1}" for i in range(args.rounds)) + " |"]
    per_round.append("|" + "---|" * (args.rounds + 2))
    for k in kinds:
        runs = results.get(k.name, [])
        if runs:
            per_round.append(f"| {k.label} | {k.runtime} | " + " | ".join(fmt_int(r["sat"]["rate"]) for r in runs) + " |")

    text = [
        "# STUN reflector benchmark",
        "",
        "Binding answers per second on one core (server `taskset -c 0`, load generator "
        "`bench/build/stunload` `taskset -c 1`), loopback only (127.0.0.1; the IPv6 rows ::1). Generated by "
        "`bench/reflector_bench.py`; method in `bench/README.md`.",
        "",
        *machine_info(kinds, venvs),
        f"- runs: {args.rounds} interleaved rounds; saturation: closed loop, window {args.window}, "
        f"batch {args.batch}, {args.warmup} s warm-up + {args.duration} s; light load: open loop "
        f"{args.latency_rate:,.0f} requests/s, {args.warmup} s + {args.latency_duration} s",
        f"- command: `{shlex.join([os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])}`",
        "",
        *out,
        "",
        "*CPU µs/answer* is the server's user + system CPU time per answer in the saturation runs "
        "(medians): steadier than answers/s on a shared machine (time spent descheduled does not "
        "count), so coturn's figure over ours is our capacity on one core relative to coturn's. "
        "Medians over rounds. *sat.* latencies are under saturation (closed loop: they "
        "mostly measure the queue the window builds); *light* latencies are at the fixed "
        "open-loop rate. *loss %* is requests unanswered in the saturation runs (a full "
        "server socket buffer drops them). Every answer was checked: type 0x0101, length, "
        "magic cookie, a transaction id this run sent, well-formed attributes, "
        "XOR-MAPPED-ADDRESS equal to the generator's own address and port.",
        "",
        *([
            "Metrics on (`--metrics`, scraped every "
            f"{METRICS_SCRAPE:g} s during every run) against off, same runtime:",
            "",
            "| runtime | CPU µs/answer off | on | capacity on/off (CPU) | answers/s on/off (medians) "
            "| (median of paired rounds) | (best rounds) | target (CPU) | | scrapes |",
            "|---|---|---|---|---|---|---|---|---|---|",
            *metrics_rows,
            "",
            "*capacity on/off (CPU)* is CPU µs per answer off / on, medians over the saturation runs: "
            "the share of the answers one core gives that it still gives with metrics on (the target "
            "reads it). The answers/s ratios are shown too; on a loaded, shared machine they swing "
            "far more than the 3% in question.",
            "",
        ] if metrics_rows else []),
        "Answers/s per round:",
        "",
        *per_round,
    ]
    if notes:
        text += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    return "\n".join(text) + "\n", bad


def server_kinds(args, ap) -> tuple[list, dict, list]:
    """The ServerKinds of ``--servers`` (a ``-v6`` name: the same on ::1),
    the venvs they use, and notes on those skipped."""
    wanted = [s.strip() for s in args.servers.split(",") if s.strip()]
    notes: list[str] = []
    kinds: list[ServerKind] = []
    venvs: dict[str, Path] = {}
    for name in wanted:
        v6 = name.endswith("-v6")
        base_name = name[: -len("-v6")] if v6 else name
        if v6 and base_name not in ("coturn", "ours-cpython", "ours-pypy", "ours-pypy-nursery"):
            ap.error(f"no IPv6 variant of {base_name!r}")
        added = len(kinds)
        add_kind(base_name, args, kinds, venvs, notes, ap)
        if v6 and len(kinds) > added:
            k = kinds[-1]
            kinds[-1] = ServerKind(name, k.label + " (IPv6, ::1)", k.runtime, k.argv_fn, k.start_limit, k.metrics, 6)
    if args.ours != OURS_DEFAULT:
        notes.append(f"our server command template: `{args.ours}`")
    return kinds, venvs, notes


def add_kind(name: str, args, kinds: list, venvs: dict, notes: list, ap) -> None:
    """Append the ServerKind called ``name`` (or a note why it is skipped)."""
    if name == "coturn":
        if shutil.which("turnserver"):
            kinds.append(ServerKind("coturn", "coturn `turnserver --stun-only -m 1`", "C", coturn_argv, 15))
        else:
            notes.append("coturn row skipped: `turnserver` not installed")
    elif name in ("ours-cpython", "ours-cpython-metrics"):
        venv = args.cpython_venv
        venvs["CPython venv"] = venv
        metrics = name.endswith("-metrics")
        kinds.append(ServerKind(name, "natsalon --metrics" if metrics else "natsalon", "CPython",
                                ours_argv_fn(args.ours, venv), 30, metrics))
    elif name in ("ours-pypy", "ours-pypy-metrics", "ours-pypy-nursery"):
        venv = args.pypy_venv
        why = None if args.no_pypy_setup else ensure_pypy_venv(venv)
        if why is None and not (venv / "bin" / "python").exists():
            why = f"{venv} does not exist"
        if why:
            notes.append(f"PyPy row skipped: {why}")
            log(f"PyPy row skipped: {why}")
        else:
            venvs["PyPy venv"] = venv
            metrics = name.endswith("-metrics")
            label, template = "natsalon --metrics" if metrics else "natsalon", args.ours
            if name == "ours-pypy-nursery":  # as the salon's systemd unit runs it on PyPy
                label, template = f"natsalon, `PYPY_GC_NURSERY={args.pypy_nursery}`", \
                    f"env PYPY_GC_NURSERY={args.pypy_nursery} {args.ours}"
            kinds.append(ServerKind(name, label, "PyPy", ours_argv_fn(template, venv), 60, metrics))
    elif name == "c-ref":
        kinds.append(ServerKind(
            "c-ref", "reference: `stunload --serve` (C, recvmmsg/sendmmsg)",
            "C", cref_argv, 10))  # fmt: skip
    else:
        ap.error(f"unknown server kind {name!r}")


def as_section(text: str, title: str, path: Path) -> str:
    """``path``'s text with ``text`` as its section ``## title`` (the
    report's own title dropped, its headings one level down), replacing a
    section of that title if there is one, else appended."""
    body = text.split("\n", 1)[1].replace("\nNotes:\n", "\n#### Notes\n")
    new = f"## {title}\n{body}"
    old = path.read_text() if path.exists() else "# STUN reflector benchmark\n"
    head, sep, rest = old.partition(f"\n## {title}\n")
    if sep:
        after = rest.find("\n## ")
        rest = rest[after + 1:] if after >= 0 else ""
        return head.rstrip("\n") + "\n\n" + new.rstrip("\n") + ("\n\n" + rest if rest else "\n")
    return old.rstrip("\n") + "\n\n" + new


# --------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=float, default=3.0, help="saturation run seconds")
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--window", type=int, default=1024, help="outstanding requests (saturation)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--latency-rate", type=float, default=20000.0, help="light-load requests/s (0: skip)")
    ap.add_argument("--latency-duration", type=float, default=2.0)
    ap.add_argument("--servers", default="coturn,ours-cpython,ours-cpython-metrics,ours-pypy,ours-pypy-metrics,"
                                         "ours-pypy-nursery,c-ref,coturn-v6,ours-cpython-v6,ours-pypy-v6,"
                                         "ours-pypy-nursery-v6",
                    help="comma list of coturn, ours-cpython, ours-pypy, ours-pypy-nursery (PyPy with "
                         "PYPY_GC_NURSERY=--pypy-nursery, as the salon's systemd unit sets it), c-ref; -metrics: "
                         "with --metrics, scraped during the runs; -v6 (coturn, ours-*): on ::1")  # fmt: skip
    ap.add_argument("--pypy-nursery", default="8M", help="PyPy's GC nursery for ours-pypy-nursery")
    ap.add_argument("--cpython-venv", type=Path, default=ROOT / ".venv")
    ap.add_argument("--pypy-venv", type=Path,
                    default=Path(os.environ.get("NATSALON_PYPY_VENV", ROOT / ".venv-pypy")))  # fmt: skip
    ap.add_argument("--no-pypy-setup", action="store_true", help="do not create/update the PyPy venv")
    ap.add_argument("--ours", default=OURS_DEFAULT,
                    help="command template for our server ({venv}, {port}, {alt_port}, {host})")  # fmt: skip
    ap.add_argument("--output", type=Path, default=RESULTS)
    ap.add_argument("--section", default=None, metavar="TITLE",
                    help="write this run as the section '## TITLE' of --output (replacing one of that title), "
                         "keeping the rest of the file")
    args = ap.parse_args()

    if args.rounds < 1 or args.duration <= 0 or args.window < 1:
        ap.error("bad --rounds/--duration/--window")
    if (os.cpu_count() or 1) < 2:
        log("warning: fewer than 2 CPUs; server and generator will share a core")

    atexit.register(stop_all)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)

    build_stunload()
    kinds, venvs, notes = server_kinds(args, ap)

    results: dict[str, list] = {k.name: [] for k in kinds}
    strikes: dict[str, int] = {}
    failed = False
    with tempfile.TemporaryDirectory(prefix="natsalon-bench-") as tmpdir:
        tmp = Path(tmpdir)
        for rnd in range(args.rounds):
            order = kinds[rnd % len(kinds):] + kinds[: rnd % len(kinds)] if kinds else []
            for kind in order:
                if kind.name in {k for k, v in results.items() if v is None}:
                    continue
                try:
                    for attempt in range(3):
                        try:
                            res = one_round(kind, args, tmp)
                            break
                        except PortTaken:
                            # free_udp_ports() released the ports and another
                            # process (a parallel test) took one: other ports
                            if attempt == 2:
                                raise
                            log(f"{kind.name}: a port was taken meanwhile; retrying with others")
                except Exception as e:  # noqa: BLE001
                    msg = f"{kind.name} failed in round {rnd + 1}: {e}"
                    log(msg)
                    notes.append(msg.splitlines()[0] + " (see stderr)")
                    failed = True
                    strikes[kind.name] = strikes.get(kind.name, 0) + 1
                    if strikes[kind.name] >= 3:  # broken, not unlucky: no more rounds
                        results[kind.name] = None
                    continue
                results[kind.name].append(res)
                s = res["sat"]
                log(
                    f"round {rnd + 1} {kind.name}: {s['rate']:,.0f}/s p50 {s['p50_us']:.0f} µs "
                    f"p99 {s['p99_us']:.0f} µs lost {s['lost']} invalid {s['invalid']}"
                    + (f" | light p50 {res['light']['p50_us']:.0f} p99 {res['light']['p99_us']:.0f} µs"
                       if res["light"] else "")  # fmt: skip
                )
    results = {k: v for k, v in results.items() if v}
    text, bad = report(kinds, results, args, notes, venvs)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    if args.section:
        text = as_section(text, args.section, args.output)
    tmp_out = args.output.with_suffix(args.output.suffix + ".tmp")
    tmp_out.write_text(text)
    os.replace(tmp_out, args.output)
    print(text)
    log(f"wrote {os.path.relpath(args.output)}")
    return 1 if (bad or failed) else 0


if __name__ == "__main__":
    sys.exit(main())
