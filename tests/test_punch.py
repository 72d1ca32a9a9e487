"""The puncher on a Clock, two of them wired through a fake network."""

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from natsalon import wire
from natsalon.client.punch import _MAX_PEER_REFLEXIVE, DIRECT, LAN, CandidateKind, PairState, PunchFailed, Puncher
from natsalon.crypto.secret import derive, new_nonce, session_keys
from natsalon.stun import Address, decode

A_PUB = Address("192.0.2.10", 40000)
B_PUB = Address("192.0.2.20", 50000)
A_LAN = Address("10.1.0.2", 40000)
B_LAN = Address("10.2.0.2", 50000)


class Net:
    """Two punchers wired through a configurable fake network: ``routes``
    maps (sender, destination) to the source address the receiver sees, or
    None to drop."""

    def __init__(self, routes, lan_a=(), lan_b=(), peer_pub_a=B_PUB, peer_pub_b=A_PUB, delay=0.01, **kw):
        self.clock = Clock()
        self.delay = delay
        keys = derive("room", "s")
        self.na, self.nb = new_nonce(), new_nonce()
        self.routes = routes
        self.log = []
        self.a = Puncher(self.clock, lambda d, to: self.deliver("a", d, to), session_keys(keys, self.na, self.nb),
                         self.na, self.nb, peer_pub_a, lan_b, **kw)
        self.b = Puncher(self.clock, lambda d, to: self.deliver("b", d, to), session_keys(keys, self.nb, self.na),
                         self.nb, self.na, peer_pub_b, lan_a, **kw)

    def deliver(self, who, data, to):
        seen_from = self.routes.get((who, Address(*to)))
        self.log.append((who, Address(*to), seen_from is not None))
        if seen_from is not None:
            target = self.b if who == "a" else self.a
            self.clock.callLater(self.delay, target.datagram, data, tuple(seen_from))


def open_routes():
    return {("a", B_PUB): A_PUB, ("b", A_PUB): B_PUB}


def run(net, until=20.0, times=None):
    results = {}
    for name in ("a", "b"):
        d = getattr(net, name).start()
        d.addBoth(lambda r, name=name: results.__setitem__(name, r))
        if times is not None:
            d.addBoth(lambda r, name=name: times.__setitem__(name, net.clock.seconds()))
    t = 0.0
    while t < until and len(results) < 2:
        net.clock.advance(0.01)
        t += 0.01
    return results


def test_direct_path_verified_both_ways():
    net = Net(open_routes())
    r = run(net)
    assert r["a"].address == B_PUB and r["a"].kind == DIRECT
    assert r["b"].address == A_PUB
    assert r["a"].rtt == pytest.approx(0.02, abs=0.011)


def test_lan_preferred_over_public():
    routes = open_routes()
    routes[("a", B_LAN)] = A_LAN
    routes[("b", A_LAN)] = B_LAN
    net = Net(routes, lan_a=[A_LAN], lan_b=[B_LAN])
    r = run(net)
    assert r["a"].kind == LAN and r["a"].address == B_LAN
    assert r["b"].kind == LAN and r["b"].address == A_LAN


def test_public_wins_after_grace_when_lan_unreachable():
    # 100 ms one way: 2 x RTT (0.4 s) is above lan_grace, so the grace is lan_grace
    grace = 0.25
    verified = {}
    run(Net(open_routes(), delay=0.1, lan_grace=grace), times=verified)  # no LAN candidates: no grace
    net = Net(open_routes(), lan_a=[A_LAN], lan_b=[B_LAN], lan_grace=grace, delay=0.1)
    chosen = {}
    r = run(net, times=chosen)
    assert r["a"].kind == DIRECT and r["b"].kind == DIRECT
    assert net.clock.seconds() >= grace
    for side in ("a", "b"):
        assert chosen[side] >= verified[side] + grace - 1e-9
        assert chosen[side] <= verified[side] + grace + 0.011


