"""Issue 12, relay lost, in the NAT lab: two ``natsalon connect`` clients
behind random symmetric NATs (no direct path) forward a steady flow
through the salon's TURN relay; the salon's process is restarted (its
allocations and rooms die with it).  Both clients notice, allocate again,
re-signal and carry the flow on through the new allocations, in the same
session (no re-join, the forwarder untouched); then 3,000 checked
datagrams each way go through.  How long the flow stopped is reported,
not asserted with a timer."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import List

import pytest

from natlab import Lab, Nat
from natlab.salon import start_salon
from test_connect_lab import SECRET, SERVER, _exchange, _last
from test_relay_lab import TURN_ARGS

#: a steady flow: argv to_port, rate (datagrams/s), seconds, source port
FLOW_SENDER = r"""
import socket, sys, time
to_port, rate, seconds, src = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", src))
n, start = 0, time.monotonic()
while time.monotonic() - start < seconds:
    s.sendto(b"%08d" % n, ("127.0.0.1", to_port))
    n += 1
    time.sleep(max(0.0, start + n / rate - time.monotonic()))
print(n, flush=True)
"""

#: its receiver: the monotonic arrival time of each datagram, as JSON once idle
FLOW_RECEIVER = r"""
import json, socket, sys, time
port, idle = int(sys.argv[1]), float(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", port))
print("ready", flush=True)
s.settimeout(idle)
times = []
try:
    while True:
        s.recv(4096)
        times.append(time.monotonic())
except socket.timeout:
    pass
print(json.dumps(times), flush=True)
"""

EARLY = ("joined", "waiting", "introduced", "punching", "strategy", "relay-allocating", "relay-allocated",
         "relayed", "connected")


def _read_events(proc: subprocess.Popen, into: List[dict]) -> threading.Thread:
    def read() -> None:
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


def _until_forwarding(p: subprocess.Popen) -> List[dict]:
    evs = []
    for _ in range(20):
        line = p.stdout.readline()
        assert line, (evs, p.stderr.read() if p.poll() is not None else "")
        ev = json.loads(line)
        evs.append(ev)
        if ev["event"] == "forwarding":
            return evs
        assert ev["event"] in EARLY, evs
    raise AssertionError(evs)


def _wait_for(events: List[List[dict]], name: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(_last(evs, name) is not None for evs in events):
            return
        time.sleep(0.1)


def _gap(times: List[float], cut: float) -> float:
    """Seconds between the last arrival before ``cut`` and the first after."""
    before = [t for t in times if t <= cut]
    after = [t for t in times if t > cut]
    assert before and after, (len(before), len(after))
    return min(after) - max(before)


@pytest.mark.nat
def test_salon_restart_during_a_relayed_session(natlab: Lab) -> None:
    lab = natlab
    hosts = [lab.add_site(n, Nat.SYMMETRIC_RANDOM).hosts[0] for n in ("a", "b")]
    salon = start_salon(lab, extra_args=TURN_ARGS)
    clients = [h.spawn([Lab.bin("natsalon"), "connect", "--server", SERVER, "--room", "relay-lost",
                        "--secret", SECRET, "--json", "--timeout", "20", "--forward", "7000",
                        "--deliver", "127.0.0.1:7001"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for h in hosts]
    for p in clients:
        conn = _last(_until_forwarding(p), "connected")
        assert conn is not None and conn["path"] == "relay", conn
    events: List[List[dict]] = [[], []]
    readers = [_read_events(p, evs) for p, evs in zip(clients, events)]
    seconds, rate = 16.0, 100.0
    recv = [h.spawn([sys.executable, "-c", FLOW_RECEIVER, "7001", "4"], stdout=subprocess.PIPE, text=True)
            for h in hosts]
    for r in recv:
        assert r.stdout.readline().strip() == "ready"
    send = [h.spawn([sys.executable, "-c", FLOW_SENDER, "7000", str(rate), str(seconds), "7002"],
                    stdout=subprocess.PIPE, text=True) for h in hosts]
    time.sleep(3)
    # the restart: the process ends (allocations, relayed sockets and rooms
    # with it), a new one starts on the same ports
    t_kill = time.monotonic()
    os.killpg(salon.pid, signal.SIGTERM)
    salon.wait(timeout=10)
    salon = start_salon(lab, extra_args=TURN_ARGS)
    t_up = time.monotonic()
    _wait_for(events, "relay-recovered", 30)
    sent = [int(s.communicate(timeout=60)[0].split()[0]) for s in send]
    arrivals = [json.loads(r.communicate(timeout=60)[0].strip().splitlines()[-1]) for r in recv]
    for evs in events:
        names = [e["event"] for e in evs]
        assert "relay-lost" in names and "relay-recovered" in names, evs
        # the same session: no lost path, no re-join
        assert "path-lost" not in names and "joined" not in names, evs
    # the flow went on after the restart, in both directions
    gaps = [_gap(times, t_kill) for times in arrivals]
    late = [sum(1 for t in times if t > t_up) for times in arrivals]
    assert all(n > 0 for n in late), late
    # then the checked exchange through the new allocations
    results = _exchange(hosts, 3000)
    assert results == [{"received": 3000, "bad": 0}] * 2, (results, events)
    for evs in events:
        lost, rec = _last(evs, "relay-lost"), _last(evs, "relay-recovered")
        print("relay lost (%s) %.2f s after the kill; recovered %.2f s after the kill, %.2f s after the salon "
              "answered again (recover_ms %.0f)" % (lost["reason"], lost["_t"] - t_kill, rec["_t"] - t_kill,
                                                    rec["_t"] - t_up, rec["recover_ms"]))
    print("salon down for %.2f s; flow gap %s s; sent %s, received %s" % (
        t_up - t_kill, ["%.2f" % g for g in gaps], sent, [len(t) for t in arrivals]))
    for p in clients:
        p.terminate()
    for p in clients:
        p.wait(timeout=10)
    for r in readers:
        r.join(timeout=5)
    for evs in events:
        closed = _last(evs, "closed")
        assert closed is not None and closed["rejected"] == 0, evs
