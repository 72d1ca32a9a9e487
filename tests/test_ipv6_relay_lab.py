"""Issue 15's TURN acceptance in the NAT lab: an IPv4-only site (random
symmetric NAT) and an IPv6-only site (stateful firewall) share no address
family, so no direct path exists; with the dual-stack salon's TURN relay
they connect through it (RFC 8656 REQUESTED-ADDRESS-FAMILY: each side
allocates a relayed address of the *peer's* family, which the peer probes
from its own socket), and forwarded traffic flows both ways intact."""
from __future__ import annotations

import re
import shutil
import subprocess
import time

import pytest

from natlab import SERVER_IPS6, V6, Lab, Nat
from natlab.salon import start_salon
from test_connect_lab import SERVER, _last
from test_ipv6_connect_lab import _run
from test_relay_lab import EARLY, TURN_ARGS
from test_turn_interop import need, uclient_totals

pytestmark = pytest.mark.nat

SERVER6 = "[%s]:3478" % SERVER_IPS6[0]


def test_ipv4_only_and_ipv6_only_sites_connect_through_the_relay(natlab: Lab) -> None:
    lab = natlab
    v4 = lab.add_site("a", Nat.SYMMETRIC_RANDOM).hosts[0]
    v6 = lab.add_site("b", None, v6=V6.FIREWALL).hosts[0]
    salon = start_salon(lab, ipv6=True)
    early = _run((v4, v6), (["--server", SERVER, "--no-ipv6"], ["--server", SERVER6]), "v4-v6-relay", 1000,
                 EARLY + ("punched",))
    for evs in early:
        conn = _last(evs, "connected")
        assert conn is not None and conn["path"] == "relay", evs
        assert _last(evs, "relay-allocated") is not None, evs
        print("IPv4-only to IPv6-only through the relay: connected %s" % {
            k: conn.get(k) for k in ("path", "family", "punch_ms", "rtt_ms", "strategy", "peer")})
    # each side allocated a relayed address of its peer's family (before,
    # both were IPv4 and the IPv4 side's permission for its IPv6 peer was
    # refused), and both were released; the traffic went through the one
    # the first side to learn its peer's relayed address probed (a race:
    # in the runs so far the IPv6-only side's IPv4 one)
    deadline = time.monotonic() + 5
    while True:
        salon.salon_log.seek(0)
        log = salon.salon_log.read().decode(errors="replace")
        ended = re.findall(r"TURN allocation for .* \((IPv\d)\) deleted: (\d+) bytes relayed", log)
        if len(ended) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert sorted(f for f, _ in ended) == ["IPv4", "IPv6"], log[-3000:]
    assert max(int(n) for _, n in ended) > 1000, ended
    print("allocations ended (family, bytes relayed): %s" % ended)
    relay_on = log.split("TURN relay on", 1)[1].splitlines()[0]
    assert SERVER_IPS6[0] in relay_on, relay_on


def test_an_ipv4_only_host_behind_nat_relays_through_an_ipv6_relayed_address(natlab: Lab) -> None:
    """coturn's turnutils_uclient on the IPv4-only host (random symmetric
    NAT) asks the salon for an IPv6 relayed address (``-x``) and relays
    through it, over channels, to turnutils_peer on an IPv6 address of the
    server's network (the salon's alternate IPv6, not a relay IP)."""
    need("turnutils_uclient")
    need("turnutils_peer")
    lab = natlab
    v4 = lab.add_site("a", Nat.SYMMETRIC_RANDOM).hosts[0]
    salon = start_salon(lab, ipv6=True, extra_args=TURN_ARGS)
    peer_ip = lab.server.ips6[1]
    peer = lab.server.spawn([shutil.which("turnutils_peer"), "-L", peer_ip, "-p", "7100"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        n = 200
        done = v4.run([shutil.which("turnutils_uclient"), "-x", "-c", "-W", TURN_ARGS[1], "-u", "lab", "-e", peer_ip,
                       "-r", "7100", "-p", "3478", "-n", str(n), "-l", "100", "-z", "2", SERVER.split(":")[0]],
                      timeout=60)
    finally:
        peer.terminate()
        peer.wait(10)
    text = done.stdout + done.stderr
    assert done.returncode == 0, text
    assert uclient_totals(text) == (n, n, 0), text
    deadline = time.monotonic() + 5
    while True:
        salon.salon_log.seek(0)
        log = salon.salon_log.read().decode(errors="replace")
        ended = re.findall(r"TURN allocation for .* \((IPv\d)\) deleted: (\d+) bytes relayed", log)
        if ended or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert ended and all(f == "IPv6" for f, _ in ended), log[-3000:]
    assert sum(int(b) for _, b in ended) >= 2 * n * 100, ended
