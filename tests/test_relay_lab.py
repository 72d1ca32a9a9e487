"""Issue 12 in the NAT lab: pairs with no direct path (random symmetric
against random symmetric, random against sequential symmetric) connect
through the salon's TURN relay, and 3,000 forwarded datagrams each way
arrive intact (SHA-256 checked); a relayed pair upgrades to direct when
a NAT changes to allow it, with forwarded traffic flowing across the
switch."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from typing import Callable, List

import pytest

from natlab import Lab, Nat
from natlab.salon import start_salon
from natsalon.ops.testing import value
from test_connect_lab import RECEIVER, SECRET, SENDER, SERVER, _events, _exchange, _last
from test_ops_lab import scrape, wait_connected

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
        assert conn["server"] == SERVER and conn["strategy"] == "relay", conn
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


def _exchange_across(hosts, count: int, rate: float, during: Callable[[], None]) -> List[dict]:
    """:func:`_exchange` at ``rate`` datagrams/s each way, calling
    ``during()`` once the senders run."""
    recv = [h.spawn([sys.executable, "-c", RECEIVER, "7001", str(count), "5"], stdout=subprocess.PIPE,
                    text=True) for h in hosts]
    for r in recv:
        assert r.stdout.readline().strip() == "ready"
    send = [h.spawn([sys.executable, "-c", SENDER, "7000", str(count), str(rate), "7002"], stdout=subprocess.PIPE,
                    text=True) for h in hosts]
    during()
    for p in send:
        p.communicate(timeout=120)
    return [json.loads(r.communicate(timeout=60)[0].strip().splitlines()[-1]) for r in recv]


def _reader(proc: subprocess.Popen, into: List[dict]) -> threading.Thread:
    def read() -> None:
        for line in proc.stdout:
            ev = json.loads(line)
            ev["_t"] = time.monotonic()
            into.append(ev)

    t = threading.Thread(target=read, daemon=True)
    t.start()
    return t


@pytest.mark.nat
def test_relayed_pair_upgrades_when_a_nat_opens(natlab: Lab, tmp_path) -> None:
    """Random symmetric against random symmetric: relayed.  While 3,000
    datagrams each way are forwarded, site a's NAT becomes a full cone
    (its live mappings kept): both sides find the direct path (b probes
    a's known mapping, a learns b's new source), traffic moves to it with
    nothing lost or rejected, the allocations are released, and the
    natclient counts the upgrade."""
    lab = natlab
    site_a = lab.add_site("a", S)
    ha, hb = site_a.hosts[0], lab.add_site("b", S).hosts[0]
    start_salon(lab, extra_args=TURN_ARGS + ["--metrics", "9478"])
    secret = tmp_path / "secret"
    secret.write_text(SECRET + "\n")
    secret.chmod(0o600)
    cfg = tmp_path / "natclient.toml"
    cfg.write_text('server = "%s"\nroom = "upgrade"\nsecret-file = "%s"\nforward = 7000\n'
                   'deliver = "127.0.0.1:7001"\nmetrics = 9479\n' % (SERVER, secret))
    log = open(tmp_path / "natclient.log", "w")
    ha.spawn([Lab.bin("twistd"), "-n", "--pidfile=", "natclient", "--config", str(cfg)],
             stdout=log, stderr=subprocess.STDOUT, cwd=str(tmp_path))
    peer = hb.spawn([Lab.bin("natsalon"), "connect", "--server", SERVER, "--room", "upgrade", "--secret", SECRET,
                     "--json", "--timeout", "60", "--forward", "7000", "--deliver", "127.0.0.1:7001"],
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    events: List[dict] = []
    reader = _reader(peer, events)
    deadline = time.monotonic() + 60
    while _last(events, "forwarding") is None:
        assert time.monotonic() < deadline and peer.poll() is None, (events, (tmp_path / "natclient.log").read_text())
        time.sleep(0.1)
    assert _last(events, "connected")["path"] == "relay", events
    before = wait_connected(ha, 9479)
    assert value(before, "natclient_path", kind="relay") == 1 and value(before, "natclient_upgrades_total") == 0
    assert value(scrape(lab.server, 9478), "natsalon_turn_allocations") == 2
    swapped = []

    def swap() -> None:
        time.sleep(2.0)
        swapped.append(time.monotonic())
        site_a.set_nat(Nat.FULL_CONE)

    count = 3000
    results = _exchange_across((ha, hb), count, 300.0, swap)
    up = _last(events, "upgraded")
    assert up is not None and up["path"] == "direct", (json.dumps(events), (tmp_path / "natclient.log").read_text())
    assert results == [{"received": count, "bad": 0}] * 2, (results, events)
    time.sleep(3.0)  # the release follows the switch by release_after (2 s)
    client = scrape(ha, 9479)
    assert value(client, "natclient_upgrades_total") == 1, client
    assert value(client, "natclient_path", kind="direct") == 1
    assert value(client, "natclient_frames_rejected_total", reason="auth_or_source") == 0
    salon = scrape(lab.server, 9478)
    assert value(salon, "natsalon_turn_allocations") == 0, salon
    assert value(salon, "natsalon_turn_allocations_ended_total", reason="deleted") == 2, salon
    peer.terminate()
    peer.wait(timeout=10)
    reader.join(timeout=5)
    closed = _last(events, "closed")
    assert closed is not None and closed["rejected"] == 0 and closed["to_peer"] == count, events
    assert closed["from_peer"] == count, events
    print("upgraded %.2f s after the NAT change (%d upgrade probes, rtt %.1f ms)"
          % (up["_t"] - swapped[0], up["probes"], up["rtt_ms"]))
