"""Issue 15, ``connect`` over both families, in the NAT lab (salon without
TURN, so a connection is direct or nothing):

- random symmetric IPv4 NATs on both sides (no direct IPv4 path) behind
  IPv6 stateful firewalls: the pair connects directly over IPv6, and
  3,000 forwarded datagrams each way arrive intact;
- with the salon's TURN relay on too, that pair still takes the direct
  IPv6 path, not the relay;
- when both families can punch through, IPv6 is chosen, by both sides
  (with and without encryption, forwarded data checked);
- a dual-stack site and an IPv6-only site connect (over IPv6, the only
  family they share), and forwarded traffic flows;
- a connection over IPv6 whose IPv6 goes down moves to IPv4 at the
  re-punch, and forwarded traffic flows again."""
from __future__ import annotations

import json
import subprocess
from typing import List, Optional, Sequence

import pytest

from natlab import SERVER_IPS6, V6, Lab, Nat
from natlab.salon import start_salon
from test_connect_lab import SECRET, SERVER, _events, _exchange, _last, _next_event
from test_relay_lab import TURN_ARGS

pytestmark = pytest.mark.nat

SERVER6 = "[%s]:3478" % SERVER_IPS6[0]
EARLY = ("joined", "waiting", "introduced", "punching", "strategy", "punched", "connected", "moved")


