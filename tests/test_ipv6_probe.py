"""The probe over IPv6: against the in-memory NAT of test_probe (with IPv6
addresses: an open host, a stateful firewall, NAT66/NPTv6), the temporary
address flag, the command line's -4 / -6 / --both, and a real run against
a dual-stack salon on ::1 and 127.0.0.1."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task, utils
from twisted.python.failure import Failure

from natsalon.cli.probe import add_arguments, families, format_table, parse_server
from natsalon.client.probe.classify import Behaviour, Classic, is_nat
from natsalon.client.probe.measure import ProbeConfig, ServerUnusable, probe
from natsalon.client.probe.privacy import IFA_F_TEMPORARY, address_flags, is_temporary, parse_if_inet6
from natsalon.server.layout import Family, Layout
from natsalon.server.service import SalonConfig, make_salon
from natsalon.stun import Address
from test_probe import STEP, FakeNet  # tests/ is on sys.path (rootdir-less test modules)
from loopback6 import has_ipv6_loopback as _has_ipv6_loopback

S1, S2 = "2001:db8:0:1::10", "2001:db8:0:1::11"
HOST = "2001:db8:a:1:5054:ff:fe12:3456"
NAT66_PUBLIC = "2001:db8:f::1"
EIM, APDM = Behaviour.ENDPOINT_INDEPENDENT, Behaviour.ADDRESS_AND_PORT_DEPENDENT


class FakeNet6(FakeNet):
    """test_probe's FakeNet with IPv6 addresses: the host's own global
    address (open, firewall) or a private one behind NAT66."""

    def __init__(self, clock, kind: str, **kw) -> None:
        super().__init__(clock, kind, **kw)
        self.local_ip = "fd00:a::2" if self.translates else HOST
        self.public_ip = NAT66_PUBLIC if self.translates else self.local_ip
        self.layout = Layout((S1, S2), (3478, 3479))


def run6(net: FakeNet6, flags=None, limit: float = 30.0):
    results = []
    d = probe(net.clock, (S1, 3478), ProbeConfig(), local_ips=[net.local_ip, "::1"], listen=net.listen,
              address_flags=flags or {})
    d.addBoth(results.append)
    for _ in range(int(limit / STEP)):
        if results:
            break
        net.clock.advance(STEP)
    assert results, "the probe did not finish"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    assert not net.socks
    return results[0]


EXPECTED6 = {
    # kind: nat, mapping, filtering, classic
    "open": (False, EIM, EIM, Classic.OPEN),
    "firewall": (False, EIM, APDM, Classic.SYMMETRIC_UDP_FIREWALL),
    "port_restricted": (True, EIM, APDM, Classic.PORT_RESTRICTED_CONE),  # NAT66 masquerade
    "sym_random": (True, APDM, APDM, Classic.SYMMETRIC),
}


@pytest.mark.parametrize("kind", sorted(EXPECTED6))
@pytest.mark.parametrize("loss", [0.0, 0.05])
def test_ipv6_behaviours(kind, loss):
    report = run6(FakeNet6(task.Clock(), kind, loss=loss, seed=1))
    assert (report.nat, report.mapping, report.filtering, report.classic) == EXPECTED6[kind], report
    assert report.family == 6 and report.server.inconsistencies == ()
    assert report.server.other_address == Address(S2, 3479)
    j = report.to_json()
    assert j["family"] == 6 and j["server"]["address"] == "[%s]:3478" % S1
    assert report.mapped.host == (NAT66_PUBLIC if report.nat else HOST)


def test_the_report_says_whether_the_local_address_is_temporary():
    for flags, want, words in (({HOST: IFA_F_TEMPORARY}, True, "temporary (privacy address"),
                               ({HOST: 0x80}, False, "stable"), ({}, None, "unknown")):
        report = run6(FakeNet6(task.Clock(), "firewall"), flags)
        assert report.temporary is want and report.to_json()["temporary_address"] is want
        assert "local address" in format_table(report) and words in format_table(report)


def test_a_nat66_report_names_it_in_the_table():
    text = format_table(run6(FakeNet6(task.Clock(), "port_restricted")))
    assert "IPv6" in text and "yes, NAT66 or NPTv6 (mapped [%s]:" % NAT66_PUBLIC in text


def test_nat_check_compares_ipv6_addresses_not_spellings():
    assert not is_nat(Address("2001:db8::1", 5), 5, ["2001:0db8:0:0::1"])
    assert is_nat(Address("2001:db8:ff::1", 5), 5, ["2001:db8::1"])  # NPTv6: the prefix changed


def test_parse_if_inet6_reads_the_temporary_flag():
    text = ("20010db8000a00010000000000000abc 02 40 00 01     eth0\n"
            "20010db8000a00015054ff00fe123456 02 40 00 80     eth0\n"
            "garbage\n")
    flags = parse_if_inet6(text)
    assert is_temporary("2001:db8:a:1::abc", flags) is True
    assert is_temporary(HOST.replace("fe12", "fe12"), {}) is None
    assert is_temporary("2001:db8:a:1:5054:ff00:fe12:3456", flags) is False
    assert is_temporary("192.0.2.1", flags) is None


def test_this_hosts_table_reads_without_privileges():
    flags = address_flags()
    if not os.path.exists("/proc/net/if_inet6"):
        assert flags == {}
    elif flags:
        assert all(isinstance(v, int) for v in flags.values())
        assert all(":" in k for k in flags)
    assert address_flags("/nonexistent/if_inet6") == {}


def test_a_literal_of_the_other_family_is_refused():
    d = probe(task.Clock(), ("192.0.2.1", 3478), family=6, local_ips=[], listen=lambda p: None)
    with pytest.raises(ServerUnusable, match="192.0.2.1 is an IPv4 address, not IPv6"):
        d.result.raiseException() if isinstance(d.result, Failure) else None
    d.addErrback(lambda f: None)


def _args(*argv):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_server_syntax_and_families():
    assert parse_server("[2001:db8::1]:5000") == ("2001:db8::1", 5000)
    assert parse_server("2001:db8::1") == ("2001:db8::1", 3478)
    for bad in ("[2001:db8::1", "[nope]:1", "1:2:3"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_server(bad)
    assert families(_args("--server", "[2001:db8::1]:5000")) == (6,)
    assert families(_args("--server", "stun.example")) == (4,)
    assert families(_args("--server", "stun.example", "-6")) == (6,)
    assert families(_args("--server", "stun.example", "--both")) == (4, 6)
    assert families(_args("--server", "192.0.2.1", "-4")) == (4,)
    with pytest.raises(ValueError, match="--both needs a host name"):
        families(_args("--server", "2001:db8::1", "--both"))
    with pytest.raises(ValueError, match="-4: 2001:db8::1 is an IPv6 address"):
        families(_args("--server", "2001:db8::1", "-4"))
    with pytest.raises(SystemExit):
        _args("--server", "x", "-4", "-6")


def test_both_prints_a_report_per_family_and_fails_only_when_both_do(capsys):
    from natsalon.cli.probe import _print_both
    from natsalon.client.probe.errors import ServerUnreachable

    report = run6(FakeNet6(task.Clock(), "open"))
    failed = Failure(ServerUnreachable("cannot resolve stun.example: gaierror"))
    assert _print_both(_args("--server", "stun.example", "--both", "--json"), (4, 6), [failed, report]) == 0
    j = json.loads(capsys.readouterr().out)
    assert j["ipv4"] == {"error": "cannot resolve stun.example: gaierror"} and j["ipv6"]["family"] == 6
    assert _print_both(_args("--server", "stun.example", "--both"), (4, 6), [report, failed]) == 0
    out = capsys.readouterr().out
    assert "== IPv4 ==\nfamily" in out and "== IPv6 ==\nerror  cannot resolve" in out
    assert _print_both(_args("--server", "stun.example", "--both"), (4, 6), [failed, failed]) == 1
    assert capsys.readouterr().err.strip() == "natsalon probe: error: no family could be probed"



@pytest.fixture
def salon():
    if not _has_ipv6_loopback():
        pytest.skip("no IPv6 loopback on this machine")
    svc = make_salon(reactor, SalonConfig(interface="::1", port=0, alt_port=0, rcvbuf=0,
                                          second=Family("127.0.0.1")))
    svc.startService()
    yield svc
    pytest_twisted.blockon(defer.maybeDeferred(svc.stopService))


@pytest_twisted.inlineCallbacks
def test_the_command_probes_an_ipv6_salon(salon):
    port = salon.layout.ports[0]
    out, err, code = yield utils.getProcessOutputAndValue(
        sys.executable, ["-m", "natsalon.cli", "probe", "--server", "[::1]:%d" % port, "--json"],
        env=dict(os.environ))
    assert code == 0, err
    j = json.loads(out)
    assert j["family"] == 6 and j["nat"] is False and j["mapped"].startswith("[::1]:")
    assert j["server"]["response_origin"] == "[::1]:%d" % port
    assert j["temporary_address"] is False  # ::1 is a permanent address


@pytest_twisted.inlineCallbacks
def test_both_families_of_a_dual_stack_salon_by_name(salon, tmp_path):
    port = salon.layout.ports[0]
    hosts = {"127.0.0.1": 4, "::1": 6}
    # a name that resolves to both loopbacks: this machine's own if it has
    # one, else dual.test in a private /etc/hosts (a mount namespace: root)
    name = next((n for n in ("localhost", "ip6-localhost") if _resolves(n, socket.AF_INET6)
                 and _resolves(n, socket.AF_INET)), None)
    argv = [sys.executable, "-m", "natsalon.cli", "probe", "--server", "%s:%d" % (name or "dual.test", port),
            "--both", "--json"]
    if name is None:
        if os.geteuid() != 0 or shutil.which("unshare") is None:
            pytest.skip("no host name resolves to both ::1 and 127.0.0.1 here (and no root to make one)")
        etc_hosts = tmp_path / "hosts"
        etc_hosts.write_text("127.0.0.1 dual.test\n::1 dual.test\n")
        argv = ["unshare", "-m", "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"', str(etc_hosts)] + argv
    out, err, code = yield utils.getProcessOutputAndValue(argv[0], argv[1:], env=dict(os.environ))
    assert code == 0, err
    j = json.loads(out)
    assert {k: v["family"] for k, v in j.items()} == {"ipv4": 4, "ipv6": 6}
    assert {hosts[Address(*parse_server(v["mapped"])).host] for v in j.values()} == {4, 6}


def _resolves(name: str, af) -> bool:
    try:
        return bool(socket.getaddrinfo(name, None, af, socket.SOCK_DGRAM))
    except OSError:
        return False


@pytest_twisted.inlineCallbacks
def test_a_name_is_resolved_to_ipv6_in_a_thread_with_family_6(monkeypatch):
    from natsalon.client.probe import measure

    asked = []

    def getaddrinfo(host, port, family=0, kind=0, *rest):
        asked.append((host, family, kind))
        return [(socket.AF_INET6, socket.SOCK_DGRAM, 17, "", ("2001:db8::77", 0, 0, 0))]

    monkeypatch.setattr(measure.socket, "getaddrinfo", getaddrinfo)
    host = yield measure._resolve(reactor, "stun.example", 6)
    assert host == "2001:db8::77" and asked == [("stun.example", socket.AF_INET6, socket.SOCK_DGRAM)]
    literal = yield measure._resolve(reactor, "2001:db8::1", 6)
    assert literal == "2001:db8::1" and len(asked) == 1
