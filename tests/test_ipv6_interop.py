"""Interop over IPv6: coturn's turnutils_stunclient against the salon's
IPv6 sockets (on loopback, and RFC 5780 with the lab's second IPv6
address), and ``natsalon probe`` against coturn's ``turnserver`` listening
on IPv6 in the NAT lab."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from natlab import SERVER_IPS6, THIRD_IP6, V6, Lab
from natlab.salon import start_salon
from test_ipv6_lab import EXPECTED6  # tests/ is on sys.path

pytestmark = pytest.mark.interop
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


def need(tool: str) -> None:
    if shutil.which(tool) is None:
        msg = "%s is not installed (make test installs it)" % tool
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg)
        pytest.skip(msg)


def _free_dual_port() -> int:
    """A port free on 0.0.0.0 and :: (and the next one)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
            port = s.getsockname()[1]
        if port >= 65000:
            continue
        try:
            socks = []
            for af, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
                for p in (port, port + 1):
                    s = socket.socket(af, socket.SOCK_DGRAM)
                    socks.append(s)
                    if af == socket.AF_INET6:
                        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    s.bind((host, p))
            return port
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port pair")


def _answers(host: str, port: int) -> bool:
    af = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(af, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        try:
            s.sendto(b"\x00\x01\x00\x00\x21\x12\xa4\x42" + b"\x01" * 12, (host, port))
            return s.recvfrom(100)[0][:2] == b"\x01\x01"
        except OSError:
            return False


@pytest.fixture
def dual_salon(tmp_path):
    try:
        socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).close()
    except OSError:
        pytest.skip("no IPv6 here")
    port = _free_dual_port()
    log = open(tmp_path / "salon.log", "wb")
    proc = subprocess.Popen([TWISTD, "-n", "--pidfile=", "natsalon", "--interface", "0.0.0.0", "--interface", "::",
                             "--port", str(port), "--alt-port", str(port + 1)],
                            stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 20
        while not (_answers("::1", port) and _answers("127.0.0.1", port)):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError((tmp_path / "salon.log").read_text())
            time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_turnutils_stunclient_over_ipv6_and_ipv4_on_a_dual_stack_salon(dual_salon):
    need("turnutils_stunclient")
    for host, family in (("::1", r"IPv6\. "), ("127.0.0.1", "")):
        r = subprocess.run(["turnutils_stunclient", "-p", str(dual_salon), host],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        assert re.search(r"%sUDP reflexive addr: %s:\d+" % (family, re.escape(host)), r.stdout), r.stdout


@pytest.mark.nat
def test_turnutils_stunclient_rfc5780_over_ipv6_in_the_lab(natlab):
    need("turnutils_stunclient")
    start_salon(natlab, ipv6=True)
    r = natlab.third.run(["turnutils_stunclient", "-f", "-p", "3478", SERVER_IPS6[0]], timeout=30)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    ip1, ip2 = SERVER_IPS6
    # (its first, attribute-less request gets XOR-MAPPED-ADDRESS only, as over IPv4)
    assert re.search(r"IPv6\. UDP reflexive addr: %s:\d+" % re.escape(THIRD_IP6), out), out
    assert "RFC 5780 response 2" in out, out
    assert "IPv6. Response origin: : %s:3479" % ip2 in out and "IPv6. Other addr: : %s:3478" % ip1 in out, out


def start_coturn6(lab: Lab, tmp: str, ready_host) -> subprocess.Popen:
    ip1, ip2 = SERVER_IPS6
    argv = ["turnserver", "-n", "--stun-only", "--no-auth", "-m", "1",
            "--listening-ip", ip1, "--listening-ip", ip2, "--listening-port", "3478", "--alt-listening-port", "3479",
            "--no-tcp", "--no-tls", "--no-dtls", "--no-cli", "--log-file", "stdout", "--simple-log",
            "--db", tmp + "/turndb", "--pidfile", tmp + "/turnserver.pid"]
    proc = lab.server.spawn(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        p = ready_host.run([Lab.bin("natsalon"), "probe", "--server", "[%s]" % ip1, "--json", "--timeout", "0.5"])
        if p.returncode == 0 and json.loads(p.stdout)["server"]["other_address"]:
            return proc
        time.sleep(0.2)
    raise AssertionError("coturn did not come up on IPv6")


@pytest.mark.nat
def test_probe_against_coturn_on_ipv6_gives_the_same_classification(natlab):
    need("turnserver")
    natlab.enable_ipv6()
    sites = {v6: natlab.add_site("c%d" % i, None, v6=v6) for i, v6 in enumerate(V6)}
    with tempfile.TemporaryDirectory() as tmp:
        start_coturn6(natlab, tmp, sites[V6.OPEN].hosts[0])
        procs = [s.hosts[0].spawn([Lab.bin("natsalon"), "probe", "--server", "[%s]:3478" % SERVER_IPS6[0], "--json"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for s in sites.values()]
        for v6, p in zip(sites, procs):
            out, err = p.communicate(timeout=90)
            assert p.returncode == 0, err
            r = json.loads(out)
            nat, classic, mapping, filtering, alloc = EXPECTED6[v6]
            assert (r["nat"], r["classic"], r["mapping"], r["filtering"], r["port_allocation"]["kind"]) == (
                nat, classic, mapping, filtering, alloc), r
            assert r["family"] == 6 and r["server"]["software"].startswith("Coturn")
            assert r["server"]["untested"] == [] and r["server"]["other_address"] == "[%s]:3479" % SERVER_IPS6[1]
