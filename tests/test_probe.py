"""natsalon.client.probe.measure on a task.Clock, against an in-memory NAT and the real
sans-IO answer code of the salon (natsalon.server.binding)."""

from __future__ import annotations

import errno
import os
import random
import subprocess
import sys
from typing import Callable, Dict, Optional, Set, Tuple

import pytest
from twisted.internet import task
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure

from natsalon.server import binding
from natsalon.client.probe.classify import Allocation, Behaviour, Classic
from natsalon.client.probe.findings import Findings
from natsalon.server.layout import Layout
from natsalon.client.probe.measure import ProbeConfig, ProbeReport, ServerUnreachable, ServerUnusable, probe
from natsalon.cli.probe import format_table, parse_server
from natsalon.stun import Address, Attr, Class, Message, StunDecodeError, decode, encode
from natsalon.testing import FakeDatagramTransport

IP1, IP2 = "203.0.113.10", "203.0.113.11"
PUBLIC = "192.0.2.1"
LATENCY = 0.0005
STEP = 0.001

EIM, ADM, APDM = (Behaviour.ENDPOINT_INDEPENDENT, Behaviour.ADDRESS_DEPENDENT,
                  Behaviour.ADDRESS_AND_PORT_DEPENDENT)
UNKNOWN = Behaviour.UNKNOWN

# kind -> (translates, mapping key, allocation, filtering)
KINDS = {
    "open": (False, "eim", "keep", "none"),
    "full": (True, "eim", "keep", "none"),
    "restricted": (True, "eim", "keep", "ip"),
    "port_restricted": (True, "eim", "keep", "ipport"),
    "address_dependent": (True, "ip", "seq", "ipport"),
    "sym_random": (True, "ipport", "random", "ipport"),
    "sym_seq": (True, "ipport", "seq", "ipport"),
    "firewall": (False, "eim", "keep", "ipport"),
    "blocked": (True, "eim", "keep", "drop"),
}


class NetTransport(FakeDatagramTransport):
    def __init__(self, net: "FakeNet", port: int) -> None:
        FakeDatagramTransport.__init__(self, net.local_ip, port)
        self.net = net

    def write(self, packet, addr=None):
        FakeDatagramTransport.write(self, packet, addr)
        self.net.outbound(self.port, bytes(packet), tuple(addr or self.connected))

    def stopListening(self):
        FakeDatagramTransport.stopListening(self)
        self.net.socks.pop(self.port, None)


