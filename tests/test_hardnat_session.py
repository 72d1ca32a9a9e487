"""The client machine with the hard-NAT kit, on a Clock (the in-memory
network and real salon of test_session): the JOIN waits for the NAT
summary and carries it, both sides choose the same strategy, and strategy
none says "no direct path" long before the punch timeout."""

from twisted.internet import defer

from natsalon.client.errors import PunchFailed
from natsalon.client.session import Phase
from natsalon.client.strategy import HardNat, StrategySettings
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


def test_join_waits_for_the_summary_and_carries_it():
    net = Net()
    intro = net.salon()
    a, ca, _ = net.client(A)
    knowledge = Knowledge()
    ca.hardnat = kit(knowledge)
    a.start()
    net.run(0.5)
    assert ca.phase is Phase.JOINING and intro.rooms.members() == 0  # nothing sent yet
    summary = NatSummary(True, EI, APD, "preserving", None, 40000)
    knowledge.pending[0].callback(summary)
    net.run(0.5)
    assert ca.phase is Phase.WAITING
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
