"""Self-test of the NAT lab (natlab/): every NAT behaviour is checked with the
lab's own UDP probe (natlab/udpprobe.py), never with natsalon's code, so a lab
bug cannot pass for a product bug."""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import textwrap
import time

import pytest

from natlab import Lab, Nat, list_netns
from natlab.lab import PREFIX, SEQ_BASE, SEQ_SPAN, _pid_alive

S1 = ("203.0.113.10", 3478)   # server, first address (echo)
S2 = ("203.0.113.11", 3478)   # server, other address
S3 = ("203.0.113.10", 3479)   # server, same address, other port
T = ("198.51.100.20", 4000)   # third party
WINDOW = 0.6                  # how long we wait to be sure a packet is NOT coming

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# nat -> (endpoint-independent mapping?, from other port, from other IP, from third, unsolicited)
FILTERING = {
    Nat.OPEN: (True, True, True, True, True),
    Nat.FULL_CONE: (True, True, True, True, False),
    Nat.RESTRICTED_CONE: (True, True, False, False, False),
    Nat.PORT_RESTRICTED_CONE: (True, False, False, False, False),
    Nat.SYMMETRIC_RANDOM: (False, False, False, False, False),
    Nat.SYMMETRIC_SEQUENTIAL: (False, False, False, False, False),
    Nat.SYMMETRIC_UDP_FIREWALL: (True, False, False, False, False),
}


def lab_namespaces() -> list:
    return [ns for ns in list_netns() if ns.startswith(PREFIX)]


def datas(msgs) -> set:
    return {m["data"] for m in msgs}


def servers(lab: Lab):
    sp, tp = lab.server.probe(), lab.third.probe()
    s1, s2, s3 = sp.bind(*S1), sp.bind(*S2), sp.bind(*S3)
    s1.echo()
    t = tp.bind(*T)
    return s1, s2, s3, t


@pytest.mark.nat
@pytest.mark.parametrize("nat", list(Nat), ids=lambda n: n.name)
def test_behaviour(natlab: Lab, nat: Nat) -> None:
    site = natlab.add_site("a", nat)
    host = site.hosts[0]
    s1, s2, s3, t = servers(natlab)
    c = host.probe().bind("0.0.0.0", 5000)
    ext_ip = host.ip if not nat.translates else site.public_ip
    if nat.translates:
        assert host.ip.startswith("10.1.0.")
    else:
        assert host.ip.startswith("198.51.100.") and host.ip != site.public_ip

    # unsolicited packet to the (future) mapping, before the host sent anything
    t.send((ext_ip, 5000), "unsolicited")
    early = datas(c.recv(0.3, max=0))

    m1 = c.mapped(S1, timeout=WINDOW if nat is Nat.UDP_BLOCKED else 2.0)
    if nat is Nat.UDP_BLOCKED:
        assert m1 is None
        assert s1.count() == 0, "UDP crossed a UDP-blocking router"
        assert early == set()
        return
    assert m1 is not None, "no reply from the server"
    assert m1[0] == ext_ip
    eim, from_port, from_ip, from_third, unsolicited = FILTERING[nat]
    assert ("unsolicited" in early) == unsolicited

    # filtering: replies from the other port, the other IP, a third party
    s3.send(m1, "from-port")
    s2.send(m1, "from-ip")
    t.send(m1, "from-third")
    msgs = c.recv(WINDOW, max=0)
    got = datas(msgs)
    assert ("from-port" in got) == from_port, got
    assert ("from-ip" in got) == from_ip, got
    assert ("from-third" in got) == from_third, got
    want_src = {"from-port": S3, "from-ip": S2, "from-third": T}
    for m in msgs:
        if m["data"] in want_src:
            assert m["from"] == want_src[m["data"]]

    # mapping: the external port seen from two more destinations
    c.send(S2, "m2")
    r2 = s2.recv(2.0)
    c.send(T, "m3")
    r3 = t.recv(2.0)
    assert r2 and r3
    m2, m3 = r2[0]["from"], r3[0]["from"]
    assert m2[0] == m3[0] == ext_ip
    if eim:
        assert m1 == m2 == m3
        assert m1[1] == 5000  # port preserving (no clash in the lab)
    elif nat is Nat.SYMMETRIC_SEQUENTIAL:
        assert SEQ_BASE <= m1[1] < SEQ_BASE + SEQ_SPAN
        assert (m2[1], m3[1]) == (m1[1] + 1, m1[1] + 2), (m1, m2, m3)
    else:  # random ports: all different (a coincidence has p ~ 1e-4)
        assert len({m1[1], m2[1], m3[1]}) == 3, (m1, m2, m3)
        assert not (m2[1] == m1[1] + 1 and m3[1] == m2[1] + 1)