class FakeNet:
    """One host behind a NAT of ``kind``, and an RFC 5780 server."""

    def __init__(self, clock, kind: str, two_ips: bool = True, loss: float = 0.0, seed: int = 0,
                 server_up: bool = True, hairpin: bool = False, binding_timeout: float = 1e9,
                 server_hook: Optional[Callable] = None) -> None:
        self.clock = clock
        self.translates, self.key_by, self.alloc, self.filter = KINDS[kind]
        self.local_ip = "10.0.0.2" if self.translates else "198.51.100.7"
        self.public_ip = PUBLIC if self.translates else self.local_ip
        self.layout = Layout((IP1, IP2 if two_ips else None), (3478, 3479))
        self.loss = loss
        self.rnd = random.Random(seed)
        self.server_up = server_up
        self.hairpin = hairpin
        self.binding_timeout = binding_timeout
        self.server_hook = server_hook
        self.socks: Dict[int, object] = {}
        self.mappings: Dict[tuple, int] = {}
        self.ext_to_local: Dict[int, int] = {}
        self.last_out: Dict[int, float] = {}
        self.sent_to: Set[Tuple[int, str, int]] = set()
        self.next_seq = 20000
        self.server_received = 0
        self.listen_transport = NetTransport

    # -- the host ---------------------------------------------------------------
    def listen(self, proto):
        while True:
            port = self.rnd.randint(32768, 60999)
            if port not in self.socks:
                break
        t = self.listen_transport(self, port)
        self.socks[port] = proto
        proto.makeConnection(t)
        return t

    def lost(self) -> bool:
        return self.loss > 0 and self.rnd.random() < self.loss

    # -- the NAT --------------------------------------------------------------
    def ext_port(self, local_port: int, dst: tuple) -> int:
        if not self.translates:
            return local_port
        key = {"eim": (local_port,), "ip": (local_port, dst[0]), "ipport": (local_port, dst)}[self.key_by]
        ext = self.mappings.get(key)
        if ext is not None and self.clock.seconds() - self.last_out.get(ext, 0) > self.binding_timeout:
            ext = None  # expired
        if ext is None:
            if self.alloc == "keep" and local_port not in self.ext_to_local:
                ext = local_port
            elif self.alloc == "seq":
                ext, self.next_seq = self.next_seq, self.next_seq + 1
            else:
                ext = self.rnd.randint(1024, 65535)
            self.mappings[key] = ext
            self.ext_to_local[ext] = local_port
        return ext

    def outbound(self, local_port: int, data: bytes, dst: tuple) -> None:
        if self.filter == "drop":
            return
        ext = self.ext_port(local_port, dst)
        self.last_out[ext] = self.clock.seconds()
        self.sent_to.add((ext, dst[0], dst[1]))
        if dst[0] == self.public_ip and self.translates:
            if self.hairpin:
                self.clock.callLater(LATENCY, self.deliver, ext, (self.public_ip, ext), dst[1], data, True)
            return
        if self.lost():
            return
        self.clock.callLater(LATENCY, self.server_receive, Address(self.public_ip, ext), dst, data, local_port)

    def deliver(self, ext_src, src: tuple, ext: int, data: bytes, hairpin: bool = False) -> None:
        if not hairpin:
            if self.lost() or self.filter == "drop":
                return
            if self.filter == "ip" and not any(e == ext and h == src[0] for e, h, _ in self.sent_to):
                return
            if self.filter == "ipport" and (ext, src[0], src[1]) not in self.sent_to:
                return
        if self.translates and self.clock.seconds() - self.last_out.get(ext, -1e18) > self.binding_timeout:
            return
        local = self.ext_to_local.get(ext, ext) if self.translates else ext
        proto = self.socks.get(local)
        if proto is None:
            return
        t = proto.transport
        if t.connected is not None and tuple(t.connected) != tuple(src):
            return
        proto.datagramReceived(data, src)

    # -- the server -----------------------------------------------------------
    def server_receive(self, src: Address, dst: tuple, data: bytes, local_port: int) -> None:
        keys = {self.layout.address(k): k for k in self.layout.keys()}
        key = keys.get(Address(*dst))
        if key is None or not self.server_up:
            proto = self.socks.get(local_port)
            if proto is not None and proto.transport.connected == dst:
                proto.connectionRefused()  # ICMP port unreachable
            return
        self.server_received += 1
        try:
            msg = decode(data)
        except StunDecodeError:
            return
        reply = binding.answer(msg, src, key, self.layout)
        if reply is None:
            return
        replies = [(self.layout.address(reply.via), reply.to, reply.data, 0.0)]
        if self.server_hook is not None:
            replies = self.server_hook(self, msg, key, replies)
        for via, to, out, delay in replies:
            if self.lost():
                continue
            self.clock.callLater(LATENCY + delay, self.deliver, None, tuple(via), to[1], out)


def run_probe(net: FakeNet, config: ProbeConfig = ProbeConfig(), limit: float = 30.0):
    results = []
    d = probe(net.clock, (IP1, 3478), config, local_ips=[net.local_ip, "127.0.0.1"], listen=net.listen)
    d.addBoth(results.append)
    steps = int(limit / STEP)
    for _ in range(steps):
        if results:
            break
        net.clock.advance(STEP)
    assert results, "the probe did not finish in %s s of clock time" % limit
    result = results[0]
    if isinstance(result, Failure):
        result.raiseException()
    assert not net.socks, "the probe left sockets open"
    return result


EXPECTED = {
    # kind: nat, classic, mapping, filtering, allocation
    "open": (False, Classic.OPEN, EIM, EIM, Allocation.PRESERVING),
    "full": (True, Classic.FULL_CONE, EIM, EIM, Allocation.PRESERVING),
    "restricted": (True, Classic.RESTRICTED_CONE, EIM, ADM, Allocation.PRESERVING),
    "port_restricted": (True, Classic.PORT_RESTRICTED_CONE, EIM, APDM, Allocation.PRESERVING),
    "address_dependent": (True, Classic.SYMMETRIC, ADM, APDM, Allocation.SEQUENTIAL),
    "sym_random": (True, Classic.SYMMETRIC, APDM, APDM, Allocation.RANDOM),
    "sym_seq": (True, Classic.SYMMETRIC, APDM, APDM, Allocation.SEQUENTIAL),
    "firewall": (False, Classic.SYMMETRIC_UDP_FIREWALL, EIM, APDM, Allocation.PRESERVING),
}


