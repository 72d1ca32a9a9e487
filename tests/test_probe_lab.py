"""``natsalon probe`` as the user runs it, in the NAT lab, against the real
``twistd -n natsalon`` (and coturn).  Probes of different sites run in
parallel to keep the file around a minute."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from typing import Dict, List, Sequence, Tuple

import pytest

from natlab import Lab, Nat
from natlab.salon import start_salon

pytestmark = pytest.mark.nat

SERVER = "203.0.113.10"

# behaviour -> classic, mapping, filtering, port allocation, nat
EIM, ADM, APDM = "endpoint-independent", "address-dependent", "address-and-port-dependent"
EXPECTED = {
    Nat.OPEN: ("open", EIM, EIM, "preserving", False),
    Nat.FULL_CONE: ("full-cone", EIM, EIM, "preserving", True),
    Nat.RESTRICTED_CONE: ("restricted-cone", EIM, ADM, "preserving", True),
    Nat.PORT_RESTRICTED_CONE: ("port-restricted-cone", EIM, APDM, "preserving", True),
    Nat.SYMMETRIC_RANDOM: ("symmetric", APDM, APDM, "random", True),
    Nat.SYMMETRIC_SEQUENTIAL: ("symmetric", APDM, APDM, "sequential", True),
    Nat.SYMMETRIC_UDP_FIREWALL: ("symmetric-udp-firewall", EIM, APDM, "preserving", False),
    Nat.UDP_BLOCKED: ("udp-blocked", "unknown", "unknown", "unknown", None),
}


def probe_all(jobs: Sequence[Tuple[object, Sequence[str]]], timeout: float = 60) -> List[dict]:
    """Run ``natsalon probe --json`` on each (host, extra args) at once."""
    procs = [host.spawn([Lab.bin("natsalon"), "probe", "--server", SERVER, "--json"] + list(extra),
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for host, extra in jobs]
    out = []
    for p, (host, extra) in zip(procs, jobs):
        stdout, stderr = p.communicate(timeout=timeout)
        assert p.returncode == 0, "probe on %s %s failed: %s" % (host, extra, stderr)
        assert stderr == "", stderr
        out.append(json.loads(stdout))
    return out


def check(report: dict, nat: Nat, where: str) -> None:
    classic, mapping, filtering, alloc, is_nat = EXPECTED[nat]
    got = (report["classic"], report["mapping"], report["filtering"], report["port_allocation"]["kind"],
           report["nat"])
    assert got == (classic, mapping, filtering, alloc, is_nat), "%s %s: %s" % (nat.name, where, report)
    if alloc == "sequential":
        assert report["port_allocation"]["step"] == 1, report
    if nat is not Nat.UDP_BLOCKED:
        assert report["mapped"] and report["local"]
        assert report["server"]["other_address"] == "203.0.113.11:3479"


def test_every_behaviour_with_and_without_loss_twice_in_a_row(natlab):
    start_salon(natlab)
    sites: Dict[Tuple[Nat, float], object] = {}
    for i, nat in enumerate(Nat):
        for j, loss in enumerate((0.0, 0.05)):
            sites[nat, loss] = natlab.add_site("s%d%d" % (i, j), nat, loss=loss)
    rounds = []
    for _ in range(2):  # the same hosts again: state left in the NATs must not fool the second run
        reports = probe_all([(site.hosts[0], ()) for site in sites.values()])
        rounds.append(dict(zip(sites, reports)))
    for n, reports in enumerate(rounds):
        for (nat, loss), report in reports.items():
            check(report, nat, "loss=%s run %d" % (loss, n + 1))
            assert report["server"]["inconsistencies"] == [] and report["server"]["untested"] == [], report
            # (speed is measured by bench/probe_bench.py, not asserted here)
    elapsed = {nat.name: rounds[0][nat, 0.0]["elapsed_ms"] for nat in Nat}
    print("elapsed_ms per behaviour (no loss):", elapsed)


def test_hairpin_and_lifetime(natlab):
    start_salon(natlab)
    hp = natlab.add_site("hp", Nat.PORT_RESTRICTED_CONE, hairpin=True, udp_timeout=3)
    nohp = natlab.add_site("nohp", Nat.PORT_RESTRICTED_CONE, hairpin=False)
    symhp = natlab.add_site("symhp", Nat.SYMMETRIC_SEQUENTIAL, hairpin=True)
    fc = natlab.add_site("fc", Nat.FULL_CONE, udp_timeout=3, loss=0.05)
    lifetime = ["--lifetime", "--lifetime-max", "6"]
    r_hp, r_nohp, r_sym, r_fc = probe_all([
        (hp.hosts[0], ["--hairpin"] + lifetime), (nohp.hosts[0], ["--hairpin"]),
        (symhp.hosts[0], ["--hairpin"]), (fc.hosts[0], lifetime)])
    assert r_hp["hairpinning"] is True
    assert r_nohp["hairpinning"] is False
    assert r_sym["hairpinning"] is True
    assert r_fc["hairpinning"] is None
    check(r_hp, Nat.PORT_RESTRICTED_CONE, "hairpin")
    check(r_sym, Nat.SYMMETRIC_SEQUENTIAL, "hairpin")
    for r in (r_hp, r_fc):
        # udp_timeout=3: alive after 2 s idle, gone by 4 s (3 s idle is on the edge)
        assert r["lifetime_s"] is not None and 2.0 <= r["lifetime_s"] < 4.0, r
        assert any("between" in n for n in r["notes"]), r
    assert r_nohp["lifetime_s"] is None


def test_one_ip_server_reports_unknowns(natlab):
    start_salon(natlab, two_ips=False)
    fc = natlab.add_site("fc", Nat.FULL_CONE)
    prc = natlab.add_site("prc", Nat.PORT_RESTRICTED_CONE)
    sym = natlab.add_site("sym", Nat.SYMMETRIC_RANDOM)
    r_fc, r_prc, r_sym = probe_all([(fc.hosts[0], ()), (prc.hosts[0], ()), (sym.hosts[0], ())])
    for r in (r_fc, r_prc, r_sym):
        assert r["server"]["other_address"] is None
        assert any("change-IP" in u for u in r["server"]["untested"]), r
    assert (r_fc["classic"], r_fc["mapping"], r_fc["filtering"]) == ("unknown", "unknown", "unknown")
    assert (r_prc["classic"], r_prc["mapping"], r_prc["filtering"]) == ("unknown", "unknown", APDM)
    assert (r_sym["classic"], r_sym["mapping"], r_sym["filtering"]) == ("symmetric", APDM, APDM)
    assert r_fc["port_allocation"]["kind"] == "preserving"


def test_unreachable_server_is_a_one_line_error(natlab):
    site = natlab.add_site("a", Nat.FULL_CONE)  # no server running: ICMP port unreachable
    p = site.hosts[0].run([Lab.bin("natsalon"), "probe", "--server", SERVER], timeout=30)
    assert p.returncode == 1
    assert p.stdout == ""
    assert p.stderr.startswith("natsalon probe: error: nothing listens") and p.stderr.count("\n") == 1


def start_coturn(lab: Lab, tmp: str) -> subprocess.Popen:
    argv = ["turnserver", "-n", "--stun-only", "--no-auth", "-m", "1",
            "--listening-ip", lab.server.ips[0], "--listening-ip", lab.server.ips[1],
            "--listening-port", "3478", "--alt-listening-port", "3479",
            "--no-tcp", "--no-tls", "--no-dtls", "--no-cli", "--log-file", "stdout", "--simple-log",
            "--db", tmp + "/turndb", "--pidfile", tmp + "/turnserver.pid"]
    proc = lab.server.spawn(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    probe = lab.add_site("cready", Nat.OPEN).hosts[0]
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        p = probe.run([Lab.bin("natsalon"), "probe", "--server", SERVER, "--json", "--timeout", "0.5"])
        if p.returncode == 0 and json.loads(p.stdout)["classic"] == "open":
            return proc
        time.sleep(0.2)
    raise AssertionError("coturn did not come up")


@pytest.mark.interop
@pytest.mark.skipif(shutil.which("turnserver") is None, reason="coturn (turnserver) not installed")
def test_coturn_gives_the_same_classification(natlab):
    with tempfile.TemporaryDirectory() as tmp:
        start_coturn(natlab, tmp)
        sites = {nat: natlab.add_site("c%d" % i, nat) for i, nat in enumerate(Nat)}
        reports = probe_all([(s.hosts[0], ()) for s in sites.values()])
        for nat, report in zip(sites, reports):
            check(report, nat, "against coturn")
            if nat is not Nat.UDP_BLOCKED:
                assert report["server"]["software"].startswith("Coturn")
                assert report["server"]["untested"] == []
