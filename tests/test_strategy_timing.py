"""The moment of the first shot (natsalon.client.strategy.timing): the round
trip to the salon sampled from first tries, carried in the JOIN under its
MAC, and the wait that makes both sides of a predicted or birthday pair
fire together; on a Clock, with the salon's real introducer between two
clients at different distances from it."""

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from natsalon import wire
from natsalon.client.punch import Puncher
from natsalon.client.punch.phases import Phase
from natsalon.client.strategy import HardNat, StrategySettings
from natsalon.client.strategy.runner import start_punching
from natsalon.client.strategy.timing import MIN_WAIT, SalonRtt, fire_wait, first_try
from natsalon.crypto.secret import derive, new_nonce, session_keys
from natsalon.stun import decode
from natsalon.wire.nat import APD, EI, RANDOM, NatSummary

from test_hardnat_session import Knowledge, NoSockets
from test_session import A, B, Net

K_JOIN = b"k" * 32
ROOM = b"r" * 16
RANDOM_NAT = NatSummary(True, APD, APD, RANDOM, None, 30000)
FILTERING_NAT = NatSummary(True, EI, APD, "preserving", None, 40000)


# -- pure parts ---------------------------------------------------------------------

@pytest.mark.parametrize("mine,peer,wait", [
    (0.020, 0.160, 0.070),  # the nearer side waits half the difference
    (0.160, 0.020, 0.0),  # the farther side fires at once
    (0.050, 0.050, 0.0),
    (None, 0.100, 0.0),  # an older peer: no value, no wait
    (0.100, None, 0.0),
    (0.0, 4.0, 0.5),  # capped
    (0.0100, 0.0115, 0.0),  # under MIN_WAIT: not worth a timer
])
def test_fire_wait(mine, peer, wait):
    assert fire_wait(mine, peer, cap=0.5) == pytest.approx(wait)


def test_both_sides_fire_at_the_same_instant():
    """The salon sends both introductions at T: X has its own at T + rtt_X/2
    and fires fire_wait later; both land on T + max/2."""
    for ra, rb in ((0.02, 0.16), (0.3, 0.01), (0.05, 0.05), (0.0031, 0.0032)):
        fa = ra / 2 + fire_wait(ra, rb)
        fb = rb / 2 + fire_wait(rb, ra)
        assert fa == pytest.approx(fb, abs=MIN_WAIT) and max(fa, fb) == pytest.approx(max(ra, rb) / 2)


def test_first_try_only():
    assert first_try(0.051, 0.050, 0.25)  # one send: elapsed and rtt agree
    assert not first_try(0.30, 0.05, 0.25)  # answered after the retransmission at 0.25 s
    assert first_try(0.35, 0.20, 0.25)  # the first send went out 150 ms late (a busy reactor)
    assert first_try(0.9, 0.9, 0.25)  # a long round trip is still a first try


def test_smoothed_like_srtt():
    rtt = SalonRtt()
    assert rtt.value is None
    rtt.sample(0.080)
    assert rtt.value == pytest.approx(0.080)
    rtt.sample(0.160)
    assert rtt.value == pytest.approx(0.090)  # 1/8 of the difference
    rtt.sample(-1.0)  # nonsense is ignored
    assert rtt.samples == 2


# -- on the wire --------------------------------------------------------------------

def test_join_carries_the_rtt_under_its_mac():
    _, raw = wire.join_request(ROOM, b"n" * 16, [], K_JOIN, salon_rtt=0.0423)
    assert wire.verify_peer_join(raw, K_JOIN, ROOM).salon_rtt == pytest.approx(0.0423)
    assert wire.parse_join_request(decode(raw)).salon_rtt == pytest.approx(0.0423)
    i = raw.index(wire.nat.pack_rtt(0.0423))
    bad = raw[:i] + bytes([raw[i] ^ 1]) + raw[i + 1:]
    with pytest.raises(wire.WireError):
        wire.verify_peer_join(bad, K_JOIN, ROOM)


def test_rtt_absent_short_or_long():
    _, raw = wire.join_request(ROOM, b"n" * 16, [], K_JOIN)
    assert wire.verify_peer_join(raw, K_JOIN, ROOM).salon_rtt is None  # an older peer
    assert wire.nat.unpack_rtt(wire.nat.pack_rtt(0.0)) is None
    assert wire.nat.unpack_rtt(wire.nat.pack_rtt(1e9)) == pytest.approx(0xFFFFFFFF / 1e6)
    assert wire.nat.unpack_rtt(wire.nat.pack_rtt(0.5) + b"more") == pytest.approx(0.5)
    with pytest.raises(wire.WireError):
        wire.nat.unpack_rtt(b"\x00\x01")


# -- start_punching -----------------------------------------------------------------

def _puncher(clock, sent):
    keys = derive("room", "s")
    mine, theirs = new_nonce(), new_nonce()
    return Puncher(clock, lambda d, to: sent.append((clock.seconds(), to)), session_keys(keys, mine, theirs),
                   mine, theirs, ("192.0.2.9", 4000))