def check(report: ProbeReport, kind: str) -> None:
    nat, classic, mapping, filtering, alloc = EXPECTED[kind]
    assert (report.nat, report.classic, report.mapping, report.filtering, report.port_allocation.kind) == (
        nat, classic, mapping, filtering, alloc), report
    if alloc is Allocation.SEQUENTIAL:
        assert report.port_allocation.step == 1
    assert report.server.inconsistencies == ()
    assert report.server.untested == ()


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_every_behaviour(kind):
    report = run_probe(FakeNet(task.Clock(), kind))
    check(report, kind)
    assert report.elapsed_ms < 1000
    assert report.server.other_address == Address(IP2, 3479)
    assert report.server.rfc5780


@pytest.mark.parametrize("kind", sorted(EXPECTED))
@pytest.mark.parametrize("seed", range(4))
def test_every_behaviour_with_loss(kind, seed):
    check(run_probe(FakeNet(task.Clock(), kind, loss=0.05, seed=seed)), kind)


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_twice_in_a_row(kind):
    net = FakeNet(task.Clock(), kind, seed=3)
    first = run_probe(net)
    second = run_probe(net)
    check(first, kind)
    check(second, kind)
    assert second.mapped != first.mapped  # fresh sockets, not the first run's


def test_udp_blocked_is_a_classification_bounded_by_timeout():
    report = run_probe(FakeNet(task.Clock(), "blocked"), ProbeConfig(timeout=1.5))
    assert report.classic is Classic.UDP_BLOCKED
    assert (report.mapping, report.filtering, report.nat, report.mapped) == (UNKNOWN, UNKNOWN, None, None)
    assert 1500 <= report.elapsed_ms <= 1510
    assert report.to_json()["classic"] == "udp-blocked"


def test_nothing_listening_is_server_unreachable_at_once():
    net = FakeNet(task.Clock(), "full", server_up=False)
    with pytest.raises(ServerUnreachable, match="nothing listens"):
        run_probe(net)
    assert net.clock.seconds() < 0.1


class NoRouteTransport(NetTransport):
    def write(self, packet, addr=None):
        raise OSError(errno.ENETUNREACH, os.strerror(errno.ENETUNREACH))


def test_no_route_is_server_unreachable_and_not_logged_as_a_failure():
    net = FakeNet(task.Clock(), "full")
    net.listen_transport = NoRouteTransport
    failures = []

    def observe(event):
        if "log_failure" in event:
            failures.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        with pytest.raises(ServerUnreachable, match="cannot send to %s:3478: %s" % (
                IP1, os.strerror(errno.ENETUNREACH))):
            run_probe(net)
    finally:
        globalLogPublisher.removeObserver(observe)
    assert failures == []


def test_one_ip_server_says_unknown():
    full = run_probe(FakeNet(task.Clock(), "full", two_ips=False))
    assert (full.mapping, full.filtering, full.classic) == (UNKNOWN, UNKNOWN, Classic.UNKNOWN)
    assert any("change-IP" in u for u in full.server.untested)
    assert any("two IPs" in n for n in full.notes)
    assert full.server.other_address is None
    prc = run_probe(FakeNet(task.Clock(), "port_restricted", two_ips=False))
    assert (prc.mapping, prc.filtering, prc.classic) == (UNKNOWN, APDM, Classic.UNKNOWN)
    sym = run_probe(FakeNet(task.Clock(), "sym_random", two_ips=False))
    assert (sym.mapping, sym.filtering, sym.classic) == (APDM, APDM, Classic.SYMMETRIC)


def test_hairpin_and_not():
    yes = run_probe(FakeNet(task.Clock(), "port_restricted", hairpin=True), ProbeConfig(hairpin=True))
    assert yes.hairpinning is True
    no = run_probe(FakeNet(task.Clock(), "port_restricted", hairpin=False), ProbeConfig(hairpin=True))
    assert no.hairpinning is False
    assert run_probe(FakeNet(task.Clock(), "full")).hairpinning is None


def test_lifetime_is_bracketed():
    config = ProbeConfig(lifetime=True, lifetime_intervals=(1, 2, 3, 4, 6, 8), lifetime_max=8)
    report = run_probe(FakeNet(task.Clock(), "port_restricted", binding_timeout=3.5), config)
    assert report.lifetime_s is not None and 3.0 <= report.lifetime_s < 3.5
    assert any("between" in n for n in report.notes)
    assert report.elapsed_ms < 5000  # stops at the first interval the binding did not survive


def test_lifetime_never_expiring():
    config = ProbeConfig(lifetime=True, lifetime_intervals=(1, 2), lifetime_max=8)
    report = run_probe(FakeNet(task.Clock(), "open"), config)
    assert report.lifetime_s is not None and report.lifetime_s >= 2
    assert any("outlived" in n for n in report.notes)


