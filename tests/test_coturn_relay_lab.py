"""Issue 12, "any TURN server": coturn (Debian's ``turnserver``, with
coturn's shared-secret REST credentials: use-auth-secret and
static-auth-secret) on the lab's public host ``third`` relays a pair that
has no direct path (random symmetric against random symmetric); both
``natsalon connect`` use it with ``--turn turn:USER:PASS@HOST``, the salon
runs no TURN at all.  3,000 forwarded datagrams each way arrive intact,
and coturn releases both allocations when the clients close."""
from __future__ import annotations

import json
import shutil
import subprocess
import time

import pytest

from natlab import Lab, Nat
from natlab.salon import start_salon
from natsalon.server.turn import mint
from test_connect_lab import SECRET, SERVER, _events, _exchange, _last

TURN_SECRET = "coturn lab secret"
EARLY = ("joined", "waiting", "introduced", "punching", "strategy", "relay-allocating", "relay-allocated",
         "relayed", "connected")


def start_coturn(lab: Lab, tmp) -> subprocess.Popen:
    """coturn on ``third`` (198.51.100.20:3478), relaying from the same
    address to the lab's sites (192.0.2.0/24); returns once it answers."""
    ip = lab.third.ip
    argv = ["turnserver", "-n", "--listening-ip", ip, "--relay-ip", ip, "--listening-port", "3478",
            "--use-auth-secret", "--static-auth-secret", TURN_SECRET, "--realm", "natsalon.lab",
            "--allowed-peer-ip", "192.0.2.0-192.0.2.255", "--no-cli", "--no-tls", "--no-dtls", "--no-tcp",
            "--min-port", "49152", "--max-port", "49200", "--log-file", str(tmp / "turnserver.log"), "--simple-log",
            "-v", "-m", "1",
            "--pidfile", str(tmp / "turnserver.pid"), "--userdb", str(tmp / "turndb")]
    proc = lab.third.spawn(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        assert proc.poll() is None, (tmp / "turnserver.log").read_text()
        if "3478" in lab.third.run(["ss", "-uln"]).stdout:
            return proc
        time.sleep(0.1)
    raise AssertionError("coturn did not come up:\n" + (tmp / "turnserver.log").read_text())


@pytest.mark.nat
@pytest.mark.skipif(shutil.which("turnserver") is None, reason="coturn (turnserver) not installed")
def test_a_pair_with_no_direct_path_relays_through_coturn(natlab: Lab, tmp_path) -> None:
    lab = natlab
    hosts = [lab.add_site(n, Nat.SYMMETRIC_RANDOM).hosts[0] for n in ("a", "b")]
    start_salon(lab)  # no TURN at the salon: only coturn can relay
    coturn = start_coturn(lab, tmp_path)
    turn_server = "%s:3478" % lab.third.ip
    clients = []
    for i, h in enumerate(hosts):  # coturn's REST credentials: "<expiry>:<user>", HMAC-SHA1 of it
        user, password = mint(TURN_SECRET.encode(), "user%d" % i, int(time.time()) + 3600)
        clients.append(h.spawn([Lab.bin("natsalon"), "connect", "--server", SERVER, "--room", "coturn",
                                "--secret", SECRET, "--json", "--timeout", "20", "--forward", "7000",
                                "--deliver", "127.0.0.1:7001", "--turn",
                                "turn:%s:%s@%s" % (user, password, turn_server)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    early = []
    for p in clients:
        evs = []
        while not evs or evs[-1]["event"] != "forwarding":
            line = p.stdout.readline()
            assert line, (evs, p.stderr.read() if p.poll() is not None else "")
            evs.append(json.loads(line))
            assert evs[-1]["event"] in EARLY + ("forwarding",), evs
        early.append(evs)
    for evs in early:
        conn = _last(evs, "connected")
        assert conn["path"] == "relay" and conn["server"] == turn_server and conn["strategy"] == "relay", evs
        assert _last(evs, "relayed")["server"] == turn_server, evs
    results = _exchange(hosts, 3000)
    for p in clients:
        p.terminate()
    ended = [_events(p, 10) for p in clients]
    assert results == [{"received": 3000, "bad": 0}] * 2, (results, early)
    for rc, events, err in ended:
        closed = _last(events, "closed")
        assert closed is not None and closed["rejected"] == 0 and closed["to_peer"] == 3000, (events, err)
    # coturn saw the releases (Refresh with LIFETIME 0): both allocations deleted
    deadline = time.monotonic() + 5
    while True:
        log = (tmp_path / "turnserver.log").read_text()
        deleted = sum(1 for line in log.splitlines() if "refreshed," in line and line.endswith("lifetime=0"))
        if deleted >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    coturn.terminate()
    coturn.wait(timeout=10)
    assert deleted >= 2, log[-3000:]
