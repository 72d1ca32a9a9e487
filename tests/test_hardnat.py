"""Hard-NAT strategies on a Clock: two punchers with their Runners behind
simulated NATs (endpoint-independent, random and sequential symmetric,
all address-and-port-dependent filters), the join-time knowledge, the
probe's summary, and the demux's socket pool."""

import random
from collections import Counter

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from natsalon.client.demux import ClientSocket, SocketPool
from natsalon.client.probe.findings import Bound, Findings
from natsalon.client.probe.summary import summarize
from natsalon.client.punch import LocalSocket, Puncher
from natsalon.client.strategy import NatKnowledge, Runner, StrategySettings, Strategy, decide
from natsalon.client.strategy.runner import random_ports, sequential_ports
from natsalon.crypto.secret import derive, new_nonce, session_keys
from natsalon.stun import Address
from natsalon.testing import FakeDatagramTransport
from natsalon.wire.nat import AD, APD, EI, RANDOM, SEQUENTIAL, UNKNOWN, NatSummary

EIM_NAT = NatSummary(True, EI, APD, "preserving", None, 40000)
RANDOM_NAT = NatSummary(True, APD, APD, RANDOM, None, 30000)


class SimNat:
    """``kind``: "eim" (one port per socket), "random" or "seq" (a port per
    socket and destination); every kind filters by address and port."""

    def __init__(self, kind: str, ip: str, rng: random.Random, seq_base: int = 20000) -> None:
        self.kind, self.ip, self.rng = kind, ip, rng
        self.next_port = seq_base
        self.out = {}  # (local, dst) -> ext port
        self.into = {}  # (ext port, remote) -> local

    def outbound(self, local, dst) -> int:
        key = (local if self.kind == "eim" else (local, dst))
        port = self.out.get(key)
        if port is None:
            if self.kind == "eim":
                port = self.rng.randrange(40000, 50000)
            elif self.kind == "random":
                port = self.rng.randrange(1024, 65536)
            else:
                self.next_port += 1
                port = self.next_port
            self.out[key] = port
        self.into[port, dst] = local
        return port

    def drift(self, n: int) -> None:
        """Another host's ``n`` new flows (sequential only)."""
        self.next_port += n


class FakePool:
    def __init__(self, side: "Side") -> None:
        self.side = side
        self.sockets = []
        self.opened = 0
        self.closed = 0
        self.routed = None

    def open(self) -> LocalSocket:
        self.opened += 1
        local = LocalSocket(lambda d, to, n=self.opened: None, "extra-%d" % self.opened)
        local.send = lambda d, to, local=local: self.side.send(local, d, to)
        holder = type("Sock", (), {"local": local})()
        self.sockets.append(holder)
        self.side.locals.append(local)
        return local

    def close(self, keep=None) -> None:
        kept = [s for s in self.sockets if keep is not None and s.local is keep]
        self.closed += len(self.sockets) - len(kept)
        self.sockets = kept

    def route(self, addr, local) -> None:
        self.routed = (addr, local)


class Side:
    def __init__(self, net: "Net", name: str, nat: SimNat, summary: NatSummary) -> None:
        self.net, self.name, self.nat, self.summary = net, name, nat, summary
        self.locals = []
        self.sent = Counter()  # tick (10 ms) -> packets

    def send(self, local, data, to) -> None:
        now = self.net.clock.seconds()
        self.sent[int(now * 10)] += 1
        port = self.nat.outbound(local, tuple(to))
        self.net.deliver(self, Address(self.nat.ip, port), Address(*to), data)


