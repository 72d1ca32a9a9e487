"""Two real `twistd -n natsalon` daemons on the lab server's two addresses
share their rooms in one redis-server (a unix socket in a temp folder):
peers behind two NATs, each told a different salon, meet and connect."""
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


@pytest.mark.nat
def test_peers_told_different_salons_meet_through_shared_rooms(natlab: Lab, tmp_path) -> None:
    lab = natlab
    a = lab.add_site("a", Nat.RESTRICTED_CONE).hosts[0]
    b = lab.add_site("b", Nat.PORT_RESTRICTED_CONE).hosts[0]
    sock = tmp_path / "redis.sock"
    redis = lab.server.spawn([REDIS_SERVER, "--save", "", "--appendonly", "no", "--port", "0",
                              "--dir", str(tmp_path), "--unixsocket", str(sock), "--unixsocketperm", "700"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        if sock.exists():
            break
        time.sleep(0.05)
    cookie = tmp_path / "cookie-secret"
    cookie.write_text("a cookie secret shared by both salons\n")
    secret = tmp_path / "secret"
    secret.write_text("the room's shared secret for this test\n")
    one = start_salon(lab, SALONS[0], "unix:" + str(sock), str(cookie), tmp_path, "one")
    two = start_salon(lab, SALONS[1], "unix:" + str(sock), str(cookie), tmp_path, "two")
    peers = []
    try:
        for host, salon in ((a, SALONS[0]), (b, SALONS[1])):
            peers.append(host.spawn([Lab.bin("natsalon"), "connect", "--server", salon + ":3478", "--room", "r",
                                     "--secret-file", str(secret), "--json", "--timeout", "30"],
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
