"""The NAT lab's IPv6 sites against the real dual-stack salon: ``natsalon
probe`` classifies every IPv6 site type (open, stateful firewall, NAT66), on
dual-stack and IPv6-only sites, with and without the lab's loss and delay
line; a dual-stack site's IPv4 classification is unchanged; the lab uses
the documentation prefixes only and its loss drops IPv6 too."""

from __future__ import annotations

import ipaddress
import json
import subprocess
from typing import List, Sequence, Tuple

import pytest

from natlab import SERVER_IPS6, V6, Lab, Nat
from natlab.salon import start_salon
from test_probe_lab import check as check_v4  # tests/ is on sys.path

pytestmark = pytest.mark.nat

SERVER6 = "[%s]:3478" % SERVER_IPS6[0]
EIM, APDM = "endpoint-independent", "address-and-port-dependent"
# IPv6 behaviour -> nat, classic, mapping, filtering, port allocation
EXPECTED6 = {
    V6.OPEN: (False, "open", EIM, EIM, "preserving"),
    V6.FIREWALL: (False, "symmetric-udp-firewall", EIM, APDM, "preserving"),
    V6.NAT66: (True, "port-restricted-cone", EIM, APDM, "preserving"),
}
# name -> (IPv4 behaviour or None: IPv6-only, IPv6 behaviour, loss, one-way delay ms)
SITES = {
    "o4": (Nat.FULL_CONE, V6.OPEN, 0.0, 0),
    "f4": (Nat.SYMMETRIC_RANDOM, V6.FIREWALL, 0.0, 0),
    "n4": (Nat.PORT_RESTRICTED_CONE, V6.NAT66, 0.0, 0),
    "v6f": (None, V6.FIREWALL, 0.0, 0),
    "v6n": (None, V6.NAT66, 0.0, 0),
    "ol": (Nat.SYMMETRIC_SEQUENTIAL, V6.OPEN, 0.05, 0),
    "fl": (Nat.RESTRICTED_CONE, V6.FIREWALL, 0.05, 0),
    "nl": (Nat.OPEN, V6.NAT66, 0.05, 0),
    "v6l": (None, V6.FIREWALL, 0.05, 0),
    "dl": (Nat.SYMMETRIC_UDP_FIREWALL, V6.FIREWALL, 0.05, 10),
}

DOC_V4 = [ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "10.0.0.0/8")]
DOC_V6 = ipaddress.ip_network("2001:db8::/32")


def probe_all(jobs: Sequence[Tuple[object, Sequence[str]]], timeout: float = 90) -> List[dict]:
    """``natsalon probe --json`` on each (host, args) at once."""
    procs = [host.spawn([Lab.bin("natsalon"), "probe", "--json"] + list(args), stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE, text=True) for host, args in jobs]
    out = []
    for p, (host, args) in zip(procs, jobs):
        stdout, stderr = p.communicate(timeout=timeout)
        assert p.returncode == 0 and stderr == "", "probe on %s %s: %s" % (host, args, stderr)
        out.append(json.loads(stdout))
    return out


def check_v6(report: dict, v6: V6, host, site, where: str) -> None:
    nat, classic, mapping, filtering, alloc = EXPECTED6[v6]
    got = (report["nat"], report["classic"], report["mapping"], report["filtering"],
           report["port_allocation"]["kind"])
    assert got == (nat, classic, mapping, filtering, alloc), "%s %s: %s" % (v6.name, where, report)
    assert report["family"] == 6 and report["temporary_address"] is False, report
    mapped, local = report["mapped"], report["local"]
    assert local.startswith("[%s]:" % host.ip6), report
    assert mapped.startswith("[%s]:" % (site.public_ip6 if v6 is V6.NAT66 else host.ip6)), report
    assert report["server"]["other_address"] == "[%s]:3479" % SERVER_IPS6[1]
    assert report["server"]["inconsistencies"] == [] and report["server"]["untested"] == [], report


def test_probe_classifies_every_ipv6_site_type_with_and_without_loss(natlab):
    sites = {name: natlab.add_site(name, nat, v6=v6, loss=loss, delay_ms=delay)
             for name, (nat, v6, loss, delay) in SITES.items()}
    start_salon(natlab, ipv6=True)
    jobs = [(site.hosts[0], ("--server", SERVER6)) for site in sites.values()]
    dual = [name for name, (nat, _, _, _) in SITES.items() if nat is not None]
    jobs += [(sites[name].hosts[0], ("--server", "203.0.113.10")) for name in dual]
    reports = probe_all(jobs)
    for (name, site), report in zip(sites.items(), reports):
        nat, v6, loss, delay = SITES[name]
        check_v6(report, v6, site.hosts[0], site, "site %s loss=%s delay=%s" % (name, loss, delay))
    for name, report in zip(dual, reports[len(sites):]):
        check_v4(report, SITES[name][0], "dual-stack site %s" % name)
        assert report["family"] == 4


def test_ipv6_only_sites_have_no_ipv4_and_the_lab_uses_documentation_prefixes(natlab):
    only = natlab.add_site("six", None, v6=V6.FIREWALL)
    dual = natlab.add_site("two", Nat.PORT_RESTRICTED_CONE, v6=V6.NAT66)
    plain = natlab.add_site("four", Nat.FULL_CONE)
    assert only.public_ip is None and only.hosts[0].ip == only.hosts[0].ip6
    assert plain.v6 is None and plain.hosts[0].ips6 == ()
    seen = set()
    for host in [natlab.server, natlab.third] + [h for s in (only, dual, plain) for h in [s.router] + s.hosts]:
        links = json.loads(host.run(["ip", "-j", "addr"], check=True).stdout)
        addrs = [ipaddress.ip_address(a["local"]) for link in links for a in link.get("addr_info", [])]
        for a in addrs:
            if a.is_loopback or a.is_link_local:
                continue
            nets = DOC_V4 if a.version == 4 else [DOC_V6]
            assert any(a in n for n in nets), "%s has %s" % (host, a)
            seen.add((host.name, a.version))
        if host in only.hosts:
            assert not any(a.version == 4 and not a.is_loopback for a in addrs), addrs
        if host in plain.hosts:
            assert not any(a.version == 6 and not (a.is_loopback or a.is_link_local) for a in addrs), addrs
    assert {("server", 6), ("server", 4), ("six1", 6), ("two1", 4), ("two1", 6), ("four1", 4)} <= seen
    assert ("six1", 4) not in seen and ("four1", 6) not in seen


_SINK = r"""
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind(("::", int(sys.argv[1])))
print("ready", flush=True)
s.settimeout(3.0)
n = 0
try:
    while True:
        s.recv(2048)
        n += 1
except socket.timeout:
    pass
print(n, flush=True)
"""

_SEND = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
for i in range(int(sys.argv[3])):
    s.sendto(b"x" * 32, (sys.argv[1], int(sys.argv[2])))
    time.sleep(0.002)
"""


def test_the_lab_loss_drops_ipv6_udp(natlab):
    site = natlab.add_site("lossy", None, v6=V6.OPEN, loss=0.2)
    sink = natlab.server.python(_SINK, "9999", spawn=True, stdout=subprocess.PIPE, text=True)
    assert sink.stdout.readline().strip() == "ready"
    sent = 500
    site.hosts[0].python(_SEND, SERVER_IPS6[0], "9999", str(sent), check=True)
    received = int(sink.stdout.readline())
    # 20 % loss on the way out: 400 expected; far outside [300, 470] means no (or other) loss
    assert 300 <= received <= 470, received
