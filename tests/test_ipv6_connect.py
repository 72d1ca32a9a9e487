"""Issue 15, the client's half, without namespaces: which IPv6 addresses
are gathered, what the JOIN carries, how each peer address is paired with
the socket of its family, how the puncher chooses between families (lower
RTT, IPv6 on a tie, a grace for a pending IPv6 pair), the IPv6 socket's
demultiplexing and Binding, the options, and a connect() over both
families on loopback (a real dual-stack salon)."""

from __future__ import annotations

import socket
import types

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.error import InvalidAddressError
from twisted.internet.task import Clock

from natsalon import wire
from natsalon.client.demux import ClientSocket
from natsalon.client.families import (
    Families, FamilySocket, family, ipv6_candidates, join_candidates, learn_reflexive,
)
from natsalon.client.options import DEFAULTS, OptionError, check
from natsalon.client.connection import Connection
from natsalon.client.punch import DIRECT, Candidate, CandidateKind, CandidatePair, LocalSocket, PairState, Path, Puncher
from natsalon.client.punch.nomination import FLAG_NOMINATED, Nomination
from natsalon.client.punch.puncher import preference
from natsalon.crypto.aead import PlainCodec, Sealer
from natsalon.crypto.secret import derive, new_nonce, session_keys
from natsalon.net.interfaces import global_ipv6_addresses, is_global_ipv6
from natsalon.stun import Address, Attr, Class, Message, Method, decode, encode
from natsalon.testing import FakeDatagramTransport
from loopback6 import has_ipv6_loopback as _has_ipv6_loopback

A4, B4 = Address("192.0.2.10", 40000), Address("198.51.100.20", 50000)
A6, B6 = Address("2001:db8:1::2", 40001), Address("2001:db8:2::2", 50001)


# -- gathering -----------------------------------------------------------------
def test_global_ipv6_addresses_keep_global_unicast_and_documentation_only():
    found = {"2001:db8:1::2", "2a00:1450::5", "fe80::1", "::1", "fd00::7", "::ffff:192.0.2.1", "10.0.0.2",
             "ff02::1", "::"}
    assert global_ipv6_addresses(found=found) == ["2001:db8:1::2", "2a00:1450::5"]
    assert global_ipv6_addresses(limit=1, found=found) == ["2001:db8:1::2"]
    assert is_global_ipv6("2001:db8::1%eth0") and not is_global_ipv6("not an address")


def test_join_carries_both_families_ipv6_first_at_most_half():
    v6 = ipv6_candidates(["2001:db8:1::2", "2001:db8:1::3"], 4000, reflexive=Address("2001:db8::1:1", 4000))
    assert v6[0] == Address("2001:db8::1:1", 4000) and len(v6) == 3
    # a firewall keeps the host's address: the reflexive endpoint is no new candidate
    assert ipv6_candidates(["2001:db8:1::2"], 4000, Address("2001:db8:1::2", 4000)) == [Address("2001:db8:1::2", 4000)]
    v4 = [Address("10.0.0.%d" % i, 5000) for i in range(1, 9)]
    many6 = [Address("2001:db8:1::%d" % i, 4000) for i in range(1, 7)]
    out = join_candidates(v4, many6)
    assert len(out) == wire.MAX_CANDIDATES and out[:4] == many6[:4] and out[4:] == v4[:4]
    keys = derive("room", "s")
    msg, raw = wire.join_request(keys.room_id, new_nonce(), out, keys.k_join)
    peer = wire.verify_peer_join(raw, keys.k_join, keys.room_id)
    assert list(peer.candidates) == out


# -- pairing -------------------------------------------------------------------
def _puncher(peer_public=B4, peer_lan=(), timeout=1.5):
    keys = derive("room", "s")
    na, nb = new_nonce(), new_nonce()
    return Puncher(Clock(), lambda d, a: None, session_keys(keys, na, nb), na, nb, peer_public, peer_lan,
                   timeout=timeout)


def _pairs(puncher):
    return {(p.local.name, p.address, p.kind) for p in puncher.pairs.values()}