@pytest.mark.nat
def test_hairpin(natlab: Lab) -> None:
    cases = [("h", Nat.PORT_RESTRICTED_CONE, True), ("n", Nat.PORT_RESTRICTED_CONE, False),
             ("f", Nat.FULL_CONE, True), ("g", Nat.FULL_CONE, False)]
    sites = {name: natlab.add_site(name, nat, hosts=2, hairpin=hp) for name, nat, hp in cases}
    s1, _s2, _s3, _t = servers(natlab)
    socks = {}
    for name, site in sites.items():
        a = site.hosts[0].probe().bind("0.0.0.0", 5000)
        b = site.hosts[1].probe().bind("0.0.0.0", 6000)
        ma, mb = a.mapped(S1), b.mapped(S1)
        assert ma == (site.public_ip, 5000) and mb == (site.public_ip, 6000)
        a.send(mb, "hairpin-" + name)
        socks[name] = (a, b, ma, mb)
    for name, _nat, hp in cases:
        a, b, ma, _mb = socks[name]
        got = b.recv(WINDOW, max=0)
        if not hp:
            assert got == [], (name, got)
            continue
        assert [m["data"] for m in got] == ["hairpin-" + name]
        # the peer sees the sender's public mapping, and can answer it
        assert got[0]["from"] == ma
        b.send(got[0]["from"], "back-" + name)
        back = a.recv(2.0)
        assert back and back[0]["data"] == "back-" + name
        assert back[0]["from"][0] == sites[name].public_ip
    # no ICMP redirects were sent by hairpinning routers
    for name in ("h", "f"):
        out = sites[name].router.run(["cat", "/proc/net/snmp"]).stdout
        hdr, vals = [l.split() for l in out.splitlines() if l.startswith("Icmp:")][:2]
        assert int(dict(zip(hdr, vals))["OutRedirects"]) == 0


@pytest.mark.nat
def test_loss_and_delay(natlab: Lab) -> None:
    lossy = natlab.add_site("l", Nat.PORT_RESTRICTED_CONE, loss=0.2)
    slow = natlab.add_site("d", Nat.PORT_RESTRICTED_CONE, delay_ms=40)
    ctl = natlab.add_site("c", Nat.PORT_RESTRICTED_CONE)
    sp = natlab.server.probe()
    n = 500
    echo = {}
    for i, site in enumerate((lossy, ctl)):
        srv = sp.bind(S1[0], 4001 + i)
        srv.echo()
        cli = site.hosts[0].probe().bind("0.0.0.0", 5000)
        cli.send(srv.addr, "burst", count=n, interval=0.001)
        echo[site.name] = (srv, cli)
    results = {}
    for name, (srv, cli) in echo.items():
        back = len(cli.recv(1.0, max=0))
        results[name] = (srv.count(), back)
    # one way: p=0.8, sd ~9; round trip: p=0.64, sd ~11 (bounds are > 6 sd)
    one_way, rtrip = results["l"]
    assert 340 <= one_way <= 460, results
    assert 255 <= rtrip <= 385, results
    assert results["c"][0] >= n - 2 and results["c"][1] >= n - 2, results

    srv = sp.bind(S1[0], 4010)
    srv.echo()
    rtt = {}
    for site in (slow, ctl):
        cli = site.hosts[0].probe().bind("0.0.0.0", 5001)
        rtts = cli.ping(srv.addr, count=10, interval=0.01, timeout=1.0)
        assert None not in rtts, rtts
        rtt[site.name] = statistics.median(rtts)
    assert 0.080 <= rtt["d"] < 0.080 + 0.060, rtt
    assert rtt["c"] < 0.020, rtt

    # TCP crosses the delay line too (checksums completed, no oversized GSO frames)
    tcp_server = natlab.server.python(TCP_SINK, spawn=True, stdout=subprocess.PIPE, text=True)
    assert tcp_server.stdout.readline().strip() == "listening"
    r = slow.hosts[0].python(TCP_SOURCE, timeout=30)
    assert r.returncode == 0, r.stderr
    assert tcp_server.stdout.readline().strip() == "got 1000000"