def _forwarders(hosts, servers: Sequence[Sequence[str]], room: str) -> List[subprocess.Popen]:
    return [h.spawn([Lab.bin("natsalon"), "connect"] + list(args) + [
        "--room", room, "--secret", SECRET, "--json", "--timeout", "20", "--forward", "7000",
        "--deliver", "127.0.0.1:7001"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for h, args in zip(hosts, servers)]


def _until_forwarding(procs, allowed: Sequence[str] = EARLY) -> List[List[dict]]:
    early = []
    for p in procs:
        evs: List[dict] = []
        for _ in range(20):
            line = p.stdout.readline()
            assert line, (evs, p.stderr.read() if p.poll() is not None else "")
            ev = json.loads(line)
            evs.append(ev)
            if ev["event"] == "forwarding":
                break
            assert ev["event"] in allowed, evs
        early.append(evs)
    return early


def _run(hosts, servers, room: str, count: int, allowed: Sequence[str] = EARLY, closing: Optional[list] = None
         ) -> List[List[dict]]:
    """Both forwarders until forwarding, ``count`` datagrams each way,
    then stopped; the early events of each (after checking the exchange
    and the closing counts); ``closing`` gets the later events of each."""
    procs = _forwarders(hosts, servers, room)
    try:
        early = _until_forwarding(procs, allowed)
        results = _exchange(hosts, count)
    finally:
        for p in procs:
            p.terminate()
    closed = [_events(p, 10)[1] for p in procs]
    if closing is not None:
        closing.extend(closed)
    assert results == [{"received": count, "bad": 0}] * 2, (results, early, closed)
    for events in closed:
        c = _last(events, "closed")
        assert c is not None and c["to_peer"] == count and c["from_peer"] == count and c["rejected"] == 0, events
    return early


def _direct_v6(early, hosts) -> None:
    for evs, peer in zip(early, reversed(hosts)):
        conn = _path_of(evs)
        assert conn is not None and conn["path"] == "direct" and conn["family"] == 6, evs
        assert conn["peer"].startswith("[%s]:" % peer.ip6), (conn, peer.ip6)


def test_symmetric_ipv4_pair_connects_directly_over_ipv6(natlab: Lab) -> None:
    lab = natlab
    ha = lab.add_site("a", Nat.SYMMETRIC_RANDOM, v6=V6.FIREWALL).hosts[0]
    hb = lab.add_site("b", Nat.SYMMETRIC_RANDOM, v6=V6.FIREWALL).hosts[0]
    # no relay (on by default): the control below is about direct paths
    start_salon(lab, ipv6=True, extra_args=["--no-turn"])
    both = ["--server", SERVER, "--server6", SERVER6]
    early = _run((ha, hb), (both, both), "v6-sym", 3000)
    _direct_v6(early, (ha, hb))
    for evs in early:
        print("symmetric IPv4, IPv6 firewalls: connected %s" % {k: _last(evs, "connected")[k] for k in (
            "path", "family", "punch_ms", "rtt_ms", "strategy")})
    # the control: the same pair over IPv4 alone has no path
    procs = [h.spawn([Lab.bin("natsalon"), "connect", "--server", SERVER, "--no-ipv6", "--room", "v4-sym",
                      "--secret", SECRET, "--json", "--timeout", "8"], stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE, text=True) for h in (ha, hb)]
    for rc, events, err in [_events(p, 30) for p in procs]:
        assert rc == 1 and _last(events, "connected") is None, (rc, events, err)
        # no path: the strategy says so (PunchFailed), or, when a NAT summary
        # came late and the pair punched plainly, the 8 s run out while punching
        reason = _last(events, "failed")["reason"]
        assert reason.startswith(("PunchFailed", "ConnectTimeout: timed out after 8s while punching")), events


def _path_of(events) -> Optional[dict]:
    """A side's last word on its path: its ``connected`` event, or its
    ``moved`` one if it followed the peer's nomination since."""
    said = [e for e in events if e["event"] in ("connected", "moved")]
    return said[-1] if said else None


@pytest.mark.parametrize("mode", [[], ["--no-encrypt"]], ids=["encrypted", "no-encrypt"])
def test_when_both_families_can_punch_through_ipv6_is_chosen(natlab: Lab, mode) -> None:
    """Cone NATs and IPv6 firewalls: either family would do, their RTTs
    are within the tie (no delay line): IPv6 is chosen, and both sides
    end on it (the controlling one nominates, the other follows).  Without encryption a
    frame counts only from a pair the receiver verified: the checked
    data both ways, none rejected, says the sides agree."""
    lab = natlab
    ha = lab.add_site("a", Nat.PORT_RESTRICTED_CONE, v6=V6.FIREWALL).hosts[0]
    hb = lab.add_site("b", Nat.FULL_CONE, v6=V6.OPEN).hosts[0]
    start_salon(lab, ipv6=True)
    both = ["--server", SERVER, "--server6", SERVER6, "--no-lan"] + mode
    closing: list = []
    early = _run((ha, hb), (both, both), "v6-tie", 500, closing=closing)
    everything = [e + c for e, c in zip(early, closing)]
    assert _path_of(everything[0])["family"] == _path_of(everything[1])["family"], everything
    _direct_v6(everything, (ha, hb))


def test_direct_ipv6_is_preferred_over_the_relay(natlab: Lab) -> None:
    lab = natlab
    ha = lab.add_site("a", Nat.SYMMETRIC_RANDOM, v6=V6.FIREWALL).hosts[0]
    hb = lab.add_site("b", Nat.SYMMETRIC_RANDOM, v6=V6.FIREWALL).hosts[0]
    start_salon(lab, ipv6=True, extra_args=TURN_ARGS)
    procs = [h.spawn([Lab.bin("natsalon"), "connect", "--server", SERVER, "--server6", SERVER6, "--room", "v6-turn",
                      "--secret", SECRET, "--json", "--timeout", "20"], stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE, text=True) for h in (ha, hb)]
    ended = [_events(p, 40) for p in procs]
    for (rc, events, err), peer in zip(ended, (hb, ha)):
        conn = _last(events, "connected")
        assert rc == 0 and conn is not None, (rc, events, err)
        assert conn["path"] == "direct" and conn["family"] == 6 and conn["peer"].startswith("[%s]:" % peer.ip6), events


def test_dual_stack_and_ipv6_only_sites_connect(natlab: Lab) -> None:
    lab = natlab
    dual = lab.add_site("d", Nat.PORT_RESTRICTED_CONE, v6=V6.FIREWALL).hosts[0]
    only = lab.add_site("s", None, v6=V6.NAT66).hosts[0]
    start_salon(lab, ipv6=True)
    early = _run((dual, only), (["--server", SERVER, "--server6", SERVER6], ["--server", SERVER6]), "v6-only",
                 1000)
    conn = [_last(evs, "connected") for evs in early]
    assert all(c is not None and c["path"] == "direct" and c["family"] == 6 for c in conn), early
    # the dual-stack host sees the IPv6-only one behind its NAT66 (the router's address)
    assert not conn[0]["peer"].startswith("[%s]:" % only.ip6), conn
    assert conn[1]["peer"].startswith("[%s]:" % dual.ip6), conn


def test_a_connection_moves_to_ipv4_at_the_repunch_when_ipv6_goes_down(natlab: Lab) -> None:
    lab = natlab
    site_a = lab.add_site("a", Nat.PORT_RESTRICTED_CONE, v6=V6.FIREWALL)
    ha, hb = site_a.hosts[0], lab.add_site("b", Nat.FULL_CONE, v6=V6.OPEN).hosts[0]
    start_salon(lab, ipv6=True)
    args = ["--server", SERVER, "--server6", SERVER6, "--no-lan", "--keepalive", "1", "--dead-after", "2"]
    procs = _forwarders((ha, hb), (args, args), "v6-move")
    try:
        first = [_next_event(p, "connected") for p in procs]
        assert all(c["event"] == "connected" and c["family"] == 6 for c in first), first
        for p in procs:
            assert _next_event(p, "forwarding")["event"] == "forwarding"
        site_a.cut_v6()
        again = [_next_event(p, "connected") for p in procs]
        assert all(c["event"] == "connected" and c.get("repunched") and c["family"] == 4 for c in again), again
        assert again[0]["peer"].split(":")[0] == lab.sites["b"].public_ip, again
        results = _exchange((ha, hb), 300)
    finally:
        for p in procs:
            p.terminate()
    for p in procs:
        _events(p, 10)
    assert results == [{"received": 300, "bad": 0}] * 2, results