def test_each_peer_address_goes_to_the_socket_of_its_family():
    lan = [Address("10.2.0.2", 50000), B6]
    p = _puncher(peer_lan=lan)
    second = types.SimpleNamespace(local=LocalSocket(lambda d, a: None, "ipv6"), port=None)
    assert Families(4, second).arm(p, B4, lan, timeout=10.0) == 1
    assert _pairs(p) == {("default", Address("10.2.0.2", 50000), CandidateKind.HOST),
                         ("default", B4, CandidateKind.SRFLX), ("ipv6", B6, CandidateKind.SRFLX)}
    assert p.timeout == 10.0  # strategy none's short punch is for IPv4 only


def test_without_an_ipv6_socket_ipv6_addresses_are_dropped():
    p = _puncher(peer_lan=[B6])
    assert Families(4).arm(p, B4, [B6], timeout=10.0) == 0
    assert _pairs(p) == {("default", B4, CandidateKind.SRFLX)} and p.timeout == 1.5


def test_an_ipv6_only_client_drops_ipv4_and_probes_ipv6_as_srflx():
    p = _puncher(peer_public=B6, peer_lan=[Address("10.2.0.2", 50000), Address("2001:db8:2::3", 50000)])
    Families(6).arm(p, B6, [Address("10.2.0.2", 50000), Address("2001:db8:2::3", 50000)])
    assert _pairs(p) == {("default", B6, CandidateKind.SRFLX),
                         ("default", Address("2001:db8:2::3", 50000), CandidateKind.SRFLX)}


class Net:
    """Two punchers, each with an IPv4 (default) and an IPv6 socket, wired
    through a fake network: ``delays`` maps a family to the one-way delay
    (None: that family drops everything), or to a function of the time a
    datagram leaves and its sender; ``controlling``: the side whose nonce is the lower
    (None: random nonces); ``starts``: when each side starts punching."""

    def __init__(self, delays, controlling=None, starts=None):
        self.clock = Clock()
        self.delays = delays
        self.starts = starts or {}
        keys = derive("room", "s")
        na, nb = new_nonce(), new_nonce()
        if controlling is not None:
            lo, hi = b"\x01" + na[1:], b"\x02" + nb[1:]
            na, nb = (lo, hi) if controlling == "a" else (hi, lo)
        self.six = {}
        self.punchers = {}
        for me, mine, theirs, my4, my6, peer4 in (("a", na, nb, A4, A6, B4), ("b", nb, na, B4, B6, A4)):
            p = Puncher(self.clock, lambda d, to, me=me, src=my4: self.deliver(me, src, d, to),
                        session_keys(keys, mine, theirs), mine, theirs, peer4)
            self.six[me] = LocalSocket(lambda d, to, me=me, src=my6: self.deliver(me, src, d, to), "ipv6")
            self.punchers[me] = p
        for me, peer4, peer6 in (("a", B4, B6), ("b", A4, A6)):
            second = types.SimpleNamespace(local=self.six[me], port=None)
            Families(4, second).arm(self.punchers[me], peer4, [peer6])

    def deliver(self, me, src, data, to):
        delay = self.delays[family(to[0])]
        if callable(delay):
            delay = delay(self.clock.seconds(), me)
        if delay is not None:
            other = "b" if me == "a" else "a"
            local = self.six[other] if family(to[0]) == 6 else None
            self.clock.callLater(delay, self.punchers[other].datagram, data, tuple(src), local)

    def run(self):
        results = {}
        for name, p in self.punchers.items():
            def start(p=p, name=name):
                p.start().addBoth(lambda r: results.__setitem__(name, r))
            self.clock.callLater(self.starts.get(name, 0.0), start)
        for _ in range(4000):
            if len(results) == 2:
                break
            self.clock.advance(0.0005)
        return results


def test_no_ipv4_path_but_an_ipv6_one_is_direct_from_the_ipv6_socket():
    r = Net({4: None, 6: 0.01}).run()
    assert r["a"].address == B6 and r["a"].kind == DIRECT and r["a"].local.name == "ipv6"
    assert r["b"].address == A6