TCP_SINK = """
import socket
l = socket.socket()
l.bind(("203.0.113.10", 7000))
l.listen()
print("listening", flush=True)
c, _ = l.accept()
n = 0
while True:
    d = c.recv(65536)
    if not d:
        break
    n += len(d)
print("got", n, flush=True)
"""
TCP_SOURCE = """
import socket
c = socket.create_connection(("203.0.113.10", 7000), timeout=10)
c.sendall(b"x" * 1000000)
c.close()
"""


@pytest.mark.nat
def test_udp_timeout(natlab: Lab) -> None:
    timeout = 2
    sites = [natlab.add_site(name, nat, udp_timeout=timeout)
             for name, nat in (("p", Nat.PORT_RESTRICTED_CONE), ("f", Nat.FULL_CONE))]
    s1, _s2, _s3, t = servers(natlab)
    state = []
    for site in sites:
        pr = site.hosts[0].probe()
        idle, kept = pr.bind("0.0.0.0", 5000), pr.bind("0.0.0.0", 5001)
        mi, mk = idle.mapped(S1), kept.mapped(S1)
        assert mi and mk
        state.append((site, idle, kept, mi, mk))
    # the full cone mapping is open to anyone while it lives
    t.send(state[1][3], "fresh")
    assert datas(state[1][1].recv(2.0)) == {"fresh"}
    end = time.monotonic() + timeout + 1.5
    while time.monotonic() < end:  # keepalives on one socket only
        for _site, _idle, kept, _mi, _mk in state:
            kept.send(S1, "keepalive")
        time.sleep(0.4)
    for site, idle, kept, mi, mk in state:
        s1.send(mi, "late")
        s1.send(mk, "alive")
        if site.nat is Nat.FULL_CONE:
            t.send(mi, "late-third")
            t.send(mk, "alive-third")
    for site, idle, kept, mi, mk in state:
        got_idle = datas(idle.recv(WINDOW, max=0))
        got_kept = {d for d in datas(kept.recv(0.1, max=0)) if not d.startswith("{")}  # no echoes
        assert got_idle == set(), (site, got_idle)
        want = {"alive", "alive-third"} if site.nat is Nat.FULL_CONE else {"alive"}
        assert got_kept == want, (site, got_kept)


@pytest.mark.nat
def test_open_and_firewall_two_hosts(natlab: Lab) -> None:
    sites = [natlab.add_site("o", Nat.OPEN, hosts=2),
             natlab.add_site("w", Nat.SYMMETRIC_UDP_FIREWALL, hosts=2)]
    _s1, _s2, _s3, t = servers(natlab)
    ips = set()
    for site in sites:
        a = site.hosts[0].probe().bind("0.0.0.0", 5000)
        b = site.hosts[1].probe().bind("0.0.0.0", 5000)
        assert a.mapped(S1) == (site.hosts[0].ip, 5000)
        assert b.mapped(S1) == (site.hosts[1].ip, 5000)
        a.send((site.hosts[1].ip, 5000), "lan")  # via the router, public to public
        assert datas(b.recv(2.0)) == {"lan"}
        ips.update(h.ip for h in site.hosts)
    assert len(ips) == 4


