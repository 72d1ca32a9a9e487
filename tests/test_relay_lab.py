"""Issue 12 in the NAT lab: pairs with no direct path (random symmetric
against random symmetric, random against sequential symmetric) connect
through the salon's TURN relay, and 3,000 forwarded datagrams each way
arrive intact (SHA-256 checked)."""
from __future__ import annotations

import json
import subprocess
import time

import pytest

from natlab import Lab, Nat
from natlab.salon import start_salon
from test_connect_lab import SECRET, SERVER, _events, _exchange, _last

TURN_ARGS = ["--turn-secret", "lab turn secret", "--turn-allow-peer", "192.0.2.0/24"]
S, Q = Nat.SYMMETRIC_RANDOM, Nat.SYMMETRIC_SEQUENTIAL
EARLY = ("joined", "waiting", "introduced", "punching", "strategy", "relay-allocating", "relay-allocated",
         "relayed", "connected")


@pytest.mark.nat
@pytest.mark.parametrize("a,b,args", [(S, S, []), (S, Q, TURN_ARGS)],
                         ids=["random-random-no-turn-options", "random-sequential"])
def test_relayed_forwarding(natlab: Lab, a: Nat, b: Nat, args) -> None:
    """``args``: the salon's TURN options; none at all (its default: room
    credentials only), or a shared secret and an allowed peer range."""
    lab = natlab
    ha = lab.add_site("a", a).hosts[0]
    hb = lab.add_site("b", b).hosts[0]
    salon = start_salon(lab, extra_args=args)
    count = 3000
    fwd = [h.spawn([Lab.bin("natsalon"), "connect", "--server", SERVER, "--room", "relay-fwd",
                    "--secret", SECRET, "--json", "--timeout", "20", "--forward", "7000",
                    "--deliver", "127.0.0.1:7001"],
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for h in (ha, hb)]
    early = []
    for p in fwd:
        evs = []
        for _ in range(20):
            line = p.stdout.readline()
            assert line, (evs, p.stderr.read() if p.poll() is not None else "")
            ev = json.loads(line)
            evs.append(ev)
            if ev["event"] == "forwarding":
                break
            assert ev["event"] in EARLY, evs
        early.append(evs)
    for evs in early:
        conn = _last(evs, "connected")
        assert conn is not None and conn["path"] == "relay", evs
        relayed = _last(evs, "relayed")
        assert relayed is not None and relayed["server"] == SERVER, evs
        print("%s-%s relayed after %.0f ms (punch_ms %.0f, rtt %.1f ms)" % (
            a.name, b.name, relayed["relay_ms"], conn["punch_ms"], conn["rtt_ms"]))
    results = _exchange((ha, hb), count)
    for p in fwd:
        p.terminate()
    ended = [_events(p, 10) for p in fwd]
    closed = [e[1] for e in ended]
    assert results == [{"received": count, "bad": 0}] * 2, (results, early, closed)
    for events in closed:
        c = _last(events, "closed")
        assert c is not None and c["to_peer"] == count and c["from_peer"] == count and c["rejected"] == 0, events
    # every allocation was released on close (Refresh 0: "deleted", not left to expire)
    allocated = sum(1 for evs in early for e in evs if e["event"] == "relay-allocated")
    assert allocated >= 1
    deadline = time.monotonic() + 5
    while True:
        salon.salon_log.seek(0)
        log = salon.salon_log.read().decode(errors="replace")
        deleted = sum(1 for line in log.splitlines() if "TURN allocation for" in line and " deleted:" in line)
        if deleted >= allocated or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert deleted == allocated, (log[-3000:], [e[2][-2000:] for e in ended])