def test_ipv6_wins_a_tie():
    # IPv4 verifies first (0.5 ms sooner one way); it waits the grace, IPv6
    # verifies within it, and the 1 ms of RTT between them is a tie
    r = Net({4: 0.010, 6: 0.0105}).run()
    assert r["a"].address == B6 and r["b"].address == A6


def test_the_lower_rtt_wins_across_families():
    r = Net({4: 0.010, 6: 0.020}).run()
    assert r["a"].address == B4 and r["b"].address == A4
    assert r["a"].rtt < 0.03


def test_ipv6_verified_first_is_taken_at_once():
    net = Net({4: 0.020, 6: 0.010})
    r = net.run()
    assert r["a"].address == B6 and net.clock.seconds() < 0.045


# -- one path for both sides (the controlling side nominates) -------------------
def _v6_slows_down(now, sender):
    """IPv6 one way: 5 ms, but 40 ms from a to b after t = 4 ms (IPv4: 12 ms
    all along).  a's first probe and b's answer take 5 ms each: a measures
    IPv6 at 10 ms (IPv4 24 ms) and prefers it; b's first probe is answered
    at 5 ms, 40 ms away: b measures IPv6 at 45 ms and prefers IPv4."""
    return 0.040 if sender == "a" and now >= 0.004 else 0.005


def _disagreeing(controlling):
    return Net({4: 0.012, 6: _v6_slows_down}, controlling=controlling)


def test_each_side_choosing_alone_settles_on_different_families():
    # the defect: both sides decide by their own RTTs (as both did before)
    net = _disagreeing("a")
    for p in net.punchers.values():
        p.nomination = Nomination(controlling=True)
    r = net.run()
    assert r["a"].address == B6 and r["b"].address == A4


@pytest.mark.parametrize("controlling, expected", [("a", 6), ("b", 4)])
def test_the_sides_agree_on_the_controlling_sides_choice(controlling, expected):
    net = _disagreeing(controlling)
    assert net.punchers[controlling].nomination.controlling
    other = "b" if controlling == "a" else "a"
    moved = []
    net.punchers[other].on_moved = moved.append
    r = net.run()
    # each chose at once, by its own RTTs (nothing waits for the nomination) ...
    assert (family(r["a"].address.host), family(r["b"].address.host)) == (6, 4)
    net.clock.pump([0.005] * 20)  # ... and the nomination comes half a round trip later
    a, b = net.punchers["a"].selected, net.punchers["b"].selected
    assert family(a.address.host) == family(b.address.host) == expected
    follower = net.punchers[other]
    assert follower.selected_pair is follower.nomination.pair
    assert [m.address for m in moved] == [follower.selected.address]


def test_a_nomination_known_while_punching_is_taken_at_once():
    # a (controlling) chose IPv6 before b verified anything: b takes it, even
    # though b's own measurements prefer IPv4 (as in the test above)
    net = Net({4: 0.012, 6: _v6_slows_down}, controlling="a", starts={"b": 0.060})
    r = net.run()
    assert r["a"].address == B6 and r["b"].address == A6
    assert net.punchers["b"].selected_pair is net.punchers["b"].nomination.pair


def test_the_controlled_side_follows_a_late_nomination_once_connected():
    # a (controlling) prefers IPv6, b chose IPv4 before hearing it (as with an
    # older peer, or the nomination lost): a's next probe on its path moves b
    net = _disagreeing("a")
    a, b = net.punchers["a"], net.punchers["b"]
    b.nomination = Nomination(controlling=True)
    r = net.run()
    assert r["a"].address == B6 and r["b"].address == A4
    moved = []
    b.nomination = Nomination(controlling=False)
    b.on_moved = moved.append
    a.probe(B6)  # a keepalive: it carries the nomination
    net.clock.pump([0.005] * 20)
    assert [m.address for m in moved] == [A6] and b.selected.address == A6 and b.selected.local.name == "ipv6"
    a.probe(B6)
    net.clock.pump([0.005] * 20)
    assert len(moved) == 1  # the same nomination again moves nothing