def test_one_way_is_not_a_path():
    # a's probes reach b, nothing comes back: neither side may declare a path
    net = Net({("a", B_PUB): A_PUB}, timeout=2.0)
    r = run(net)
    assert r["a"].check(PunchFailed) and r["b"].check(PunchFailed)
    assert "no path verified in both directions" in str(r["a"].value)


def test_peer_reflexive_symmetric_peer():
    # b is behind a symmetric NAT: its flow to a gets port 61000, not B_PUB;
    # a (full cone) accepts anything.  a learns b's real port from b's probe.
    B_SYM = Address(B_PUB.host, 61000)
    routes = {("b", A_PUB): B_SYM, ("a", B_SYM): A_PUB}
    net = Net(routes)
    r = run(net)
    assert r["a"].address == B_SYM and r["b"].address == A_PUB


def test_forged_probes_ignored():
    net = Net(open_routes())
    other = session_keys(derive("room", "other"), net.nb, net.na)
    _, probe = wire.punch_request(net.nb, other.k_punch)
    assert not net.a.datagram(probe, tuple(B_PUB))
    assert net.a.paths[B_PUB].state is PairState.WAITING  # nothing recorded


def test_schedule_paced_and_bounded():
    net = Net({}, lan_b=[B_LAN], interval=0.1, timeout=1.0)
    d = net.a.start()
    failures = []
    d.addErrback(failures.append)
    net.clock.advance(0.05)
    assert len(net.log) == 2  # all candidates at once
    for _ in range(200):
        net.clock.advance(0.01)
    assert failures
    assert len(net.log) == 20  # 10 rounds of 2 in 1 s, then silence


class FakeSock:
    def __init__(self):
        self.written = []

    def write(self, data, addr):
        self.written.append((data, addr))


def test_unroutable_lan_candidate_does_not_delay():
    net = Net(open_routes(), lan_a=[A_LAN], lan_b=[B_LAN], lan_grace=5.0)
    deliver = net.deliver

    def send(who, data, to):
        if Address(*to) in (A_LAN, B_LAN):
            raise OSError(101, "Network is unreachable")
        deliver(who, data, to)

    net.a.send = lambda d, to: send("a", d, to)
    net.b.send = lambda d, to: send("b", d, to)
    r = run(net)
    assert r["a"].kind == DIRECT
    assert net.clock.seconds() < 0.2


def a_alone(**kw):
    """a punching towards b, who never answers; returns (net, sent) where
    sent lists a's datagrams as (destination, data)."""
    net = Net({}, lan_b=[B_LAN], **kw)
    sent = []
    net.a.send = lambda data, to: sent.append((Address(*to), data))
    net.a.start().addErrback(lambda f: f.trap(PunchFailed))
    return net, sent


def spoofed(i):
    return ("198.51.100.%d" % (i % 250 + 1), 20000 + i)


def test_replayed_probe_from_many_sources_is_bounded():
    # baseline: the schedule alone, 2 candidates every 0.1 s for 3 s
    net, baseline = a_alone(timeout=3.0)
    net.clock.pump([0.01] * 400)
    # an attacker captured one valid probe of b and replays it from 200 spoofed sources
    net, sent = a_alone(timeout=3.0)
    _, probe = wire.punch_request(net.nb, net.b.session.k_punch)
    for i in range(200):
        assert net.a.datagram(probe, spoofed(i))
        net.clock.advance(0.01)
    net.clock.pump([0.01] * 200)
    assert len(net.a.paths) <= 3  # B_PUB, B_LAN and at most the first source
    assert net.a.replays == 199
    to_spoofed = [to for to, _ in sent if to not in (B_PUB, B_LAN)]
    assert len(to_spoofed) <= 2  # one answer, one triggered probe: no schedule for it
    assert len(sent) <= len(baseline) + 2


