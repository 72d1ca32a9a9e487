"""The client machine with the hard-NAT kit, on a Clock (the in-memory
network and real salon of test_session): the JOIN does not wait for the NAT
summary, which follows in an updated JOIN; both sides choose the same
strategy whichever summary comes last, and strategy none says "no direct
path" long before the punch timeout."""

import pytest
from twisted.internet import defer

from natsalon.client.errors import PunchFailed
from natsalon.client.families import Families, FamilySocket
from natsalon.client.session import Phase
from natsalon.client.strategy import HardNat, StrategySettings
from natsalon.stun import Address, Class, Method, StunDecodeError, decode
from natsalon.wire.nat import APD, EI, RANDOM, NatSummary

from test_session import A, B, SALON, Net

RANDOM_NAT = NatSummary(True, APD, APD, RANDOM, None, 30000)


class Knowledge:
    """Hands out the summaries it is told, when it is told."""

    def __init__(self, summary=None):
        self.summary_value = summary
        self.pending = []

    def summary(self):
        d = defer.Deferred()
        if self.summary_value is not None:
            d.callback(self.summary_value)
        else:
            self.pending.append(d)
        return d


class NoSockets:
    """A pool that cannot open sockets (the spray then stops opening)."""

    opened = 0
    sockets = ()

    def open(self):
        raise OSError("no extra sockets here")

    def close(self, keep=None):
        pass


def kit(knowledge, **settings):
    return HardNat(knowledge, NoSockets, StrategySettings(**settings))


class Walled(Net):
    """No direct path between A and B (both reach the salon)."""

    def send(self, src, dst, data):
        if {src, dst} == {A, B}:
            return
        super().send(src, dst, data)


def test_none_says_no_direct_path_quickly():
    net = Walled()
    net.salon()
    a, ca, ea = net.client(A, punch_timeout=10.0)
    b, cb, eb = net.client(B, punch_timeout=10.0)
    ca.hardnat, cb.hardnat = kit(Knowledge(RANDOM_NAT)), kit(Knowledge(RANDOM_NAT))
    failures = []
    for m in (a, b):
        m.when_connected(fail_after_failures=1).addBoth(failures.append)
    a.start()
    net.run(0.5)
    b.start()
    net.run(0.2)
    assert ca.phase is cb.phase is Phase.PUNCHING
    introduced = ca.introduced_at
    for events in (ea, eb):
        chosen = [e for e in events if e["event"] == "strategy"]
        assert chosen and chosen[0]["strategy"] == "none" and "no direct path" in chosen[0]["reason"]
    net.run(1.6)
    assert len(failures) == 2 and all(f.check(PunchFailed) for f in failures)
    assert "no direct path" in failures[0].getErrorMessage()
    assert net.clock.seconds() - introduced < 3.0


def test_join_does_not_wait_for_the_summary_and_updates_it():
    net = Net()
    intro = net.salon()
    a, ca, _ = net.client(A)
    knowledge = Knowledge()
    ca.hardnat = kit(knowledge)
    a.start()
    net.run(0.5)
    assert ca.phase is Phase.WAITING and intro.rooms.members() == 1  # registered at once, NAT pending
    summary = NatSummary(True, EI, APD, "preserving", None, 40000)
    knowledge.pending[0].callback(summary)
    net.run(0.05)  # the update goes at once, not at the next poll
    b, cb, eb = net.client(B)
    cb.hardnat = kit(Knowledge(RANDOM_NAT))
    b.start()
    net.run(0.1)
    # b was told a's summary: random symmetric vs a filtering EIM NAT is birthday for both
    chosen = [e for e in eb if e["event"] == "strategy"]
    assert chosen == [{"event": "strategy", "strategy": "birthday", "role": "spray", "nat": "random",
                       "peer_nat": "filtering"}]
    a.stop()
    b.stop()


def test_stop_while_the_summary_is_pending():
    net = Net()
    net.salon()
    a, ca, _ = net.client(A)
    knowledge = Knowledge()
    ca.hardnat = kit(knowledge)
    a.start()
    net.run(0.2)
    a.stop()
    assert knowledge.pending[0].called  # cancelled
    knowledge.pending[0].addErrback(lambda f: None)
    net.run(5)
    assert ca.phase is Phase.STOPPED