def test_only_the_controlling_side_nominates_and_only_its_selected_pair():
    net = Net({4: 0.010, 6: 0.0105}, controlling="a")
    seen = []
    for name, p in net.punchers.items():
        real = p.datagram

        def spy(data, addr, local=None, name=name, real=real):
            seen.append((name, family(addr[0]), wire.parse_punch(
                data, net.punchers[name].session.k_punch, net.punchers[name].peer_nonce).flags))
            return real(data, addr, local)
        p.datagram = spy
    net.run()
    net.clock.pump([0.005] * 10)
    nominating = {(to, fam) for to, fam, flags in seen if flags & FLAG_NOMINATED}
    assert nominating == {("b", 6)}  # from a, on its IPv6 path only


def test_a_relayed_nomination_is_not_followed_and_the_latest_counts():
    n = Nomination(controlling=False)
    relay = LocalSocket(lambda d, a: None, "relay", relayed=("203.0.113.10", 3478))
    p4 = CandidatePair(LocalSocket(lambda d, a: None), Candidate(B4, CandidateKind.SRFLX))
    pr = CandidatePair(relay, Candidate(B4, CandidateKind.SRFLX))
    p6 = CandidatePair(LocalSocket(lambda d, a: None, "ipv6"), Candidate(B6, CandidateKind.SRFLX))
    n.heard(pr, FLAG_NOMINATED)
    assert n.pair is None
    n.heard(p4, 0)
    assert n.pair is None and n.chosen() is None
    n.heard(p4, FLAG_NOMINATED | wire.FLAG_CONNECTED)
    assert n.pair is p4 and n.chosen() is None  # not verified here yet
    p4.state = PairState.VERIFIED
    assert n.chosen() is p4
    n.heard(p6, FLAG_NOMINATED)  # the latest nomination counts
    assert n.pair is p6 and n.chosen() is None
    assert Nomination(controlling=True).flag(p4, p4) == FLAG_NOMINATED and n.flag(p4, p4) == 0


def test_a_tie_is_a_share_of_the_rtt_on_long_paths():
    def verified(addr, rtt):
        pair = CandidatePair(LocalSocket(lambda d, a: None), Candidate(addr, CandidateKind.SRFLX))
        pair.state, pair.rtt = PairState.VERIFIED, rtt
        return pair
    # 5 ms on a short path, 10 % of the IPv6 RTT on a long one
    assert min([verified(B4, 0.0100), verified(B6, 0.0145)], key=preference).address == B6
    assert min([verified(B4, 0.0100), verified(B6, 0.0155)], key=preference).address == B4
    assert min([verified(B4, 0.200), verified(B6, 0.215)], key=preference).address == B6
    assert min([verified(B4, 0.200), verified(B6, 0.230)], key=preference).address == B4


def test_without_encryption_frames_from_another_verified_pair_are_taken():
    keys = session_keys(derive("room", "s"), new_nonce(), new_nonce())
    p = _puncher()
    path = p.add_candidate(B6, CandidateKind.SRFLX)
    path.state = PairState.VERIFIED
    other = p.add_candidate(B4, CandidateKind.SRFLX)
    conn = Connection(Clock(), None, encrypt=False)
    conn.attach(p, keys, Path(B6, DIRECT, 0.01, CandidateKind.SRFLX))
    got = []
    conn.set_receiver(got.append)
    conn.frame_received(PlainCodec.seal(b"a"), tuple(B4))  # a candidate, not verified: no
    other.state = PairState.VERIFIED
    for frame, src in ((b"b", B4), (b"c", B6), (b"d", Address("192.0.2.99", 1))):
        conn.frame_received(PlainCodec.seal(frame), tuple(src))
    assert got == [b"b", b"c"] and conn.rejected == 2


