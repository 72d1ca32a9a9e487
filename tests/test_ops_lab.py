"""Issue 13's "done when": ``twistd -n natsalon --metrics`` and ``twistd -n
natclient --metrics`` in the NAT lab, scraped after a forwarded connection
through two NATs and a relayed TURN session (coturn's turnutils_uclient to
turnutils_peer through the salon); the values match what happened."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest

from natlab import Lab, Nat
from natlab.apps import ECHO, PINGER
from natlab.salon import start_salon
from natsalon.ops.testing import require_tool, samples, value

SERVER = "203.0.113.10:3478"
TURN_SECRET = "lab-turn-secret"



SCRAPE = r"""
import sys, urllib.request
print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())
"""


def scrape(host, port: int) -> str:
    r = host.run([sys.executable, "-c", SCRAPE, "http://127.0.0.1:%d/metrics" % port], timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def wait_connected(host, port: int, timeout: float = 90.0) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        try:
            text = scrape(host, port)
        except AssertionError:
            text = ""
        if text and value(text, "natclient_state", state="connected") == 1:
            return text
        time.sleep(0.5)
    raise AssertionError("natclient never connected:\n%s" % text)


def status(host, port: int) -> dict:
    r = host.run([Lab.bin("natsalon"), "status", "--metrics", str(port), "--json"], timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.nat
def test_metrics_after_a_connection_and_a_relayed_session(natlab: Lab, tmp_path) -> None:
    promtool = require_tool("promtool", "prometheus")
    uclient = require_tool("turnutils_uclient", "coturn")
    peer_tool = require_tool("turnutils_peer", "coturn")
    lab = natlab
    a = lab.add_site("a", Nat.RESTRICTED_CONE).hosts[0]
    b = lab.add_site("b", Nat.SYMMETRIC_RANDOM).hosts[0]
    start_salon(lab, ["--metrics", "9478", "--turn-secret", TURN_SECRET, "--relay-ports", "50000-50100"])
    secret = tmp_path / "secret"
    secret.write_text("a long random shared secret for the metrics lab test\n")
    secret.chmod(0o600)
    cfg = tmp_path / "natclient.toml"
    cfg.write_text('server = "%s"\nroom = "ops"\nsecret-file = "%s"\nforward = 7000\ndeliver = "127.0.0.1:7001"\n'
                   'keepalive = 2\nmetrics = 9479\nlog-format = "json"\n' % (SERVER, secret))
    echo = a.spawn([sys.executable, "-c", ECHO], stdout=subprocess.PIPE, text=True)
    assert echo.stdout.readline().strip() == "ready"
    log = open(tmp_path / "natclient.log", "w")
    daemon = a.spawn([Lab.bin("twistd"), "-n", "--pidfile=", "natclient", "--config", str(cfg)],
                     stdout=log, stderr=subprocess.STDOUT, cwd=str(tmp_path))
    peer = b.spawn([Lab.bin("natsalon"), "connect", "--server", SERVER, "--room", "ops",
                    "--secret-file", str(secret), "--json", "--timeout", "60", "--forward", "7000"],
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        events = []
        while not any(e.get("event") == "forwarding" for e in events):
            line = peer.stdout.readline()
            assert line, "connect ended: %s %s" % (events, peer.stderr.read())
            events.append(json.loads(line))
        wait_connected(a, 9479)
        n = 200
        r = b.run([sys.executable, "-c", PINGER, str(n)], capture_output=True, text=True, timeout=60)
        result = json.loads(r.stdout.strip().splitlines()[-1])
        assert result["echoed"] >= n * 0.95, (result, r.stderr)

        # the relayed session: turnutils_uclient (site a, behind its NAT)
        # through the salon's TURN relay to turnutils_peer on a public host
        lab.third.spawn([peer_tool, "-L", lab.third.ip, "-p", "5555"], stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        messages, size = 100, 100
        u = a.run([uclient, "-c", "-W", TURN_SECRET, "-u", "alice", "-e", lab.third.ip, "-r", "5555",
                   "-p", "3478", "-n", str(messages), "-l", str(size), "-z", "2", "203.0.113.10"], timeout=120)
        out = u.stdout + u.stderr
        assert u.returncode == 0, out
        totals = re.findall(r"tot_send_msgs=(\d+), tot_recv_msgs=(\d+)", out)
        sent_msgs, recv_msgs = (int(x) for x in totals[-1])
        assert sent_msgs == messages and recv_msgs >= messages * 0.95, out
        time.sleep(2.5)  # one sweep: the ended allocation's bytes are folded in

        client = scrape(a, 9479)
        salon = scrape(lab.server, 9478)
    finally:
        peer.terminate()
        daemon.terminate()
    for text in (client, salon):
        r = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr

    # the client: connected over a direct path, and it forwarded every ping
    # and every echo, byte for byte
    pings = sum(len(b"ping %d" % i) for i in range(n))
    c = samples(client)
    assert value(c, "natclient_state", state="connected") == 1
    assert value(c, "natclient_path", kind="direct") == 1
    assert 0 < value(c, "natclient_rtt_seconds") < 1
    assert value(c, "natclient_peer_silence_seconds") < 10
    assert value(c, "natclient_forwarded_datagrams_total", direction="from_peer") == n
    assert value(c, "natclient_frames_total", direction="received") == n
    assert value(c, "natclient_payload_bytes_total", direction="received") == pings
    echoed = result["echoed"]
    assert value(c, "natclient_forwarded_datagrams_total", direction="to_peer") == n  # echo answers every ping
    assert value(c, "natclient_payload_bytes_total", direction="sent") == pings + 5 * n
    assert echoed <= value(c, "natclient_frames_total", direction="sent") == n
    assert value(c, "natclient_connects_total") == 1 and value(c, "natclient_repunches_total") == 0

    # the salon: one room paired, both members introduced, the relayed
    # session's allocation made, bound, ended and its bytes counted
    s = samples(salon)
    assert value(s, "natsalon_introductions_total") == 1
    assert value(s, "natsalon_joins_total", outcome="waiting") >= 1
    assert value(s, "natsalon_joins_total", outcome="introduced") >= 1  # the waiting member got the push
    assert value(s, "natsalon_joins_total", outcome="cookie_sent") >= 2
    made = value(s, "natsalon_turn_allocations_created_total")
    assert made >= 1  # turnutils_uclient may allocate more than once
    assert value(s, "natsalon_turn_channels_created_total") >= 1
    assert value(s, "natsalon_turn_errors_total", code="401") >= 1  # the first Allocate's challenge
    relayed = value(s, "natsalon_turn_relayed_bytes_total")
    assert (sent_msgs + recv_msgs) * size <= relayed <= (sent_msgs + recv_msgs) * size * 1.1, relayed
    # each way: the client's messages to the peer, the peer's echoes back
    per_way = {d: (value(s, "natsalon_turn_packets_total", direction=d),
                   value(s, "natsalon_turn_bytes_total", direction=d)) for d in ("client_to_peer", "peer_to_client")}
    print("relayed per direction:", per_way, "uclient sent", sent_msgs, "received", recv_msgs)
    assert per_way["client_to_peer"] == (sent_msgs, sent_msgs * size), per_way
    assert per_way["peer_to_client"][0] >= recv_msgs and per_way["peer_to_client"][1] >= recv_msgs * size, per_way
    assert per_way["peer_to_client"][0] <= sent_msgs  # the peer echoes each message once
    assert per_way["peer_to_client"][1] == per_way["peer_to_client"][0] * size, per_way
    assert per_way["client_to_peer"][1] + per_way["peer_to_client"][1] == relayed
    ended = sum(value(s, "natsalon_turn_allocations_ended_total", reason=r) for r in ("expired", "deleted", "closed"))
    assert ended == value(s, "natsalon_turn_allocation_lifetime_seconds_count") >= 1
    assert ended + value(s, "natsalon_turn_allocations") == made  # uclient may leave one to expire
    assert value(s, "natsalon_answers_total", code="success") > 0
    # no label names an address or a room
    labels = " ".join(str(k[1]) for k in list(s) + list(c))
    assert not re.search(r"\d+\.\d+\.\d+\.\d+", labels), labels

    # natsalon status reads both
    st = status(lab.server, 9478)
    assert st["daemon"] == "salon" and st["introductions"] == 1 and st["turn"]["allocations_created"] == made
    log.close()
    lines = (tmp_path / "natclient.log").read_text().splitlines()
    assert lines and all(json.loads(line) for line in lines)  # --log-format json from the file