# -- hostile or odd servers --------------------------------------------------
def _noise(net, msg, key, replies):
    """Before every real answer: garbage, a spoofed answer (wrong txid), and
    the real answer again 5 s late."""
    out = []
    for via, to, data, delay in replies:
        spoof = encode(Message(msg.method, Class.SUCCESS, b"\x01" * 12,
                               ((Attr.XOR_MAPPED_ADDRESS, Address("192.0.2.99", 9)),)))
        out += [(via, to, b"\x00\x01garbage" * 3, 0.0), (via, to, spoof, 0.0), (via, to, data, 0.0002),
                (via, to, data, 5.0)]
    return out


@pytest.mark.parametrize("kind", ["full", "restricted", "sym_random"])
def test_malformed_spoofed_and_late_answers_are_ignored(kind):
    check(run_probe(FakeNet(task.Clock(), kind, server_hook=_noise)), kind)


def _ignore_change(net, msg, key, replies):
    """A server that answers every request from the socket it came in on."""
    fixed = binding.answer(Message(msg.method, msg.cls, msg.transaction_id,
                                   tuple((t, v) for t, v in msg.attributes if t != Attr.CHANGE_REQUEST)
                                   + ((Attr.PADDING, b""),)),
                           Address(*replies[0][1][:1], replies[0][1][1]), key, net.layout)
    return [(net.layout.address(key), fixed.to, fixed.data, 0.0)]


def test_server_ignoring_change_request_is_reported_not_believed():
    report = run_probe(FakeNet(task.Clock(), "port_restricted", server_hook=_ignore_change))
    assert report.filtering is UNKNOWN
    assert report.classic is Classic.UNKNOWN
    assert any("CHANGE-REQUEST" in i for i in report.server.inconsistencies)
    assert report.mapping is EIM


def _unauthorized(net, msg, key, replies):
    data = binding.error_response(msg.method, msg.transaction_id, msg.classic, 401)
    return [(via, to, data, d) for via, to, _, d in replies]


def test_error_answer_is_server_unusable():
    with pytest.raises(ServerUnusable, match="401"):
        run_probe(FakeNet(task.Clock(), "full", server_hook=_unauthorized))


def _no_mapped(net, msg, key, replies):
    data = encode(Message(msg.method, Class.SUCCESS, msg.transaction_id, ()))
    return [(via, to, data, d) for via, to, _, d in replies]


def test_answer_without_mapped_address_is_server_unusable():
    with pytest.raises(ServerUnusable, match="XOR-MAPPED-ADDRESS"):
        run_probe(FakeNet(task.Clock(), "full", server_hook=_no_mapped))


def _rfc5389_only(net, msg, key, replies):
    """A plain RFC 5389 server: 420 to CHANGE-REQUEST, only XOR-MAPPED-ADDRESS otherwise."""
    if msg.has(Attr.CHANGE_REQUEST) or msg.has(Attr.RESPONSE_PORT):
        data = binding.error_response(msg.method, msg.transaction_id, False, 420, (Attr.CHANGE_REQUEST,))
        return [(net.layout.address(key), replies[0][1], data, 0.0)]
    src = decode(replies[0][2]).mapped_address
    data = encode(Message(msg.method, Class.SUCCESS, msg.transaction_id, ((Attr.XOR_MAPPED_ADDRESS, src),)))
    return [(net.layout.address(key), replies[0][1], data, 0.0)]


def test_plain_rfc5389_server_gives_mapped_address_and_unknowns():
    report = run_probe(FakeNet(task.Clock(), "port_restricted", server_hook=_rfc5389_only))
    assert report.nat is True and report.mapped.host == PUBLIC
    assert (report.mapping, report.filtering, report.classic) == (UNKNOWN, UNKNOWN, Classic.UNKNOWN)
    assert report.port_allocation.kind is Allocation.PRESERVING
    assert not report.server.rfc5780
    assert any("420" in u for u in report.server.untested)


def test_other_address_inconsistency_is_reported():
    def lying(net, msg, key, replies):
        out = []
        for via, to, data, d in replies:
            m = decode(data)
            attrs = tuple((t, Address("203.0.113.12", 9999) if t == Attr.OTHER_ADDRESS and via != (IP1, 3478)
                           else v) for t, v in m.attributes)
            out.append((via, to, encode(Message(m.method, m.cls, m.transaction_id, attrs)), d))
        return out
    report = run_probe(FakeNet(task.Clock(), "full", server_hook=lying))
    assert report.classic is Classic.FULL_CONE
    assert any("OTHER-ADDRESS" in i for i in report.server.inconsistencies)