class Watched(Net):
    """Records when each host first sends to the other; ``drop_push`` loses
    the salon's pushed JOIN indications to that host."""

    def __init__(self, drop_push=None):
        super().__init__()
        self.first = {}
        self.drop_push = drop_push
        self.dropped = 0

    def send(self, src, dst, data):
        if {src, dst} == {A, B}:
            self.first.setdefault(src, self.clock.seconds())
        if src == SALON and dst == self.drop_push and _indication(data):
            self.dropped += 1
            return
        super().send(src, dst, data)


def _indication(data):
    try:
        msg = decode(data)
    except StunDecodeError:
        return False
    return msg.method == Method.JOIN and msg.cls == Class.INDICATION


def _strategy(events):
    return [e["strategy"] for e in events if e["event"] == "strategy"]


def _arrive_while_pending(net, a_nat, b_nat, **settings):
    """a waits in the room with its summary pending; b (summary known) arrives;
    then a's probe ends."""
    net.salon()
    a, ca, ea = net.client(A)
    b, cb, eb = net.client(B)
    ka = Knowledge()
    ca.hardnat, cb.hardnat = kit(ka, **settings), kit(Knowledge(b_nat), **settings)
    a.start()
    net.run(0.5)
    b.start()
    net.run(0.2)
    return (a, ca, ea), (b, cb, eb), ka


def test_summary_after_the_introduction_both_choose_together():
    """b (random symmetric) meets a whose summary is pending: both hold
    (the strategy may be none); a's probe ends, a's update reaches b in the
    salon's push as a's answer brings b's: both choose birthday, and b sent
    nothing to a before."""
    net = Watched()
    (a, ca, ea), (b, cb, eb), ka = _arrive_while_pending(net, None, RANDOM_NAT)
    assert ca.phase is cb.phase is Phase.PUNCHING
    assert net.first == {} and _strategy(ea) == _strategy(eb) == []
    decided_at = net.clock.seconds()
    ka.pending[0].callback(NatSummary(True, EI, APD, "preserving", None, 40000))
    net.run(0.1)
    assert _strategy(ea) == _strategy(eb) == ["birthday"]
    assert min(net.first.values()) >= decided_at
    a.stop()
    b.stop()


def test_summary_after_the_introduction_plain_meanwhile():
    """A filtering peer: plain punching at once, which connects; the late
    summary adds nothing (plain against plain)."""
    net = Watched()
    filtering = NatSummary(True, EI, APD, "preserving", None, 40000)
    (a, ca, ea), (b, cb, eb), ka = _arrive_while_pending(net, None, filtering)
    assert ca.phase is cb.phase is Phase.CONNECTED  # not held
    ka.pending[0].callback(filtering)
    net.run(0.1)
    assert _strategy(ea) == _strategy(eb) == []
    a.stop()
    b.stop()


def test_summary_never_comes_plain_after_the_wait():
    """The peer's summary stays pending (its probe never ends): a held side
    punches plainly after summary_wait."""
    net = Watched()
    (a, ca, ea), (b, cb, eb), ka = _arrive_while_pending(net, None, RANDOM_NAT, summary_wait=1.0)
    introduced = cb.introduced_at
    net.run(0.7)
    assert B not in net.first
    net.run(0.5)
    assert net.first[B] - introduced == pytest.approx(1.0, abs=0.02)
    assert ca.phase is cb.phase is Phase.CONNECTED and _strategy(eb) == []
    a.stop()
    b.stop()


def test_lost_push_the_poll_brings_the_summary():
    """The salon's push of a's update to b is lost: b's poll brings it."""
    net = Watched(drop_push=B)
    (a, ca, ea), (b, cb, eb), ka = _arrive_while_pending(net, None, RANDOM_NAT)
    ka.pending[0].callback(NatSummary(True, EI, APD, "preserving", None, 40000))
    net.run(0.6)
    assert net.dropped >= 1
    assert _strategy(ea) == _strategy(eb) == ["birthday"]
    a.stop()
    b.stop()


# -- a HOLD holds IPv4 only: the IPv6 pairs are punched at the introduction ----
A6 = ("2001:db8:1::2", 40000)
B6 = ("2001:db8:2::2", 50000)