@pytest.mark.nat
def test_topology_stays_inside(natlab: Lab) -> None:
    site = natlab.add_site("a", Nat.FULL_CONE, hosts=2, delay_ms=5)
    natlab.add_site("b", Nat.SYMMETRIC_UDP_FIREWALL)
    assert natlab.server.ips == ("203.0.113.10", "203.0.113.11")
    assert natlab.third.ip == "198.51.100.20"
    assert len({s.public_ip for s in natlab.sites.values()}) == 2
    assert {h.ip for h in site.hosts} == {"10.1.0.2", "10.1.0.3"}
    doc = ("192.0.2.", "198.51.100.", "203.0.113.", "10.", "127.")
    for ns in natlab.namespaces:
        assert ns.startswith(natlab.prefix) and ns.startswith("nsl%d-" % os.getpid())
        r = subprocess.run(["ip", "-n", ns, "-4", "-o", "addr"], capture_output=True, text=True)
        for line in r.stdout.splitlines():
            addr = line.split()[3]
            assert addr.startswith(doc), (ns, addr)
        r = subprocess.run(["ip", "-n", ns, "route", "show", "default"], capture_output=True, text=True)
        assert r.stdout.strip() == "", (ns, r.stdout)
        # no route to anywhere outside the lab (no packet is sent by `route get`)
        r = subprocess.run(["ip", "-n", ns, "route", "get", "9.9.9.9"], capture_output=True, text=True)
        assert r.returncode != 0, (ns, r.stdout)


@pytest.mark.nat
def test_teardown_kills_processes_and_namespaces() -> None:
    from natlab import unavailable_reason
    if unavailable_reason():
        pytest.skip(unavailable_reason())
    with pytest.raises(RuntimeError, match="boom"):
        with Lab() as lab:
            site = lab.add_site("a", Nat.SYMMETRIC_RANDOM, delay_ms=3)
            p = site.hosts[0].spawn(["sh", "-c", "sleep 300 & sleep 300"])
            prefix = lab.prefix
            # the child enters the namespace after the fork: wait for it (a loaded machine is slow)
            deadline = time.monotonic() + 10
            pids = []
            while not pids and time.monotonic() < deadline:
                pids = subprocess.run(["ip", "netns", "pids", site.hosts[0].ns],
                                      capture_output=True, text=True).stdout.split()
                time.sleep(0.05)
            assert len(pids) >= 1
            raise RuntimeError("boom")
    assert p.poll() is not None
    time.sleep(0.1)
    for pid in pids:
        assert not _pid_alive(int(pid)) or open("/proc/%s/stat" % pid).read().split()[2] == "Z"
    assert [ns for ns in list_netns() if ns.startswith(prefix)] == []


@pytest.mark.nat
def test_stale_namespaces_are_cleaned() -> None:
    from natlab import unavailable_reason
    if unavailable_reason():
        pytest.skip(unavailable_reason())
    dead = 4194000
    while _pid_alive(dead):
        dead -= 1
    stale = "%s%d-1-x" % (PREFIX, dead)
    mine = "%s%d-99999-x" % (PREFIX, os.getpid())  # a live run's namespace: kept
    subprocess.run(["ip", "netns", "add", stale], check=True)
    subprocess.run(["ip", "netns", "add", mine], check=True)
    try:
        with Lab():
            names = list_netns()
            assert stale not in names and mine in names
    finally:
        subprocess.run(["ip", "netns", "del", mine])
        subprocess.run(["ip", "netns", "del", stale], capture_output=True)


PLUGIN_TEST = textwrap.dedent('''
    import pytest

    @pytest.mark.nat
    def test_uses_lab(natlab):
        pass
''')


@pytest.mark.parametrize("ci", ["", "true"])
def test_skip_without_lab_fails_in_ci(tmp_path, ci: str) -> None:
    (tmp_path / "test_x.py").write_text(PLUGIN_TEST)
    env = dict(os.environ, NATLAB_DISABLE="testing the plugin", CI=ci,
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", "pytest", "-p", "natlab.pytest_plugin", "-q",
                        "-p", "no:cacheprovider", "-rfs", str(tmp_path)],
                       cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=120)
    out = r.stdout + r.stderr
    assert "disabled by NATLAB_DISABLE" in out, out
    if ci:
        assert r.returncode == 1 and ("1 failed" in out or "1 error" in out), out
        assert "a skipped NAT test is a failure" in out, out
    else:
        assert r.returncode == 0 and "1 skipped" in out, out


@pytest.fixture(autouse=True)
def _no_lab_namespaces_left():
    yield
    left = [ns for ns in lab_namespaces() if ns.startswith("%s%d-" % (PREFIX, os.getpid()))]
    assert left == [], "lab namespaces left behind: %s" % left