# -- schedules -----------------------------------------------------------------
def test_first_policy_ends_at_timeout():
    offsets, total = ProbeConfig(timeout=2.0).first_policy().schedule()
    assert offsets == pytest.approx([0, 0.1, 0.3, 0.7, 1.5])
    assert total == pytest.approx(2.0)


def test_quick_policy_is_short_on_a_lan_and_scales_with_rtt():
    offsets, total = ProbeConfig().quick_policy(0.001).schedule()
    assert len(offsets) == 6 and total < 0.8
    offsets, total = ProbeConfig().quick_policy(0.1).schedule()
    assert offsets[1] == pytest.approx(0.2)


# -- the command -------------------------------------------------------------
def test_parse_server():
    assert parse_server("203.0.113.10") == ("203.0.113.10", 3478)
    assert parse_server("stun.example:3479") == ("stun.example", 3479)
    assert parse_server("[2001:db8::1]:5000") == ("2001:db8::1", 5000)  # IPv6: tests/test_ipv6_probe.py
    for bad in ("h:0", "h:x", ":1", "[::1"):
        with pytest.raises(Exception):
            parse_server(bad)


def test_table_and_json_keys():
    report = run_probe(FakeNet(task.Clock(), "sym_seq"))
    text = format_table(report)
    assert "symmetric" in text and "sequential (step 1)" in text
    j = report.to_json()
    for key in ("nat", "mapped", "local", "classic", "mapping", "filtering", "port_allocation",
                "hairpinning", "lifetime_s", "server", "elapsed_ms"):
        assert key in j


def test_cli_unreachable_server_is_one_line_and_nonzero():
    import socket
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: ICMP port unreachable
    p = subprocess.run([sys.executable, "-m", "natsalon.cli", "probe", "--server", "127.0.0.1:%d" % port,
                        "--timeout", "1"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 1
    assert p.stdout == ""
    assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    assert "nothing listens" in p.stderr


# -- Findings: the run's record, checked with plain values -------------------

P1, P2 = Address(IP1, 3478), Address(IP2, 3479)


def _answer(origin=None, other=None) -> Message:
    attrs = [(Attr.XOR_MAPPED_ADDRESS, Address(PUBLIC, 40000))]
    if origin is not None:
        attrs.append((Attr.RESPONSE_ORIGIN, origin))
    if other is not None:
        attrs.append((Attr.OTHER_ADDRESS, other))
    return Message(1, Class.SUCCESS, b"t" * 12, tuple(attrs))


def test_findings_grid_is_the_rfc5780_square():
    found = Findings(P1)
    assert found.grid() == {}
    found.note_other(P2)
    assert found.grid() == {P1: P2, P2: P1, Address(IP1, 3479): Address(IP2, 3478),
                            Address(IP2, 3478): Address(IP1, 3479)}
    assert found.has_alt_ip()


def test_findings_keep_the_first_other_address_and_note_a_change():
    found = Findings(P1)
    found.note_other(None)
    found.note_other(P2)
    found.note_other(P2)
    assert found.inconsistencies == []
    found.note_other(Address(IP2, 4000))
    assert found.other == P2
    assert found.inconsistencies == ["OTHER-ADDRESS changes between answers: %s, %s:4000" % (P2, IP2)]


def test_findings_check_response_notes_each_disagreement_once():
    found = Findings(P1)
    found.note_other(P2)
    found.check_response("binding", _answer(origin=P1, other=P2), P1, P1)
    assert found.inconsistencies == []
    for _ in range(2):
        found.check_response("binding", _answer(origin=P2, other=P1), P1, P2)
    assert found.inconsistencies == [
        "binding: RESPONSE-ORIGIN %s, but the answer came from %s" % (P2, P1),
        "binding: answer from %s, expected from %s" % (P1, P2),
        "binding: OTHER-ADDRESS %s from %s, expected %s" % (P1, P1, P2),
    ]


def test_findings_cannot_lists_each_reason_once_and_rtt_keeps_the_least():
    found = Findings(P1)
    found.cannot("mapping", "x did not answer")
    found.cannot("mapping", "x did not answer")
    assert found.untested == ["mapping: x did not answer"]
    for rtt in (0.03, -1, 0.01, 0.02):
        found.note_rtt(rtt)
    assert found.rtt == 0.01
