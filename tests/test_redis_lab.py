"""Two real `twistd -n natsalon` daemons on the lab server's two addresses
share their rooms in one redis-server (a unix socket in a temp folder):
peers behind two NATs, each told a different salon, meet and connect; a
member told both salons whose salon is killed while it waits re-joins the
other and meets its peer there."""
from __future__ import annotations

import json
import subprocess
import time

import pytest

from natlab import Lab, Nat
from natlab.lab import LabError

from redis_server import REDIS_SERVER

SALONS = ("203.0.113.10", "203.0.113.11")


def start_salon(lab: Lab, ip: str, rooms: str, cookie: str, tmp_path, name: str) -> subprocess.Popen:
    log = open(tmp_path / ("%s.log" % name), "w")
    proc = lab.server.spawn([Lab.bin("twistd"), "-n", "--pidfile=", "natsalon", "--interface", ip,
                             "--port", "3478", "--alt-port", "3479", "--rooms", rooms, "--instance-id", name,
                             "--cookie-secret-file", cookie], stdout=log, stderr=subprocess.STDOUT)
    log.close()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        text = (tmp_path / ("%s.log" % name)).read_text()
        if "natsalon serving STUN" in text and text.count("connected") >= 2:
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise LabError("salon %s did not come up:\n%s" % (name, (tmp_path / ("%s.log" % name)).read_text()))


def start_redis(lab: Lab, tmp_path):
    """redis-server on the lab server, on a unix socket in ``tmp_path``;
    also writes the salons' cookie secret and the room's secret there."""
    sock = tmp_path / "redis.sock"
    redis = lab.server.spawn([REDIS_SERVER, "--save", "", "--appendonly", "no", "--port", "0",
                              "--dir", str(tmp_path), "--unixsocket", str(sock), "--unixsocketperm", "700"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        if sock.exists():
            break
        time.sleep(0.05)
    (tmp_path / "cookie-secret").write_text("a cookie secret shared by both salons\n")
    (tmp_path / "secret").write_text("the room's shared secret for this test\n")
    return redis, "unix:" + str(sock), str(tmp_path / "cookie-secret"), str(tmp_path / "secret")


def events_until(peer: subprocess.Popen, events: list, name: str) -> dict:
    """Read the peer's JSON events into ``events`` until one named ``name``."""
    while True:
        line = peer.stdout.readline()
        assert line, "connect ended before %r: %s %s" % (name, events, peer.stderr.read())
        events.append(json.loads(line))
        if events[-1].get("event") == name:
            return events[-1]


@pytest.mark.nat
def test_peers_told_different_salons_meet_through_shared_rooms(natlab: Lab, tmp_path) -> None:
    lab = natlab
    a = lab.add_site("a", Nat.RESTRICTED_CONE).hosts[0]
    b = lab.add_site("b", Nat.PORT_RESTRICTED_CONE).hosts[0]
    redis, rooms, cookie, secret = start_redis(lab, tmp_path)
    one = start_salon(lab, SALONS[0], rooms, cookie, tmp_path, "one")
    two = start_salon(lab, SALONS[1], rooms, cookie, tmp_path, "two")
    peers = []
    try:
        for host, salon in ((a, SALONS[0]), (b, SALONS[1])):
            peers.append(host.spawn([Lab.bin("natsalon"), "connect", "--server", salon + ":3478", "--room", "r",
                                     "--secret-file", secret, "--json", "--timeout", "30"],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
            time.sleep(0.5)  # a waits on one salon when b joins the other
        for peer in peers:
            events = []
            while not any(e.get("event") == "connected" for e in events):
                line = peer.stdout.readline()
                assert line, "connect ended: %s %s" % (events, peer.stderr.read())
                events.append(json.loads(line))
            assert [e for e in events if e.get("event") == "connected"][0]["path"] == "direct", events
    finally:
        for proc in peers + [one, two]:
            proc.terminate()
        for proc in peers + [one, two]:
            proc.wait(10)
        redis.terminate()
        redis.wait(10)
    for name in ("one", "two"):
        text = (tmp_path / ("%s.log" % name)).read_text()
        assert "Traceback" not in text, text


@pytest.mark.nat
def test_a_member_whose_salon_is_killed_while_it_waits_meets_its_peer_on_the_other(natlab: Lab, tmp_path) -> None:
    lab = natlab
    a = lab.add_site("a", Nat.RESTRICTED_CONE).hosts[0]
    b = lab.add_site("b", Nat.PORT_RESTRICTED_CONE).hosts[0]
    redis, rooms, cookie, secret = start_redis(lab, tmp_path)
    one = start_salon(lab, SALONS[0], rooms, cookie, tmp_path, "one")
    two = start_salon(lab, SALONS[1], rooms, cookie, tmp_path, "two")
    both = "%s:3478,%s:3478" % SALONS
    argv = [Lab.bin("natsalon"), "connect", "--server", both, "--room", "r", "--secret-file", secret, "--json",
            "--timeout", "40"]
    peers = []
    try:
        peers.append(a.spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        events_a = []
        events_until(peers[0], events_a, "waiting")  # a waits on the first salon
        one.terminate()  # the salon a waits on dies
        one.wait(10)
        # a's next poll goes unanswered: it re-joins the other salon
        assert events_until(peers[0], events_a, "salon") == {"event": "salon", "server": "%s:3478" % SALONS[1]}
        # b is told both too: the dead one answers an ICMP port unreachable
        peers.append(b.spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        events_b = []
        for peer, events in ((peers[0], events_a), (peers[1], events_b)):
            connected = events_until(peer, events, "connected")
            assert connected["path"] == "direct", events
        assert {"event": "salon", "server": "%s:3478" % SALONS[1]} in events_b
        assert not [e for e in events_a + events_b if e["event"] in ("failed", "repunch-failed")]
    finally:
        for proc in peers + [one, two]:
            if proc.poll() is None:
                proc.terminate()
        for proc in peers + [one, two]:
            proc.wait(10)
        redis.terminate()
        redis.wait(10)
    for name in ("one", "two"):
        text = (tmp_path / ("%s.log" % name)).read_text()
        assert "Traceback" not in text, text
