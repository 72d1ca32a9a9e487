"""Sessions that survive restarts and departures, in the NAT lab (issue 9's
acceptance): two ``twistd -n natclient`` daemons (the systemd unit's
command line) forward a steady UDP flow between two NATed sites through
the real ``twistd -n natsalon``.  One end is killed (-9) or stopped cleanly
and started again, or the salon itself is restarted, five times each; the
flow must come back within the issue's windows, and nothing may be lost
outside those windows.

Every host runs a small flow app: it sends a numbered datagram to its
natclient's forward port every 20 ms and records what arrives from the
other app, with CLOCK_MONOTONIC times (one clock for every namespace)."""
from __future__ import annotations

import json
import pathlib
import signal
import subprocess
import sys
import time
from typing import Dict, List, Tuple

import pytest

from natlab import Lab, Nat
from natlab.salon import start_salon

SERVER = "203.0.113.10:3478"
INTERVAL = 0.02

FLOW = r"""
import json, signal, socket, sys, time
interval = float(sys.argv[1])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 7001))
s.setblocking(False)
sent, got = [], {}
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
print("ready", flush=True)
seq, next_send = 0, time.monotonic()
while not stop:
    now = time.monotonic()
    if now >= next_send:
        try:
            s.sendto(b"%d" % seq, ("127.0.0.1", 7000))
        except OSError:
            pass  # the forward port is down while its natclient restarts
        sent.append(now)
        seq += 1
        next_send += interval
    try:
        while True:
            data, _ = s.recvfrom(64)
            got.setdefault(int(data), time.monotonic())
    except (BlockingIOError, ValueError):
        pass
    time.sleep(0.002)
print(json.dumps({"sent": sent, "got": got}), flush=True)
"""


class Pair:
    """Two natclient daemons in one room, a flow app beside each."""

    def __init__(self, lab: Lab, tmp_path) -> None:
        self.lab = lab
        self.tmp = tmp_path
        self.hosts = [lab.add_site("ra", Nat.PORT_RESTRICTED_CONE).hosts[0],
                      lab.add_site("rb", Nat.FULL_CONE).hosts[0]]
        self.secret = tmp_path / "secret"
        self.secret.write_text("a long random secret for the restart test\n")
        self.daemons: List[subprocess.Popen] = [None, None]
        self.logs: List[str] = []
        self.apps = []
        for h in self.hosts:
            app = h.spawn([sys.executable, "-c", FLOW, str(INTERVAL)], stdout=subprocess.PIPE, text=True)
            assert app.stdout.readline().strip() == "ready"
            self.apps.append(app)

    def start(self, i: int) -> None:
        log = self.tmp / ("natclient-%d-%d.log" % (i, len(self.logs)))
        self.logs.append(str(log))
        self.daemons[i] = self.hosts[i].spawn(
            [Lab.bin("twistd"), "-n", "--pidfile=", "natclient", "--server", SERVER, "--room", "restart",
             "--secret-file", str(self.secret), "--forward", "7000", "--deliver", "127.0.0.1:7001"],
            stdout=open(log, "w"), stderr=subprocess.STDOUT, cwd=str(self.tmp))

    def ready(self, i: int, timeout: float = 60.0) -> float:
        """When the daemon started last by :meth:`start` has its forward port
        bound (its log says "forwarding"): about to join.  The windows count
        from there, not from the spawn: a loaded machine may take seconds
        to start a Python process, which is not what they measure."""
        log = pathlib.Path(self.logs[-1])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if log.exists() and "forwarding" in log.read_text():
                return time.monotonic()
            assert self.daemons[i].poll() is None, log.read_text()
            time.sleep(0.02)
        raise AssertionError("natclient %d did not start within %g s: %s" % (i, timeout, log.read_text()))

    def stop(self, i: int, sig: int) -> None:
        d = self.daemons[i]
        d.send_signal(sig)
        d.wait(timeout=15)

    def results(self) -> List[Dict]:
        out = []
        for app in self.apps:
            app.send_signal(signal.SIGTERM)
            line, _ = app.communicate(timeout=15)
            data = json.loads(line.strip().splitlines()[-1])
            out.append({"sent": data["sent"], "got": {int(k): v for k, v in data["got"].items()}})
        return out