def test_start_punching_waits_then_starts_both():
    clock, sent, started = Clock(), [], []
    p = _puncher(clock, sent)
    d = start_punching(clock, p, 0.07, lambda: started.append(clock.seconds()))
    clock.advance(0.069)
    assert sent == [] and started == [] and p.phase is Phase.IDLE
    clock.advance(0.001)
    assert sent == [(0.07, ("192.0.2.9", 4000))] and started == [0.07] and p.phase is Phase.PUNCHING
    got = []
    d.addErrback(got.append)
    p.stop()
    assert got and got[0].check(defer.CancelledError)


def test_start_punching_cancelled_while_waiting():
    clock, sent = Clock(), []
    p = _puncher(clock, sent)
    d = start_punching(clock, p, 0.07, lambda: sent.append("runner"))
    got = []
    d.addErrback(got.append)
    d.cancel()
    assert got[0].check(defer.CancelledError) and p.phase is Phase.STOPPED
    clock.advance(1)
    assert sent == [] and clock.getDelayedCalls() == []


def test_start_punching_stopped_while_waiting():
    clock, sent = Clock(), []
    p = _puncher(clock, sent)
    got = []
    start_punching(clock, p, 0.07, lambda: sent.append("runner")).addErrback(got.append)
    p.stop()
    clock.advance(1)
    assert got[0].check(defer.CancelledError) and sent == []


def test_start_punching_at_once():
    clock, sent = Clock(), []
    p = _puncher(clock, sent)
    start_punching(clock, p, 0.0, lambda: None)
    assert len(sent) == 1 and p.phase is Phase.PUNCHING


# -- two clients, one near the salon and one far --------------------------------------

class Distant(Net):
    """Each host at its own one-way delay from everything (the salon adds none)."""

    def __init__(self, one_way) -> None:
        super().__init__()
        self.one_way = one_way
        self.first = {}  #: first datagram from a host to the other host: when

    def send(self, src, dst, data):
        target = self.nodes.get(dst)
        if target is None:
            return
        if {src, dst} == {A, B}:
            self.first.setdefault(src, self.clock.seconds())
        delay = self.one_way.get(src, 0.0) + self.one_way.get(dst, 0.0)
        self.clock.callLater(delay, target.datagramReceived, data, src)


def _pair(net, summary_a, summary_b, **settings):
    net.salon()
    a, ca, ea = net.client(A)
    b, cb, eb = net.client(B)
    ca.hardnat = HardNat(Knowledge(summary_a), NoSockets, StrategySettings(**settings))
    cb.hardnat = HardNat(Knowledge(summary_b), NoSockets, StrategySettings(**settings))
    a.start()
    net.run(2.5)  # a waits in the room (two polls: three samples)
    b.start()
    net.run(1.0)
    return (a, ca, ea), (b, cb, eb)


def test_hard_pair_fires_together():
    """A 10 ms from the salon, B 80 ms: the salon introduces both at once;
    A has its introduction 70 ms before B and waits those 70 ms, so both
    sides' first probes leave at the same instant."""
    net = Distant({A: 0.010, B: 0.080})
    (a, ca, ea), (b, cb, eb) = _pair(net, RANDOM_NAT, FILTERING_NAT)
    # (the test net runs the clock in 10 ms steps: a hop may arrive one step late)
    ra, rb = ca.salon_rtt.value, cb.salon_rtt.value
    assert ra == pytest.approx(0.020, abs=0.021) and rb == pytest.approx(0.160, abs=0.021)
    plan_a = [e for e in ea if e["event"] == "strategy"][0]
    plan_b = [e for e in eb if e["event"] == "strategy"][0]
    assert plan_a["strategy"] == plan_b["strategy"] == "birthday"
    assert plan_a["wait_ms"] == pytest.approx((rb - ra) / 2 * 1000, abs=0.1) and "wait_ms" not in plan_b
    assert net.first[A] - ca.introduced_at == pytest.approx((rb - ra) / 2, abs=0.011)
    assert net.first[A] == pytest.approx(net.first[B], abs=0.021)
    a.stop()
    b.stop()


def test_coordination_off_fires_at_the_introduction():
    net = Distant({A: 0.010, B: 0.080})
    (a, ca, ea), (b, cb, eb) = _pair(net, RANDOM_NAT, FILTERING_NAT, coordinate=False)
    assert "wait_ms" not in [e for e in ea if e["event"] == "strategy"][0]
    assert net.first[A] - ca.introduced_at < 0.011
    a.stop()
    b.stop()


def test_plain_pairs_never_wait():
    net = Distant({A: 0.010, B: 0.080})
    (a, ca, ea), (b, cb, eb) = _pair(net, FILTERING_NAT, FILTERING_NAT)
    assert [e for e in ea if e["event"] == "strategy"] == []
    assert net.first[A] - ca.introduced_at < 0.011
    net.run(1.0)
    assert ca.phase.value == cb.phase.value == "connected"
    a.stop()
    b.stop()
