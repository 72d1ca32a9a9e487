"""The dual-stack salon: ``--interface`` once per family, ``--alt-ip`` per
family (an RFC 5780 grid per family), answers in the family they came in,
the rate limit by IPv6 /64, cookies bound to the member's own family."""

from __future__ import annotations

import os
import re
import socket
import struct
import subprocess
import sys

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.python import usage

from natsalon.client.stunsocket import StunClientProtocol
from natsalon.server import tap
from natsalon.server.introducer.cookies import CookieJar
from natsalon.server.layout import Family, Layout
from natsalon.server.ratelimit import SourceLimiter, source_key
from natsalon.server.service import SalonConfig, SalonService, make_salon
from natsalon.server.testing import UDPClock
from natsalon.stun import CHANGE_IP, CHANGE_PORT, Address, Attr, Class, Message, Method, decode, encode
from natsalon.stun.client import RetransmitPolicy
from loopback6 import has_ipv6_loopback as _has_ipv6_loopback

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
FAST = RetransmitPolicy(rto=0.1, sends=4, last_wait=4)
V4, V4_ALT, V6, V6_ALT = "192.0.2.1", "192.0.2.2", "2001:db8::1", "2001:db8::2"


def parse(*argv):
    opts = tap.Options()
    opts.parseOptions(list(argv))
    return opts



# -- options -------------------------------------------------------------------
def test_one_interface_and_alt_ip_per_family_make_two_grids():
    cfg = parse("--interface", V4, "--interface", V6, "--alt-ip", V6_ALT, "--alt-ip", V4_ALT,
                "--advertise", "2001:db8:ff::1", "--port", "0", "--alt-port", "0", "--no-turn").config
    assert (cfg.interface, cfg.alt_ip, cfg.advertise) == (V4, V4_ALT, None)
    assert cfg.second == Family(V6, V6_ALT, "2001:db8:ff::1", None)
    clock = UDPClock()
    svc = SalonService(clock, cfg)
    svc.startService()
    assert sorted(svc.sockets) == [(0, 0), (0, 0, 6), (0, 1), (0, 1, 6), (1, 0), (1, 0, 6), (1, 1), (1, 1, 6)]
    assert {svc.sockets[k].interface for k in svc.sockets if len(k) == 3} == {V6, V6_ALT}
    assert svc.layout == Layout((V4, V4_ALT), (40000, 40001), ("2001:db8:ff::1", V6_ALT), 6)
    assert "IPv6 [2001:db8:ff::1]:40000, alt IP 2001:db8::2" in svc.layout.describe()
    svc.stopService()


def test_the_first_interface_given_is_the_first_family():
    cfg = parse("--interface", "::", "--interface", "0.0.0.0").config
    assert cfg.interface == "::" and cfg.second == Family("0.0.0.0")
    cfg = parse("--interface", "0.0.0.0", "--interface", "::").config
    assert cfg.interface == "0.0.0.0" and cfg.second == Family("::")


def test_wildcard_ipv6_alone_still_serves_ipv4_beside_it():
    cfg = parse("--interface", "::").config
    assert [f.interface for f in cfg.families()] == ["::", "0.0.0.0"]
    cfg = parse("--interface", "::", "--advertise", "203.0.113.5").config
    assert cfg.advertise is None and cfg.second == Family("0.0.0.0", advertise="203.0.113.5")


@pytest.mark.parametrize("argv,line", [
    (["--interface", V4, "--alt-ip", V6], "--alt-ip 2001:db8::1 and --interface 192.0.2.1 are of different IP "
                                          "versions (no IPv6 --interface)"),
    (["--interface", V6, "--alt-ip", V4_ALT], "--alt-ip 192.0.2.2 and --interface 2001:db8::1 are of different "
                                              "IP versions (no IPv4 --interface)"),
    (["--interface", V4, "--interface", "192.0.2.9"], "--interface: given twice for IPv4 (192.0.2.1 and "
                                                      "192.0.2.9): give it once per IP family"),
    (["--interface", V4, "--interface", "::", "--alt-ip", V6_ALT],
     "--alt-ip 2001:db8::2 needs --interface set to a specific IPv6 address, not ::"),
    (["--interface", V4, "--interface", V6, "--alt-ip", V6], "--alt-ip must differ from --interface"),
    (["--interface", V4, "--interface", V6, "--alt-ip", V6_ALT, "--alt-ip", "2001:db8::3"],
     "--alt-ip: given twice for IPv6"),
    (["--interface", V4, "--interface", V6, "--alt-ip", V4_ALT, "--advertise-alt", "2001:db8::9"],
     "--advertise-alt 2001:db8::9 needs --alt-ip of IPv6"),
    (["--interface", "nope"], "--interface: 'nope' is not an IP address"),
])
def test_bad_family_options_are_one_usage_error(argv, line):
    with pytest.raises(usage.UsageError, match="^" + re.escape(line)):
        parse(*argv)