def _arrived_after(result_to: Dict, result_from: Dict, t: float) -> float:
    """When the first datagram sent after ``t`` arrived (inf if none)."""
    firsts = [result_to["got"][seq] for seq, sent_at in enumerate(result_from["sent"])
              if sent_at > t and seq in result_to["got"]]
    return min(firsts) if firsts else float("inf")


def _lost_outside(result_to: Dict, result_from: Dict, windows: List[Tuple[float, float]],
                  start: float, end: float) -> List[int]:
    """Datagrams sent between start and end, outside every window, that never arrived."""
    lost = []
    for seq, sent_at in enumerate(result_from["sent"]):
        if not start <= sent_at <= end or any(a <= sent_at <= b for a, b in windows):
            continue
        if seq not in result_to["got"]:
            lost.append(seq)
    return lost


@pytest.mark.nat
def test_ends_and_salon_restart_while_traffic_flows(natlab: Lab, tmp_path) -> None:
    lab = natlab
    salon = start_salon(lab)
    pair = Pair(lab, tmp_path)
    pair.start(0)
    pair.start(1)
    time.sleep(6)  # both meet; the flow runs
    t0 = time.monotonic()
    events: List[Tuple[str, float, float]] = []  # (kind, outage start, restart time)

    # kill -9 one end (alternating), restart it within a second: back within 20 s
    for n in range(5):
        i = n % 2
        t_kill = time.monotonic()
        pair.stop(i, signal.SIGKILL)
        time.sleep(0.5)
        pair.start(i)
        t_restart = pair.ready(i)
        time.sleep(20)
        events.append(("kill", t_kill, t_restart))

    # stop one end cleanly, restart it: back within 5 s
    for n in range(5):
        i = n % 2
        t_stop = time.monotonic()
        pair.stop(i, signal.SIGTERM)
        pair.start(i)
        t_restart = pair.ready(i)
        time.sleep(6)
        events.append(("clean", t_stop, t_restart))

    # restart the salon while the pair is connected: the direct path carries on
    t_salon = time.monotonic()
    salon.send_signal(signal.SIGKILL)
    salon.wait(10)
    salon = start_salon(lab)
    t_salon_back = time.monotonic()
    time.sleep(3)
    # ... and a later re-join works with the new salon
    t_stop = time.monotonic()
    pair.stop(1, signal.SIGTERM)
    pair.start(1)
    t_restart = pair.ready(1)
    time.sleep(6)
    events.append(("after-salon-restart", t_stop, t_restart))
    t_end = time.monotonic()
    for i in (0, 1):
        pair.stop(i, signal.SIGTERM)
    a, b = pair.results()

    report = []
    windows = []
    for kind, t_out, t_restart in events:
        limit = 20.0 if kind == "kill" else 5.0
        back_ab = _arrived_after(b, a, t_restart) - t_restart
        back_ba = _arrived_after(a, b, t_restart) - t_restart
        report.append((kind, round(back_ab, 2), round(back_ba, 2)))
        windows.append((t_out - 0.1, t_restart + max(back_ab, back_ba) + 0.1))
    print("restart report (kind, a->b s, b->a s):", report)
    print("salon restarted in %.2f s" % (t_salon_back - t_salon))
    for kind, back_ab, back_ba in report:
        limit = 20.0 if kind == "kill" else 5.0
        assert back_ab <= limit and back_ba <= limit, (report, pair.logs)
    # outside the outage windows nothing is lost, including across the salon's restart
    assert not _lost_outside(b, a, windows, t0, t_end - 0.5), report
    assert not _lost_outside(a, b, windows, t0, t_end - 0.5), report
    for path in pair.logs:
        text = open(path).read()
        assert "Traceback" not in text, text[-3000:]
