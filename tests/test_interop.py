"""Independent STUN clients against the real `twistd -n natsalon` daemon:
coturn's turnutils_stunclient (RFC 5389/5780) and pystun3 (RFC 3489), on
loopback and from behind the NAT lab's real NATs."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time

import pytest

from natlab import Lab, Nat
from natlab.salon import start_salon

pytestmark = pytest.mark.interop
BIN = os.path.dirname(sys.executable)
PYSTUN = os.path.join(BIN, "pystun3")


def need(tool):
    if shutil.which(tool) is None and not os.path.exists(tool):
        msg = "%s is not installed (make test installs it)" % tool
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg)
        pytest.skip(msg)


def free_port_pair():
    for _ in range(50):
        s1 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s1.bind(("127.0.0.1", 0))
        port = s1.getsockname()[1]
        s1.close()
        if port < 65000:
            ok = True
            for ip in ("127.0.0.1", "127.0.0.2"):
                for p in (port, port + 1):
                    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    try:
                        s.bind((ip, p))
                    except OSError:
                        ok = False
                    finally:
                        s.close()
            if ok:
                return port, port + 1
    raise RuntimeError("no free port pair")


@pytest.fixture
def loopback_salon(tmp_path):
    port, alt = free_port_pair()
    log = open(tmp_path / "salon.log", "wb")
    proc = subprocess.Popen([os.path.join(BIN, "twistd"), "-n", "--pidfile=", "natsalon",
                             "--interface", "127.0.0.1", "--alt-ip", "127.0.0.2",
                             "--port", str(port), "--alt-port", str(alt)],
                            stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(0.2)
            try:
                s.sendto(b"\x00\x01\x00\x00\x21\x12\xa4\x42" + b"\x01" * 12, ("127.0.0.1", port))
                if s.recvfrom(100)[0][:2] == b"\x01\x01":
                    break
            except OSError:
                time.sleep(0.1)
            finally:
                s.close()
        else:
            raise RuntimeError((tmp_path / "salon.log").read_text())
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_turnutils_stunclient_rfc5780_on_loopback(loopback_salon):
    need("turnutils_stunclient")
    r = subprocess.run(["turnutils_stunclient", "-f", "-p", str(loopback_salon), "127.0.0.1"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert re.search(r"UDP reflexive addr: 127\.0\.0\.1:\d+", r.stdout)
    assert "Response origin: : 127.0.0.2:%d" % (loopback_salon + 1) in r.stdout
    assert "Other addr: : 127.0.0.1:%d" % loopback_salon in r.stdout
    assert "RFC 5780 response 2" in r.stdout  # the PADDING test was answered too


def test_pystun3_classic_client_on_loopback(loopback_salon):
    need(PYSTUN)
    r = subprocess.run([PYSTUN, "-H", "127.0.0.1", "-P", str(loopback_salon), "-i", "127.0.0.1", "-p", "0"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "NAT Type: Open Internet" in r.stdout
    assert "External IP: 127.0.0.1" in r.stdout


PYSTUN_TYPES = {
    Nat.OPEN: "Open Internet",
    Nat.FULL_CONE: "Full Cone",
    Nat.RESTRICTED_CONE: "Restric NAT",
    Nat.PORT_RESTRICTED_CONE: "Restric Port NAT",
    Nat.SYMMETRIC_RANDOM: "Symmetric NAT",
    Nat.SYMMETRIC_UDP_FIREWALL: "Symmetric UDP Firewall",
    Nat.UDP_BLOCKED: "Blocked",
}


@pytest.mark.nat
def test_independent_clients_behind_real_nats(natlab):
    need(PYSTUN)
    need("turnutils_stunclient")
    start_salon(natlab)
    sites = {nat: natlab.add_site("s%d" % i, nat) for i, nat in enumerate(PYSTUN_TYPES)}
    # -i: pystun3 decides "no NAT" by comparing the mapped IP with its bind address
    procs = {nat: site.hosts[0].spawn([PYSTUN, "-H", "203.0.113.10", "-P", "3478", "-p", "0", "-i", site.hosts[0].ip],
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for nat, site in sites.items()}
    results = {nat: p.communicate(timeout=120)[0] for nat, p in procs.items()}
    for nat, want in PYSTUN_TYPES.items():
        assert "NAT Type: %s\n" % want in results[nat], (nat, results[nat])
        if nat in (Nat.FULL_CONE, Nat.RESTRICTED_CONE, Nat.SYMMETRIC_RANDOM):
            # (pystun3 forgets the address after its last test on port-restricted NATs)
            assert "External IP: %s\n" % sites[nat].public_ip in results[nat], results[nat]
        elif nat == Nat.OPEN:
            assert "External IP: %s\n" % sites[nat].hosts[0].ip in results[nat], results[nat]
    # RFC 5780 client from a public host. (Behind a NAT turnutils_stunclient
    # blocks for ever: its RESPONSE-PORT test targets a port the NAT has no
    # mapping for, and it has no receive timeout.)
    r = natlab.third.run(["turnutils_stunclient", "-f", "-p", "3478", "203.0.113.10"],
                         capture_output=True, text=True, timeout=30)
    assert "UDP reflexive addr: 198.51.100.20:" in r.stdout, r.stdout
    assert "Response origin: : 203.0.113.11:3479" in r.stdout
    assert "Other addr: : 203.0.113.10:3478" in r.stdout
    assert "RFC 5780 response 2" in r.stdout


@pytest.mark.nat
def test_turnutils_natdiscovery_with_full_plain_answers(natlab):
    """turnutils_natdiscovery's first request carries no attribute, so it
    needs --full-plain-answers to learn OTHER-ADDRESS from natsalon."""
    need("turnutils_natdiscovery")
    start_salon(natlab, ["--full-plain-answers"])
    site = natlab.add_site("pr", Nat.PORT_RESTRICTED_CONE)
    r = site.hosts[0].run(["turnutils_natdiscovery", "-m", "-f", "-p", "3478", "203.0.113.10"],
                          capture_output=True, text=True, timeout=60)
    out = r.stdout
    assert "NAT with Endpoint Independent Mapping" in out, out
    assert "NAT with Address and Port Dependent Filtering" in out, out