def test_twistd_refuses_an_alt_ip_of_the_wrong_family_with_one_line_and_exit_2(tmp_path):
    r = subprocess.run([TWISTD, "-n", "--pidfile=", "natsalon", "--interface", V4, "--alt-ip", V6],
                       capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip() == ("twistd natsalon: error: --alt-ip 2001:db8::1 and --interface 192.0.2.1 are of "
                                "different IP versions (no IPv6 --interface)")


def test_a_config_file_may_list_an_interface_per_family(tmp_path):
    from natsalon.ops import config as opsconfig

    opts = tap.Options()
    applied = opsconfig.apply(opts, "salon.toml", {"interface": [V4, V6], "alt-ip": [V4_ALT, V6_ALT]})
    opts.postOptions()
    assert {"interface", "alt-ip"} <= {n.replace("_", "-") for n in applied}
    assert opts.config.second == Family(V6, V6_ALT)


# -- answers on a fake reactor ------------------------------------------------------------------------
@pytest.fixture
def grid():
    clock = UDPClock()
    cfg = SalonConfig(interface=V4, alt_ip=V4_ALT, port=0, alt_port=0, rate_limit=0, rcvbuf=0,
                      second=Family(V6, V6_ALT))
    svc = SalonService(clock, cfg)
    svc.startService()
    yield svc, clock
    svc.stopService()


def _ask(svc, clock, key, client, attrs=()):
    msg = Message(Method.BINDING, Class.REQUEST, os.urandom(12), tuple(attrs))
    svc.sockets[key].protocol.datagramReceived(encode(msg), client)
    sent = [(where, data, to) for where, t in clock.udp.items() for data, to in t.pop()]
    assert len(sent) == 1
    (where, data, to), = sent
    return where, decode(data), to, data


@pytest.mark.parametrize("client,key,mine,alt", [
    (("2001:db8:77::5", 6000), (0, 0, 6), V6, V6_ALT),
    (("198.51.100.7", 6000), (0, 0), V4, V4_ALT),
])
def test_each_family_answers_from_its_own_grid(grid, client, key, mine, alt):
    svc, clock = grid
    where, msg, to, _ = _ask(svc, clock, key, client, [(Attr.CHANGE_REQUEST, 0)])
    assert where == (mine, 40000) and to == client
    assert msg.get(Attr.XOR_MAPPED_ADDRESS) == Address(*client)
    assert msg.get(Attr.RESPONSE_ORIGIN) == Address(mine, 40000)
    assert msg.get(Attr.OTHER_ADDRESS) == Address(alt, 40001)
    where, msg, to, _ = _ask(svc, clock, key, client, [(Attr.CHANGE_REQUEST, CHANGE_IP | CHANGE_PORT)])
    assert where == (alt, 40001) and to == client
    assert msg.get(Attr.RESPONSE_ORIGIN) == Address(alt, 40001)
    assert msg.get(Attr.OTHER_ADDRESS) == Address(mine, 40000)


def test_an_ipv6_answer_carries_a_family_2_xor_mapped_address(grid):
    svc, clock = grid
    client = ("2001:db8:77::5", 6000)
    _, msg, _, data = _ask(svc, clock, (0, 0, 6), client)
    body = data[20:]
    kind, length, _, family, xport = struct.unpack_from("!HHBBH", body)
    assert (kind, length, family) == (Attr.XOR_MAPPED_ADDRESS, 20, 0x02)
    assert xport ^ 0x2112 == 6000
    mask = data[4:20]  # magic cookie + transaction id
    raw = bytes(a ^ b for a, b in zip(body[8:24], mask))
    assert socket.inet_ntop(socket.AF_INET6, raw) == client[0]


def test_change_ip_is_refused_on_a_family_without_alt_ip():
    clock = UDPClock()
    svc = SalonService(clock, SalonConfig(interface=V4, alt_ip=V4_ALT, port=0, alt_port=0, rate_limit=0,
                                          rcvbuf=0, second=Family(V6)))
    svc.startService()
    assert len(svc.sockets) == 6
    _, msg, _, _ = _ask(svc, clock, (0, 0, 6), ("2001:db8:77::5", 6000),
                        [(Attr.CHANGE_REQUEST, CHANGE_IP)])
    assert msg.cls == Class.ERROR and msg.get(Attr.ERROR_CODE).code == 420
    _, msg, _, _ = _ask(svc, clock, (0, 0, 6), ("2001:db8:77::5", 6000), [(Attr.CHANGE_REQUEST, 0)])
    assert msg.get(Attr.OTHER_ADDRESS) is None and msg.get(Attr.RESPONSE_ORIGIN) == Address(V6, 40000)
    svc.stopService()


# -- rate limit and cookies -----------------------------------------------------------------------------
def test_the_rate_limit_counts_an_ipv6_source_by_its_64():
    limiter = SourceLimiter(3)
    same64 = ["2001:db8:1:2::%x" % i for i in range(1, 6)] + ["2001:db8:1:2:ffff::1%eth0"]
    assert [limiter.allow(a) for a in same64] == [True, True, True, False, False, False]
    assert limiter.allow("2001:db8:1:3::1")  # the next /64
    assert len(limiter) == 2
    assert source_key("::ffff:192.0.2.7") == "192.0.2.7" == source_key("192.0.2.7")
    assert source_key("2001:db8:1:2::1") == source_key("2001:db8:1:2:abcd:ef01:2345:6789")


def test_a_salon_socket_limits_ipv6_by_64(grid):
    svc, clock = grid
    svc.state.limiter = SourceLimiter(2)
    proto = svc.sockets[(0, 0, 6)].protocol
    msg = Message(Method.BINDING, Class.REQUEST, os.urandom(12), ())
    for i in range(4):
        proto.datagramReceived(encode(msg), ("2001:db8:5:5::%d" % (i + 1), 1000))
    assert len(clock.udp[(V6, 40000)].pop()) == 2 and svc.state.stats["rate_limited"] == 2


def test_a_cookie_is_bound_to_the_family_and_address_it_was_issued_to():
    jar = CookieJar(b"k" * 32)
    room = b"r" * 16
    v6 = Address("2001:db8::5", 4000)
    cookie = jar.issue(v6, room, 100.0)
    assert jar.check(cookie, v6, room, 110.0)
    for other in (Address("2001:db8::6", 4000), Address("::ffff:192.0.2.5", 4000), Address("192.0.2.5", 4000),
                  Address("2001:db8::5", 4001)):
        assert not jar.check(cookie, other, room, 110.0)


# -- real sockets ---------------------------------------------------------------------------------------
@pytest.fixture
def dual_salon():
    if not _has_ipv6_loopback():
        pytest.skip("no IPv6 loopback on this machine")
    cfg = parse("--interface", "0.0.0.0", "--interface", "::", "--port", "0", "--alt-port", "0",
                "--rcvbuf", "0").config
    svc = make_salon(reactor, cfg)
    svc.startService()
    yield svc
    pytest_twisted.blockon(defer.maybeDeferred(svc.stopService))


@pytest_twisted.inlineCallbacks
def test_a_salon_on_both_wildcards_answers_each_family_in_its_own(dual_salon):
    ports = []
    try:
        port, alt_port = dual_salon.layout.ports
        assert dual_salon.sockets[(0, 0)].interface == "0.0.0.0"
        assert dual_salon.sockets[(0, 0, 6)].interface == "::"
        for host in ("127.0.0.1", "::1"):
            proto = StunClientProtocol(reactor, FAST)
            ports.append(reactor.listenUDP(0, proto, interface=host))
            me = Address(host, ports[-1].getHost().port)
            for attrs, answerer in (((), port), (((Attr.CHANGE_REQUEST, CHANGE_PORT),), alt_port)):
                msg = Message(Method.BINDING, Class.REQUEST, os.urandom(12), attrs)
                resp = yield proto.request(msg, (host, port))
                assert resp.message.get(Attr.XOR_MAPPED_ADDRESS) == me
                assert resp.source[:2] == (host, answerer)
    finally:
        for p in ports:
            yield p.stopListening()


# -- the plain Binding fast path over IPv6 ------------------------------------------------------------
@pytest.mark.parametrize("host", ["2001:db8:77::5", "::1", "fe80::1%eth0", "::ffff:192.0.2.1"])
def test_the_ipv6_fast_answer_is_what_the_codec_encodes(host):
    from natsalon.server.binding import fast_response, xor_mapped_tail

    txid = os.urandom(12)
    request = struct.pack("!HHI", 1, 0, 0x2112A442) + txid
    fast = fast_response(request, xor_mapped_tail(host, 40123))
    plain = host.split("%", 1)[0]
    slow = encode(Message(Method.BINDING, Class.SUCCESS, txid, ((Attr.XOR_MAPPED_ADDRESS, Address(plain, 40123)),)))
    assert fast == slow and len(fast) == 44
    assert decode(fast).get(Attr.XOR_MAPPED_ADDRESS) == Address(socket.inet_ntop(socket.AF_INET6, socket.inet_pton(
        socket.AF_INET6, plain)), 40123)


def test_a_plain_ipv6_request_is_answered_on_the_fast_path(grid):
    svc, clock = grid
    proto = svc.sockets[(0, 0, 6)].protocol
    client = ("2001:db8:77::5", 6000)
    _, msg, _, data = _ask(svc, clock, (0, 0, 6), client)
    assert msg.get(Attr.XOR_MAPPED_ADDRESS) == Address(*client) and len(data) == 44
    assert proto.fast_answers == 1 and svc.state.messages == {}


@pytest_twisted.inlineCallbacks
def test_members_join_over_each_family_and_are_introduced_by_their_own_addresses(dual_salon):
    from natsalon import wire
    from natsalon.crypto.secret import derive, new_nonce

    keys = derive("room6", "s3cret")
    port = dual_salon.layout.ports[0]
    answers, ports = {}, []
    try:
        for host in ("::1", "127.0.0.1"):
            proto = StunClientProtocol(reactor, FAST)
            ports.append(reactor.listenUDP(0, proto, interface=host))
            me = Address(host, ports[-1].getHost().port)
            nonce, cookie = new_nonce(), None
            for _ in range(2):  # the cookie (bound to this family's address), then the JOIN
                msg, _ = wire.join_request(keys.room_id, nonce, (), keys.k_join, cookie=cookie)
                resp = yield proto.request(msg, (host, port), sha256_key=keys.k_join)
                ans = wire.parse_join_answer(resp.message)
                cookie = ans.cookie
            assert ans.observed == me
            answers[host] = (ans, me)
    finally:
        for p in ports:
            yield p.stopListening()
    ans, _ = answers["127.0.0.1"]
    assert ans.kind is wire.Answer.INTRODUCED and ans.peer_address == answers["::1"][1]


def test_a_reload_that_adds_a_family_names_the_interface_option_as_needing_a_restart():
    from twisted.logger import capturedLogs, formatEvent

    from natsalon.ops.reload import Reloader

    reloader = Reloader(lambda: parse("--interface", V4, "--interface", V6), parse("--interface", V4))
    with capturedLogs() as events:
        assert reloader.reload() == []
    assert "reload: interface changed but need a restart" in [formatEvent(e) for e in events]


def test_the_start_up_hint_names_a_family_without_alt_ip():
    from twisted.logger import capturedLogs, formatEvent

    for second, words in ((Family(V6), "no --alt-ip for IPv6: "), (Family(V6, V6_ALT), None)):
        svc = SalonService(UDPClock(), SalonConfig(interface=V4, alt_ip=V4_ALT, port=0, alt_port=0, rcvbuf=0,
                                                   second=second))
        with capturedLogs() as events:
            svc.startService()
        hints = [formatEvent(e) for e in events if "no --alt-ip" in formatEvent(e)]
        assert hints == ([] if words is None else [h for h in hints if h.startswith(words)]) and len(hints) == (
            0 if words is None else 1)
        svc.stopService()