# -- the IPv6 socket -----------------------------------------------------------
def _family_socket():
    clock = Clock()
    owner = ClientSocket(clock)
    got = {"frames": [], "punches": []}
    owner.on_frame = lambda data, addr: got["frames"].append(addr)
    owner.on_punch = lambda data, addr, local=None: got["punches"].append((addr, local)) or True
    sock = FamilySocket(owner, clock)
    sock.makeConnection(FakeDatagramTransport("::", 4000))
    return clock, sock, got


def test_the_ipv6_socket_learns_its_reflexive_endpoint_and_passes_the_rest_on():
    clock, sock, got = _family_socket()
    d = learn_reflexive(sock, ("2001:db8::10", 3478))
    clock.advance(0)
    (data, to), = sock.transport.pop()
    req = decode(data)
    assert to == ("2001:db8::10", 3478) and req.method == Method.BINDING
    seen = Address("2001:db8::1:1", 61000)
    answer = encode(Message(Method.BINDING, Class.SUCCESS, req.transaction_id, ((Attr.XOR_MAPPED_ADDRESS, seen),)))
    sock.datagramReceived(answer, ("2001:db8::10", 3478, 0, 0))
    assert d.result == seen
    keys = derive("room", "s")
    sock.datagramReceived(Sealer(keys.k_join, 0).seal(b"x"), ("2001:db8:2::2", 50001, 0, 0))
    _, probe = wire.punch_request(new_nonce(), keys.k_join, 0)
    sock.datagramReceived(probe, ("2001:db8:2::2", 50001, 0, 0))
    assert got["frames"] == [("2001:db8:2::2", 50001)]
    assert got["punches"] == [(("2001:db8:2::2", 50001), sock.local)]


def test_no_answer_to_the_binding_is_no_reflexive_endpoint():
    clock, sock, _ = _family_socket()
    d = learn_reflexive(sock, ("2001:db8::10", 3478))
    clock.advance(10)
    assert d.result is None


class _Refusing(FakeDatagramTransport):
    def write(self, packet, addr=None):
        raise InvalidAddressError(addr[0], "IPv4 port write() called with IPv6 address")


def test_a_send_to_the_other_family_is_no_route():
    sock = ClientSocket(Clock())
    sock.makeConnection(_Refusing())
    with pytest.raises(OSError, match="no route from this socket"):
        sock.write(b"x", B6)


# -- options -------------------------------------------------------------------
BASE = dict(DEFAULTS, server="192.0.2.1", room="r", secret="s")


def test_server6_and_no_ipv6_options():
    o = check(dict(BASE, server6="[2001:db8::10]:3479"), environ={})
    assert o.server6 == ("2001:db8::10", 3479) and o.ipv6
    assert check(dict(BASE, server6="salon.example.org"), environ={}).server6 == ("salon.example.org", 3478)
    assert check(dict(BASE, **{"no-ipv6": True}), environ={}).ipv6 is False
    assert check(dict(BASE, server="[2001:db8::10]"), environ={}).server == ("2001:db8::10", 3478)
    for change, message in (({"server": "[::1]", "no-ipv6": True}, "--no-ipv6: the salon ::1 is IPv6"),
                            ({"server6": "::1", "no-ipv6": True}, "--server6: not with --no-ipv6")):
        with pytest.raises(OptionError, match="^" + message.replace("-", r"\-")):
            check(dict(BASE, **change), environ={})


# -- loopback --------------------------------------------------------------------