class Net:
    def __init__(self, kind_a: str, kind_b: str, summary_a: NatSummary, summary_b: NatSummary, seed: int = 1,
                 settings: StrategySettings = StrategySettings(), drift_a: int = 0, drift_b: int = 0) -> None:
        self.clock = Clock()
        rng = random.Random(seed)
        self.a = Side(self, "a", SimNat(kind_a, "192.0.2.1", rng), summary_a)
        self.b = Side(self, "b", SimNat(kind_b, "192.0.2.2", rng), summary_b)
        # each side's binding to the salon: its public endpoint
        salon = ("203.0.113.10", 3478)
        pub = {}
        for side in (self.a, self.b):
            side.main = LocalSocket(lambda d, to, s=side: s.send(s.main, d, to), "main")
            side.locals.append(side.main)
            pub[side.name] = Address(side.nat.ip, side.nat.outbound(side.main, salon))
            if side.summary.allocation == SEQUENTIAL:
                side.summary = side.summary._replace(last_port=side.nat.next_port - 1)
        self.a.nat.drift(drift_a)
        self.b.nat.drift(drift_b)
        keys = derive("room", "s")
        na, nb = new_nonce(), new_nonce()
        for side, other, mine, theirs in ((self.a, self.b, na, nb), (self.b, self.a, nb, na)):
            side.plan = decide(side.summary, other.summary)
            ordered = side.plan.role.value == "ordered"
            side.puncher = Puncher(self.clock, side.main.send, session_keys(keys, mine, theirs), mine, theirs,
                                   None if ordered else pub[other.name], timeout=10.0)
            side.puncher.default_socket = side.main
            side.pool = FakePool(side)
            side.runner = Runner(self.clock, side.puncher, side.plan, pub[other.name], (), other.summary,
                                 lambda side=side: side.pool, settings, my_nat=side.summary)
            side.runner.prepare()

    def deliver(self, sender: Side, src: Address, dst: Address, data: bytes) -> None:
        target = self.b if sender is self.a else self.a
        if dst.host != target.nat.ip:
            return
        local = target.nat.into.get((dst.port, tuple(src)))
        if local is not None:
            self.clock.callLater(0.005, target.puncher.datagram, data, tuple(src), local)

    def run(self, until: float = 12.0):
        results = {}
        for side in (self.a, self.b):
            d = side.puncher.start()
            d.addCallback(lambda path, side=side: (side.runner.finish(path), path)[1])
            d.addBoth(lambda r, side=side: results.__setitem__(side.name, (r, self.clock.seconds())))
            side.runner.start()
        while self.clock.seconds() < until and len(results) < 2:
            self.clock.advance(0.005)
        return results


def test_birthday_connects_and_closes_the_extra_sockets():
    net = Net("random", "eim", RANDOM_NAT, EIM_NAT, seed=7)
    assert net.a.plan.strategy is net.b.plan.strategy is Strategy.BIRTHDAY
    results = net.run()
    for side in (net.a, net.b):
        path, when = results[side.name]
        assert path.strategy == "birthday", path
        assert when < 5.0
    spray = net.a
    path = results["a"][0]
    assert path.sockets == 1 + spray.pool.opened and spray.pool.opened <= 256
    assert path.local is not spray.main and spray.pool.routed == (path.address, path.local)
    assert [s.local for s in spray.pool.sockets] == [path.local]  # every other extra socket closed
    spray.puncher.stop()
    assert spray.pool.sockets == []


@pytest.mark.parametrize("seed", range(20))
def test_birthday_rate_and_budget(seed):
    s = StrategySettings()
    net = Net("random", "eim", RANDOM_NAT, EIM_NAT, seed=seed)
    results = net.run()
    assert all(r[0].strategy == "birthday" for r in results.values()), results
    for side in (net.a, net.b):
        per_second = max(sum(side.sent[t + i] for i in range(10)) for t in list(side.sent))
        assert per_second <= max(s.sweep_rate, s.spray_rate) + 60, (side.name, per_second)
        assert side.runner.probes <= s.sweep_budget


def test_birthday_gives_up_at_its_budget():
    s = StrategySettings(sweep_budget=50, spray_sockets=4)
    net = Net("random", "eim", RANDOM_NAT, EIM_NAT, seed=3, settings=s)
    results = net.run(until=11)
    assert all(r[0].check(Exception) for r in results.values())  # PunchFailed, nothing landed
    assert net.b.runner.probes == 50 and net.a.pool.opened == 4


def test_predicted_sweep_survives_drift():
    seq = NatSummary(True, APD, APD, SEQUENTIAL, 1, None)
    net = Net("seq", "eim", seq, EIM_NAT, drift_a=40)
    assert net.a.plan.strategy is Strategy.PREDICTED
    results = net.run()
    for side in (net.a, net.b):
        path, when = results[side.name]
        assert path.strategy == "predicted" and when < 1.0, (path, when)
    # the eim side swept to the seq side's 41st next port
    assert results["b"][0].address.port == net.a.summary.last_port + 1 + 40 + 1


def test_ordered_prediction_seq_vs_seq():
    seq = NatSummary(True, APD, APD, SEQUENTIAL, 1, None)
    net = Net("seq", "seq", seq, seq)
    assert net.a.plan.role.value == net.b.plan.role.value == "ordered"
    results = net.run()
    for side in (net.a, net.b):
        path, when = results[side.name]
        assert path.strategy == "predicted" and when < 0.5, (path, when)
        assert side.pool.opened == 0