class DualStack(Net):
    """A and B each with an IPv6 socket too; ``drop`` (4 or 6) loses that
    family between them; the first send of each family between them is
    recorded."""

    def __init__(self, drop):
        super().__init__()
        self.drop = drop
        self.first = {4: None, 6: None}

    def send(self, src, dst, data):
        fam = 6 if {src, dst} == {A6, B6} else 4 if {src, dst} == {A, B} else None
        if fam is not None:
            if self.first[fam] is None:
                self.first[fam] = self.clock.seconds()
            if fam == self.drop:
                return
        super().send(src, dst, data)

    def dual(self, core, addr6):
        sock = FamilySocket(core.socket, self.clock)
        self.attach(addr6, sock)
        core.families = Families(4, sock)
        core.candidates = [Address(*addr6)]


def _dual_pending(net):
    """a (summary pending) waits; b (random symmetric: a HOLD) arrives."""
    net.salon()
    (a, ca, ea), (b, cb, eb) = net.client(A), net.client(B)
    net.dual(ca, A6)
    net.dual(cb, B6)
    ka = Knowledge()
    ca.hardnat, cb.hardnat = kit(ka), kit(Knowledge(RANDOM_NAT))
    a.start()
    net.run(0.5)
    b.start()
    net.run(0.2)
    return (a, ca, ea), (b, cb, eb), ka


def test_a_hold_does_not_hold_ipv6():
    net = DualStack(drop=4)
    (a, ca, ea), (b, cb, eb), ka = _dual_pending(net)
    # connected over IPv6 while a's summary is still pending
    assert not ka.pending[0].called
    assert ca.phase is cb.phase is Phase.CONNECTED
    assert ca.connection.path.address == Address(*B6) and cb.connection.path.address == Address(*A6)
    assert net.first[4] is None and _strategy(ea) == _strategy(eb) == []
    ka.pending[0].callback(NatSummary(True, EI, APD, "preserving", None, 40000))
    net.run(0.3)
    # a path was there: the exchange ended with it, no plan, no IPv4 work
    assert _strategy(ea) == _strategy(eb) == []
    assert net.first[4] is None and ca.phase is cb.phase is Phase.CONNECTED
    a.stop()
    b.stop()


def test_after_a_hold_ipv4_joins_the_ipv6_punching():
    net = DualStack(drop=6)
    (a, ca, ea), (b, cb, eb), ka = _dual_pending(net)
    assert ca.phase is cb.phase is Phase.PUNCHING
    assert net.first[6] is not None and net.first[4] is None  # IPv6 since the introduction, IPv4 held
    decided_at = net.clock.seconds()
    ka.pending[0].callback(NatSummary(True, EI, APD, "preserving", None, 40000))
    net.run(0.3)
    assert net.first[4] >= decided_at and _strategy(ea) == _strategy(eb) == ["birthday"]
    assert ca.phase is cb.phase is Phase.CONNECTED
    assert ca.connection.path.address == Address(*B) and cb.connection.path.address == Address(*A)
    a.stop()
    b.stop()


def test_the_controlled_side_follows_the_peers_path_and_says_so():
    """Both families open (no hard-NAT kit): both sides take IPv6; when the
    controlling side's path moves to IPv4 (as an upgrade would move it),
    its next probe there moves the other side's connection and keepalive."""
    net = DualStack(drop=None)
    net.salon()
    (a, ca, ea), (b, cb, eb) = net.client(A), net.client(B)
    net.dual(ca, A6)
    net.dual(cb, B6)
    a.start()
    net.run(0.5)
    b.start()
    net.run(0.5)
    assert ca.phase is cb.phase is Phase.CONNECTED
    assert ca.connection.path.address == Address(*B6) and cb.connection.path.address == Address(*A6)
    boss, follower = (ca, cb) if ca.connection.puncher.nomination.controlling else (cb, ca)
    events = eb if follower is cb else ea
    peer4 = Address(*(B if boss is ca else A))
    puncher = boss.connection.puncher
    pair = next(p for p in puncher.pairs.values() if p.address == peer4)
    assert pair.verified
    boss.connection.move(puncher.move(pair))
    puncher.probe(peer4)
    net.run(0.05)
    mine4 = Address(*(A if boss is ca else B))
    assert follower.connection.path.address == mine4 and follower.connection.puncher.selected.address == mine4
    moved = [e for e in events if e["event"] == "moved"]
    assert moved == [{"event": "moved", "path": "direct", "peer": str(mine4), "family": 4,
                      "rtt_ms": moved[0]["rtt_ms"]}]
    a.stop()
    b.stop()