@pytest_twisted.inlineCallbacks
def test_connect_over_both_families_on_loopback_prefers_ipv6():
    """A salon on ``::`` (IPv4 beside it); both clients join over IPv4 and
    learn their IPv6 endpoint ([::1]) from the salon's IPv6 address; both
    families verify on loopback, and IPv6 wins the tie."""
    if not _has_ipv6_loopback():
        pytest.skip("no IPv6 loopback on this machine")
    from natsalon.client.api import connect
    from natsalon.server.service import SalonConfig, SalonService

    svc = SalonService(reactor, SalonConfig(interface="::", port=0, alt_port=0, rcvbuf=0))
    svc.startService()
    port = svc.layout.ports[0]
    conns = []
    try:
        ds = [connect(reactor, ("127.0.0.1", port), "both", b"secret", interface="127.0.0.1", timeout=10, lan=False,
                      server6=("::1", port)) for _ in range(2)]
        conns = yield defer.gatherResults(ds)
        got = defer.Deferred()
        conns[1].set_receiver(got.callback)
        assert [c.path.address.host for c in conns] == ["::1", "::1"] and conns[0].path.kind == DIRECT
        assert conns[0].send(b"over six")
        assert (yield got) == b"over six"
    finally:
        for c in conns:
            c.close()
        yield defer.maybeDeferred(svc.stopService)


class _Resolver:
    """``reactor.nameResolver`` answering from a table of (name, family) -> addresses."""

    def __init__(self, table):
        self.table = table

    def resolveHostName(self, receiver, host, port, addressTypes=None, transportSemantics="TCP"):
        from twisted.internet.address import IPv6Address

        kind = addressTypes[0]
        receiver.resolutionBegan(None)
        for ip in self.table.get((host, 6 if kind is IPv6Address else 4), ()):
            receiver.addressResolved(kind("UDP", ip, port))
        receiver.resolutionComplete()


def test_the_salons_ipv6_address_from_server6_or_the_names_aaaa():
    from twisted.internet.error import DNSLookupError

    from natsalon.client.api import resolve_server6, resolve_servers

    fake = types.SimpleNamespace(nameResolver=_Resolver({
        ("salon.test", 4): ["192.0.2.1"], ("salon.test", 6): ["2001:db8::1", "2001:db8::2"],
        ("six.test", 6): ["2001:db8::6"]}))
    assert resolve_server6(fake, "salon.test:3479").result == ("2001:db8::1", 3479)
    assert resolve_server6(fake, "192.0.2.1", "[2001:db8::9]:4000").result == ("2001:db8::9", 4000)
    assert resolve_server6(fake, "192.0.2.1").result is None
    assert resolve_server6(fake, "192.0.2.1", ("six.test", 3478)).result == ("2001:db8::6", 3478)
    failed = []
    resolve_server6(fake, "192.0.2.1", "none.test").addErrback(lambda f: failed.append(f.trap(DNSLookupError)))
    assert failed == [DNSLookupError]
    # a name with IPv6 alone is an IPv6-only salon
    assert resolve_servers(fake, "six.test").result == [("2001:db8::6", 3478)]
    assert resolve_servers(fake, "salon.test").result == [("192.0.2.1", 3478)]


def test_natclient_takes_server6_and_no_ipv6():
    from twisted.python import usage

    from natsalon.client.tap import Options

    o = Options()
    o.parseOptions(["--server", "192.0.2.1", "--room", "r", "--secret", "s", "--server6", "[2001:db8::1]"])
    assert o.checked.server6 == ("2001:db8::1", 3478) and o.checked.ipv6
    with pytest.raises(usage.UsageError, match="--server6: not with --no-ipv6"):
        Options().parseOptions(["--server", "192.0.2.1", "--room", "r", "--secret", "s", "--server6", "::1",
                                "--no-ipv6"])


@pytest_twisted.inlineCallbacks
def test_the_ipv6_socket_takes_ipv6_only_so_both_families_share_a_port():
    if not _has_ipv6_loopback():
        pytest.skip("no IPv6 loopback on this machine")
    from natsalon.client.families import listen_v6_only

    owner = ClientSocket(reactor)
    v4 = reactor.listenUDP(0, owner, interface="0.0.0.0")
    second = FamilySocket(owner, reactor)
    second.port = listen_v6_only(reactor, v4.getHost().port, second)
    try:
        assert second.port.getHost().port == v4.getHost().port
        assert second.port.getHandle().getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
        families = Families(4, second)
    finally:
        yield defer.maybeDeferred(v4.stopListening)
    families.close()
    assert second.port is None