@pytest.mark.parametrize("drift_a,drift_b", [(0, 0), (1, 0), (0, 1), (6, 0), (0, 6), (15, 0), (0, 12), (5, 5),
                                             (9, 3)])
def test_ordered_prediction_survives_drift(drift_a, drift_b):
    """Seq against seq with other flows taking ports on either NAT between
    its probe and its first shots (a busy second host): one side probes the
    peer's next ports in order, the other every second one, so some pair of
    their flows meets (see strategy.table.ordered_ports: any drifts with
    dA + 2dB < 64 whichever side has the lower nonce)."""
    seq = NatSummary(True, APD, APD, SEQUENTIAL, 1, None)
    net = Net("seq", "seq", seq, seq, drift_a=drift_a, drift_b=drift_b)
    results = net.run()
    for side in (net.a, net.b):
        path, when = results[side.name]
        assert path.strategy == "predicted" and when < 0.5, (side.name, path, when)


def test_plain_pairs_send_nothing_extra():
    easy = NatSummary(True, EI, AD, "preserving", None, 40000)
    net = Net("random", "eim", RANDOM_NAT, easy)
    assert net.a.plan.strategy is Strategy.PLAIN
    net.run(until=3)  # (the simulated NAT filters by port: plain fails here, and adds nothing)
    assert net.a.runner.work == [] and net.b.runner.work == [] and net.a.pool.opened == 0


def test_sweep_orders():
    it = sequential_ports((1, 2, 3, 4), (2, 4))
    assert [next(it) for _ in range(10)] == [1, 2, 1, 2, 3, 4, 1, 2, 1, 2]
    ports = list(random_ports(1024, 1100, random.Random(1)))
    assert sorted(ports) == list(range(1024, 1101)) and ports != sorted(ports)


# -- the join-time knowledge ------------------------------------------------------

class FakeProbe:
    def __init__(self):
        self.calls = []

    def __call__(self, on_early):
        d = defer.Deferred()
        self.calls.append((on_early, d))
        return d


class Report:
    def __init__(self, summary):
        self.summary = summary


def test_knowledge_early_summary_then_cache():
    """Behind a sequential NAT every join probes (its last port must be
    fresh); the kept result fills in the filtering an early summary lacks."""
    clock, probe = Clock(), FakeProbe()
    k = NatKnowledge(clock, probe, hold=1.0, ttl=60)
    got = []
    k.summary().addCallback(got.append)
    early = NatSummary(True, APD, UNKNOWN, SEQUENTIAL, 1, 20005)
    probe.calls[0][0](early)
    assert got == [early]  # at once, no hold
    clock.advance(0.8)
    probe.calls[0][1].callback(Report(early._replace(filtering=APD)))
    k.summary().addCallback(got.append)
    probe.calls[1][0](early)
    assert got[1].filtering == APD  # the complete result fills in what the early one lacks
    clock.advance(61)
    k.summary().addCallback(got.append)
    probe.calls[2][0](early)
    assert got[2].filtering == UNKNOWN  # too old


def test_knowledge_reuses_a_recent_result():
    """Any other NAT: a recent complete result is reused, no probe."""
    clock, probe = Clock(), FakeProbe()
    k = NatKnowledge(clock, probe, hold=1.0, ttl=60)
    got = []
    k.summary().addCallback(got.append)
    probe.calls[0][0](EIM_NAT)
    probe.calls[0][1].callback(Report(EIM_NAT))
    clock.advance(59)
    k.summary().addCallback(got.append)
    assert got == [EIM_NAT, EIM_NAT] and len(probe.calls) == 1 and k.reused == 1
    clock.advance(2)
    k.summary().addCallback(got.append)
    assert len(probe.calls) == 2  # too old: probed again


def test_knowledge_holds_at_most_hold():
    clock, probe = Clock(), FakeProbe()
    k = NatKnowledge(clock, probe, hold=1.0)
    got = []
    k.summary().addCallback(got.append)
    clock.advance(0.99)
    assert got == []
    clock.advance(0.02)
    assert got == [NatSummary()]
    probe.calls[0][0](EIM_NAT)  # too late: ignored
    assert got == [NatSummary()]