def test_many_captured_probes_bounded_peer_reflexive():
    # 200 different valid probes (all b ever sent), each from a new source
    net, baseline = a_alone(timeout=3.0)
    net.clock.pump([0.01] * 400)
    net, sent = a_alone(timeout=3.0)
    for i in range(200):
        _, probe = wire.punch_request(net.nb, net.b.session.k_punch)
        net.a.datagram(probe, spoofed(i))
        net.clock.advance(0.01)
    net.clock.pump([0.01] * 200)
    reflexive = [p for p in net.a.paths.values() if p.kind is CandidateKind.PRFLX]
    assert len(reflexive) == _MAX_PEER_REFLEXIVE and len(net.a.paths) == 2 + _MAX_PEER_REFLEXIVE
    assert net.a.refused == 200 - _MAX_PEER_REFLEXIVE
    to_spoofed = [to for to, _ in sent if to not in (B_PUB, B_LAN)]
    assert len(to_spoofed) <= 2 * _MAX_PEER_REFLEXIVE
    assert len(sent) <= len(baseline) + 2 * _MAX_PEER_REFLEXIVE


def test_no_new_peer_reflexive_once_selected():
    net = Net(open_routes())
    r = run(net)
    assert r["a"].address == B_PUB
    sent = []
    net.a.send = lambda data, to: sent.append(Address(*to))
    _, probe = wire.punch_request(net.nb, net.b.session.k_punch)
    assert net.a.datagram(probe, ("198.51.100.1", 1234))
    assert Address("198.51.100.1", 1234) not in net.a.paths and not sent
    # the peer's own fresh probes on the path are still answered (keepalives)
    _, probe = wire.punch_request(net.nb, net.b.session.k_punch)
    assert net.a.datagram(probe, tuple(B_PUB))
    assert sent and set(sent) == {B_PUB}


class FilteredNet(Net):
    """A sits behind a filtering NAT: B's packets reach A only once A has
    sent to B (as a restricted-cone NAT does)."""

    def deliver(self, who, data, to):
        if who == "b" and not any(w == "a" and dst == B_PUB for w, dst, _ in self.log):
            self.log.append((who, Address(*to), False))
            return
        Net.deliver(self, who, data, to)


def test_first_probe_filtered_opens_in_one_round_trip_not_one_interval():
    net = FilteredNet(open_routes(), delay=0.01)
    results, times = {}, {}
    d = net.b.start()  # B's first probe is dropped by A's filter
    d.addBoth(lambda r: (results.__setitem__("b", r), times.__setitem__("b", net.clock.seconds())))
    net.clock.advance(0.005)
    d = net.a.start()  # A's first probe opens its filter and reaches B
    d.addBoth(lambda r: (results.__setitem__("a", r), times.__setitem__("a", net.clock.seconds())))
    while len(results) < 2 and net.clock.seconds() < 1.0:
        net.clock.advance(0.001)
    assert results["a"].address == B_PUB and results["b"].address == A_PUB
    # B answers A's probe and probes back at once (triggered check); without
    # it B would wait for its next scheduled probe, 100 ms after the first
    assert max(times.values()) < 0.005 + 4 * 0.01 + 0.003, times
    assert net.b.interval == 0.1


@pytest.mark.parametrize("end", ["failed", "stopped"])
def test_nothing_learnt_or_sent_once_failed_or_stopped(end):
    # a late valid request of the peer, from a new source and from a known
    # one, and a keepalive probe: claimed (not garbage), but neither
    # answered, learnt nor probed back once the puncher is done
    net, sent = a_alone(timeout=1.0)
    net.clock.advance(0.5)
    if end == "failed":
        net.clock.pump([0.1] * 6)
    else:
        net.a.stop()
    before, paths = len(sent), set(net.a.paths)
    for source in (spoofed(1), tuple(B_PUB)):
        _, probe = wire.punch_request(net.nb, net.b.session.k_punch, wire.FLAG_CONNECTED)
        assert net.a.datagram(probe, source)
    net.a.probe(B_PUB)
    net.clock.advance(5)
    assert len(sent) == before and set(net.a.paths) == paths and not net.a.peer_connected
