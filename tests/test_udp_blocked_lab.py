"""Issue 12, "UDP blocked", in the NAT lab: a site whose router drops all
UDP (Nat.UDP_BLOCKED) reaches the salon over TCP, or over TLS (a throwaway
CA made here; the salon's certificate names its lab address), joins and
allocates its relay over that stream, and connects to every other site
type through the salon's TURN relay (the peer reaches the relayed address
over UDP; a UDP-blocked peer relays too, relay to relay).  Forwarded
traffic flows: 3,000 datagrams each way, SHA-256 checked."""
from __future__ import annotations

import subprocess

import pytest

from natlab import Lab, Nat
from natlab.salon import start_salon
from test_connect_lab import SECRET, SERVER, _events, _exchange, _last, _public, _run_pairs
from test_relay_lab import TURN_ARGS
from tlscerts import make_ca, make_server_cert

B = Nat.UDP_BLOCKED
#: the rows: a UDP-blocked site against every site type, itself included
PEERS = [Nat.OPEN, Nat.FULL_CONE, Nat.RESTRICTED_CONE, Nat.PORT_RESTRICTED_CONE, Nat.SYMMETRIC_UDP_FIREWALL,
         Nat.SYMMETRIC_RANDOM, Nat.SYMMETRIC_SEQUENTIAL, B]
SALON_IP = SERVER.split(":")[0]


def _salon_tls(tmp_path):
    """(salon arguments, client arguments) for TURN over TLS with a CA of our own."""
    ca = make_ca(tmp_path)
    cert, key = make_server_cert(tmp_path, ca, SALON_IP)
    return (["--tls-cert", str(cert), "--tls-key", str(key)],
            ["--salon-tls", SALON_IP, "--salon-ca", str(ca.cert_path)])


def _jobs(lab: Lab, tag: str, **site_kw):
    """A pair per row, each with sites of its own."""
    jobs = []
    for i, peer in enumerate(PEERS):
        ha = lab.add_site("%sb%d" % (tag, i), B, **site_kw).hosts[0]
        hb = lab.add_site("%sp%d" % (tag, i), peer, **site_kw).hosts[0]
        jobs.append(("%s-%s" % (B.name, peer.name), ha, hb))
    return jobs


def _check(results, transport: str):
    """Problems: a side that did not connect over the relay, or a blocked
    side whose connected event does not say ``transport``."""
    problems, summary = [], []
    for label, sides in sorted(results.items()):
        for side, (rc, events, err) in zip(("blocked", "peer"), sides):
            conn = _last(events, "connected")
            summary.append("%s %s: rc=%s %s" % (label, side, rc, _public(conn or _last(events, "failed"))))
            both_blocked = label.endswith(B.name + "-" + B.name)
            want = transport if side == "blocked" or both_blocked else "udp"
            if rc != 0 or conn is None:
                problems.append("%s %s did not connect: rc=%s %s %s" % (label, side, rc, events, err[-800:]))
            elif conn["path"] != "relay" or conn.get("transport") != want:
                problems.append("%s %s connected on path %s over %s, not relay over %s: %s" % (
                    label, side, conn["path"], conn.get("transport"), want, events))
    print("\n".join(summary))
    return problems


@pytest.mark.nat
@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_udp_blocked_site_connects_to_every_type(natlab: Lab, tmp_path, transport: str) -> None:
    lab = natlab
    jobs = _jobs(lab, transport[:2])
    salon_args, client_args = _salon_tls(tmp_path) if transport == "tls" else ([], [])
    start_salon(lab, extra_args=TURN_ARGS + salon_args)
    results, took = _run_pairs(lab, jobs, 30.0, client_args)
    print("UDP-blocked pairs over %s took %.1fs" % (transport, took))
    problems = _check(results, transport)
    assert not problems, "\n".join(problems)


@pytest.mark.nat
def test_udp_blocked_site_connects_to_every_type_impaired(natlab: Lab) -> None:
    """The same rows over TCP with 50 ms delay and 5% loss at every site
    (TCP retransmits the blocked side's leg; the peer's UDP leg and the
    probes retransmit as usual)."""
    lab = natlab
    jobs = _jobs(lab, "im", delay_ms=50, loss=0.05)
    start_salon(lab, extra_args=TURN_ARGS)
    results, took = _run_pairs(lab, jobs, 40.0)
    print("impaired UDP-blocked pairs took %.1fs" % took)
    problems = _check(results, "tcp")
    assert not problems, "\n".join(problems)


@pytest.mark.nat
@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_udp_blocked_forwarding(natlab: Lab, tmp_path, transport: str) -> None:
    """3,000 checked datagrams each way between a UDP-blocked site and a
    port-restricted one, through the relay, over TCP or TLS to the salon."""
    lab = natlab
    ha = lab.add_site("blk", B).hosts[0]
    hb = lab.add_site("prc", Nat.PORT_RESTRICTED_CONE).hosts[0]
    salon_args, client_args = _salon_tls(tmp_path) if transport == "tls" else ([], [])
    start_salon(lab, extra_args=TURN_ARGS + salon_args)
    count = 3000
    fwd = [h.spawn([Lab.bin("natsalon"), "connect", "--server", SERVER, "--room", "blocked-fwd", "--secret", SECRET,
                    "--json", "--timeout", "30", "--forward", "7000", "--deliver", "127.0.0.1:7001"] + client_args,
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for h in (ha, hb)]
    try:
        early = []
        for p in fwd:
            evs = []
            while not evs or evs[-1]["event"] not in ("forwarding", "failed", "eof"):
                line = p.stdout.readline()
                evs.append(_json(line) if line else {"event": "eof"})
            early.append(evs)
        for evs, want in zip(early, (transport, "udp")):
            conn = _last(evs, "connected")
            assert conn is not None and conn["path"] == "relay" and conn["transport"] == want, (
                evs, [p.stderr.read() if p.poll() is not None else "" for p in fwd])
        results = _exchange((ha, hb), count)
    finally:
        for p in fwd:
            p.terminate()
    closed = [_events(p, 10)[1] for p in fwd]
    assert results == [{"received": count, "bad": 0}] * 2, (results, early, closed)
    for events in closed:
        c = _last(events, "closed")
        assert c is not None and c["to_peer"] == count and c["from_peer"] == count and c["rejected"] == 0, events


def _json(line: str) -> dict:
    import json

    return json.loads(line)


@pytest.mark.nat
def test_udp_blocked_site_refuses_a_salon_certificate_it_does_not_trust(natlab: Lab, tmp_path) -> None:
    """The salon's certificate is signed by a CA the client was not told to
    trust: no connection, and the failure says why."""
    lab = natlab
    ha = lab.add_site("blk", B).hosts[0]
    salon_args, _ = _salon_tls(tmp_path)
    start_salon(lab, extra_args=TURN_ARGS + salon_args)
    other = make_ca(tmp_path, "not-the-salons-ca")
    proc = ha.spawn([Lab.bin("natsalon"), "connect", "--server", SERVER, "--room", "untrusted", "--secret", SECRET,
                     "--json", "--timeout", "30", "--salon-tls", SALON_IP, "--salon-ca", str(other.cert_path)],
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rc, events, err = _events(proc, 45)
    failed = _last(events, "failed")
    assert rc == 1 and failed is not None and _last(events, "connected") is None, (rc, events, err)
    assert failed["reason"].startswith("SalonUnreachable: no answer from the salon at %s over UDP, nor over TLS: "
                                       "TLS handshake failed: the salon's certificate is not trusted" % SERVER), failed