def test_knowledge_cancel():
    clock, probe = Clock(), FakeProbe()
    d = NatKnowledge(clock, probe).summary()
    d.addErrback(lambda f: f.trap(defer.CancelledError))
    d.cancel()
    assert clock.getDelayedCalls() == []


def test_knowledge_probe_failure_gives_unknown():
    clock, probe = Clock(), FakeProbe()
    got = []
    NatKnowledge(clock, probe).summary().addCallback(got.append)
    probe.calls[0][1].errback(RuntimeError("no"))
    assert got == [NatSummary()]


# -- the probe's summary ----------------------------------------------------------

def _found(mapped_ports, m, f1=None, f2=None):
    found = Findings(Address("203.0.113.10", 3478))
    found.results["R"] = Bound(None, Address("192.0.2.1", mapped_ports[0]), 0.001, 0.0, None, None)
    found.samples = [(5000 + i, p) for i, p in enumerate(mapped_ports)]
    found.results.update(m)
    if f1 is not None:
        found.results["F1"] = f1
    if f2 is not None:
        found.results["F2"] = f2
    return found


def test_summary_of_a_sequential_nat():
    a = lambda p: Address("192.0.2.1", p)  # noqa: E731
    found = _found([20001, 20002, 20004, 20005], {"m1": a(20001), "m2": a(20002), "m3": a(20003), "m4": a(20004)})
    s = summarize(found)
    assert s == NatSummary(True, APD, UNKNOWN, SEQUENTIAL, 1, 20005)
    found.results["F1"], found.results["F2"] = False, False
    assert summarize(found).filtering == APD


def test_summary_filtering_early_and_final():
    a = lambda p: Address("192.0.2.1", p)  # noqa: E731
    m = {"m1": a(40000), "m2": a(40000), "m3": a(40000), "m4": a(40000)}
    assert summarize(_found([40000, 40001, 40002], m, f2=True)).filtering == AD  # at most address-dependent
    assert summarize(_found([40000, 40001, 40002], m, f1=True)).filtering == EI
    assert summarize(_found([40000, 40001, 40002], m)).filtering == UNKNOWN
    assert summarize(Findings(Address("203.0.113.10", 3478))) == NatSummary()


# -- the demux's pool -------------------------------------------------------------

def test_pool_routes_and_closes():
    sock = ClientSocket(Clock())
    main = FakeDatagramTransport(port=4000)
    sock.makeConnection(main)
    transports = []

    def listen(proto):
        t = FakeDatagramTransport(port=5000 + len(transports))
        proto.makeConnection(t)
        transports.append(t)
        return t

    pool = SocketPool(sock, listen)
    locals_ = [pool.open() for _ in range(3)]
    got = []
    sock.on_punch = lambda data, addr, local=None: got.append((data, addr, local)) or True
    pool.sockets[1].datagramReceived(b"\x00\x01probe", ("192.0.2.9", 7))
    assert got == [(b"\x00\x01probe", ("192.0.2.9", 7), locals_[1])]
    pool.close(keep=locals_[1])
    assert [t.closed for t in transports] == [True, False, True]
    pool.route(("192.0.2.9", 7), locals_[1])
    sock.write(b"frame", ("192.0.2.9", 7))
    sock.write(b"salon", ("203.0.113.10", 3478))
    assert transports[1].pop() == [(b"frame", ("192.0.2.9", 7))]
    assert main.pop() == [(b"salon", ("203.0.113.10", 3478))]
    pool.close()
    assert transports[1].closed and sock.routes == {}
    sock.write(b"frame", ("192.0.2.9", 7))
    assert main.pop() == [(b"frame", ("192.0.2.9", 7))]


@pytest.mark.parametrize("filtering,head_start", [(APD, 0.0), (UNKNOWN, 0.3)])
def test_head_start_only_when_the_filter_is_unknown(filtering, head_start):
    seq = NatSummary(True, APD, APD, SEQUENTIAL, 1, None)
    net = Net("seq", "eim", seq, EIM_NAT._replace(filtering=filtering))
    assert net.b.runner.head_start == head_start
    results = net.run()
    assert head_start <= results["b"][1] < head_start + 0.1


def test_pool_out_of_sockets_is_oserror():
    from twisted.internet.error import CannotListenError

    def listen(proto):
        raise CannotListenError("0.0.0.0", 0, OSError(24, "Too many open files"))

    pool = SocketPool(ClientSocket(Clock()), listen)
    with pytest.raises(OSError):
        pool.open()
    assert pool.sockets == [] and pool.opened == 0
