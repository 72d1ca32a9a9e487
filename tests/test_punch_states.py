"""The puncher's phases, its candidate-pair states, candidate kinds and
local sockets, one transition at a time: a Clock, a recording send, and the
peer's messages built by hand.  No sockets."""

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from natsalon import wire
from natsalon.client.punch import (
    DIRECT,
    LAN,
    CandidateKind,
    Direction,
    LocalSocket,
    PairEvent,
    PairState,
    Path,
    Phase,
    PhaseError,
    PhaseEvent,
    PunchFailed,
    Puncher,
)
from natsalon.client.punch.candidates import PAIR_TRANSITIONS
from natsalon.client.punch.phases import OWNERS, TRANSITIONS, Lifecycle
from natsalon.crypto.secret import derive, new_nonce, session_keys
from natsalon.stun import Address

B_PUB = Address("192.0.2.20", 50000)
B_LAN = Address("10.2.0.2", 50000)
B_OTHER = Address("192.0.2.20", 61000)  # another port of b's NAT
SPOOF = Address("198.51.100.7", 4444)


class Recorder:
    """A local socket's send: records (data, to); raises OSError for ``fail``."""

    def __init__(self, fail=()):
        self.sent = []
        self.fail = set(fail)

    def __call__(self, data, to):
        if Address(*to) in self.fail:
            raise OSError(101, "Network is unreachable")
        self.sent.append((data, Address(*to)))


class Rig:
    """Puncher ``a`` alone; ``peer`` methods build what b would send."""

    def __init__(self, lan=(), public=B_PUB, **kw):
        self.clock = Clock()
        keys = derive("room", "s")
        self.na, self.nb = new_nonce(), new_nonce()
        self.k = session_keys(keys, self.nb, self.na).k_punch  # the same key both ways
        self.wire = Recorder()
        self.a = Puncher(self.clock, self.wire, session_keys(keys, self.na, self.nb), self.na, self.nb,
                         public, lan, **kw)
        self.results = []

    def start(self):
        d = self.a.start()
        d.addBoth(self.results.append)
        return d

    def parsed(self, data):
        return wire.parse_punch(data, self.k, self.na)

    def probes(self, rec=None, to=None):
        """a's probes (requests) as (txid, flags), optionally only those to ``to``."""
        rec = rec or self.wire
        return [(p.txid, p.flags) for p, dst in ((self.parsed(d), dst) for d, dst in rec.sent)
                if p.is_request and (to is None or dst == to)]

    def answers(self, rec=None):
        rec = rec or self.wire
        return [dst for d, dst in rec.sent if not self.parsed(d).is_request]

    def request(self, src, local=None, flags=0):
        """b sends a fresh probe that reaches a from ``src``."""
        _, data = wire.punch_request(self.nb, self.k, flags)
        return self.a.datagram(data, tuple(src), local)

    def respond(self, txid, src, local=None, flags=0):
        """b answers a's probe ``txid``; the answer reaches a from ``src``."""
        data = wire.punch_response(txid, self.nb, Address("192.0.2.10", 40000), self.k, flags)
        return self.a.datagram(data, tuple(src), local)

    def verify(self, addr):
        """b answers a's last probe to ``addr`` and probes it: the pair verifies."""
        self.respond(self.probes(to=addr)[-1][0], addr)
        self.request(addr)

    def pending_calls(self):
        return sorted(self.a._lifecycle.calls)


# -- phases ---------------------------------------------------------------

def test_idle_until_started():
    rig = Rig(lan=[B_LAN])
    assert rig.a.phase is Phase.IDLE
    assert rig.wire.sent == [] and rig.clock.getDelayedCalls() == []


def test_start_punching_probes_every_candidate_and_arms_tick_and_timeout():
    rig = Rig(lan=[B_LAN])
    rig.start()
    assert rig.a.phase is Phase.PUNCHING
    assert {dst for _, dst in rig.wire.sent} == {B_LAN, B_PUB}
    assert rig.pending_calls() == ["tick", "timeout"]
    rig.clock.advance(0.1)
    assert len(rig.probes()) == 4  # the next round
    with pytest.raises(PhaseError):
        rig.a.start()
    assert rig.a.phase is Phase.PUNCHING


def test_punching_to_keeping_alive_on_a_verified_pair():
    rig = Rig()
    rig.start()
    rig.clock.advance(0.02)
    rig.verify(B_PUB)
    assert rig.a.phase is Phase.KEEPING_ALIVE
    path = rig.results[0]
    assert path == Path(B_PUB, DIRECT, pytest.approx(0.02), CandidateKind.SRFLX)
    assert path.local is rig.a.default_socket
    assert rig.clock.getDelayedCalls() == []  # tick and timeout went with PUNCHING
    assert rig.probes()[-1][1] & wire.FLAG_CONNECTED  # tells b at once


def test_punching_to_nominated_while_a_host_pair_is_pending_then_grace_selects():
    rig = Rig(lan=[B_LAN], lan_grace=0.3)
    rig.start()
    rig.clock.advance(0.05)
    rig.verify(B_PUB)  # RTT 50 ms: grace 100 ms
    assert rig.a.phase is Phase.NOMINATED and not rig.results
    assert rig.pending_calls() == ["grace", "tick", "timeout"]
    lan_probes = len(rig.probes(to=B_LAN))
    rig.clock.advance(0.09)
    assert rig.a.phase is Phase.NOMINATED
    assert len(rig.probes(to=B_LAN)) > lan_probes  # the schedule goes on meanwhile
    rig.clock.advance(0.02)
    assert rig.a.phase is Phase.KEEPING_ALIVE and rig.results[0].address == B_PUB
    assert rig.clock.getDelayedCalls() == []


def test_nominated_host_pair_verifies_selects_at_once():
    rig = Rig(lan=[B_LAN])
    rig.start()
    rig.verify(B_PUB)
    assert rig.a.phase is Phase.NOMINATED
    rig.verify(B_LAN)
    assert rig.a.phase is Phase.KEEPING_ALIVE
    assert rig.results[0].kind == LAN and rig.results[0].candidate_kind is CandidateKind.HOST
    assert rig.clock.getDelayedCalls() == []  # the grace is cancelled


def test_nominated_another_verified_pair_keeps_the_grace_running():
    rig = Rig(lan=[B_LAN], lan_grace=0.3)
    rig.start()
    rig.clock.advance(0.05)
    rig.verify(B_PUB)
    grace = rig.a._lifecycle.calls["grace"]
    rig.request(B_OTHER)  # b's NAT opens another port: a prflx pair verifies too
    rig.respond(rig.probes(to=B_OTHER)[-1][0], B_OTHER)
    assert rig.a.paths[B_OTHER].verified and rig.a.phase is Phase.NOMINATED
    assert rig.a._lifecycle.calls["grace"] is grace  # not re-armed
    rig.clock.advance(0.11)
    assert rig.results[0].address == B_OTHER  # the best when the grace ends (lower RTT)


def test_nominated_timeout_takes_the_verified_pair():
    rig = Rig(lan=[B_LAN], lan_grace=5.0, timeout=1.5)
    rig.start()
    rig.clock.advance(1.0)
    txid, _ = rig.probes(to=B_PUB)[0]  # RTT 1 s: grace 2 s, beyond the timeout
    rig.respond(txid, B_PUB)
    rig.request(B_PUB)
    assert rig.a.phase is Phase.NOMINATED
    rig.clock.advance(0.5)
    assert rig.a.phase is Phase.KEEPING_ALIVE
    assert rig.results[0].address == B_PUB and rig.results[0].rtt == pytest.approx(1.0)


def test_punching_timeout_fails():
    rig = Rig(lan=[B_LAN], timeout=1.0)
    rig.start()
    rig.request(B_PUB)  # one way only
    rig.clock.advance(1.0)
    assert rig.a.phase is Phase.FAILED
    assert rig.results[0].check(PunchFailed)
    assert "2 candidates tried, 1 half-open" in str(rig.results[0].value)
    assert rig.clock.getDelayedCalls() == []


def _to_phase(rig, phase):
    if phase is not Phase.IDLE:
        rig.start()
        rig.results.clear()  # keep what stop() does apart
    if phase in (Phase.NOMINATED, Phase.KEEPING_ALIVE):
        rig.verify(B_PUB)
    if phase is Phase.KEEPING_ALIVE:
        rig.verify(B_LAN)
        rig.results.clear()
    assert rig.a.phase is phase


@pytest.mark.parametrize("phase", [Phase.IDLE, Phase.PUNCHING, Phase.NOMINATED, Phase.KEEPING_ALIVE])
def test_stop_from_every_live_phase(phase):
    rig = Rig(lan=[B_LAN])
    _to_phase(rig, phase)
    rig.a.stop()
    assert rig.a.phase is Phase.STOPPED and rig.clock.getDelayedCalls() == []
    if phase in (Phase.PUNCHING, Phase.NOMINATED):
        assert rig.results[0].check(defer.CancelledError)
    else:
        assert rig.results == []
    rig.a.stop()  # idempotent
    assert rig.a.phase is Phase.STOPPED


def test_cancelling_the_deferred_stops():
    rig = Rig(lan=[B_LAN])
    d = rig.start()
    d.cancel()
    assert rig.a.phase is Phase.STOPPED and rig.results[0].check(defer.CancelledError)
    assert rig.clock.getDelayedCalls() == []


def test_stop_after_failure_stays_failed():
    rig = Rig(timeout=0.5)
    rig.start()
    rig.clock.advance(0.5)
    rig.a.stop()
    assert rig.a.phase is Phase.FAILED


def _inert(phase):
    rig = Rig(lan=[B_LAN], timeout=0.5)
    rig.start()
    rig.request(B_PUB)
    if phase is Phase.FAILED:
        rig.clock.advance(0.5)
    else:
        rig.a.stop()
    assert rig.a.phase is phase
    rig.results.clear()
    return rig


@pytest.mark.parametrize("phase", [Phase.FAILED, Phase.STOPPED])
def test_inert_phases_claim_valid_messages_but_send_and_learn_nothing(phase):
    rig = _inert(phase)
    before = {a: (p.state, p.one_way, p.last_heard) for a, p in rig.a.paths.items()}
    sent, heard = len(rig.wire.sent), []
    rig.a.on_heard = heard.append
    assert rig.request(SPOOF, flags=wire.FLAG_CONNECTED)
    assert rig.request(B_PUB)
    txid, _ = rig.probes(to=B_PUB)[-1]
    assert rig.respond(txid, B_PUB)
    assert not rig.a.datagram(b"\x00\x01 not a punch", tuple(B_PUB))
    rig.a.probe(B_PUB)
    rig.clock.advance(5)
    assert len(rig.wire.sent) == sent and heard == [] and not rig.a.peer_connected
    assert {a: (p.state, p.one_way, p.last_heard) for a, p in rig.a.paths.items()} == before
    assert rig.a.ignored == 3 and rig.a.phase is phase


def test_idle_answers_and_records_then_start_selects_at_once():
    rig = Rig()
    rig.a.probe(B_PUB)
    rig.verify(B_PUB)
    assert rig.a.phase is Phase.IDLE and rig.a.paths[B_PUB].verified
    assert rig.answers() == [B_PUB]
    rig.start()
    assert rig.a.phase is Phase.KEEPING_ALIVE and rig.results[0].address == B_PUB


class _Actions:
    def __init__(self):
        self.ran = []

    def __getattr__(self, name):
        return lambda: self.ran.append(name)


@pytest.mark.parametrize("phase", list(Phase))
@pytest.mark.parametrize("event", list(PhaseEvent))
def test_lifecycle_table(phase, event):
    """Every (phase, event) either follows the table, cancelling the calls
    the new phase does not own, or raises before anything happens."""
    clock, actions = Clock(), _Actions()
    life = Lifecycle(clock, actions)
    life.phase = phase
    owned = [name for name in OWNERS if phase in OWNERS[name]]
    for name in owned:
        life.call_later(name, 1.0, lambda: None)
    if (phase, event) not in TRANSITIONS:
        with pytest.raises(PhaseError):
            life.fire(event)
        assert life.phase is phase and actions.ran == [] and len(clock.getDelayedCalls()) == len(owned)
        return
    new, action = TRANSITIONS[phase, event]
    life.fire(event)
    assert life.phase is new and actions.ran == [action]
    assert sorted(life.calls) == sorted(n for n in owned if new in OWNERS[n])
    assert len(clock.getDelayedCalls()) == len(life.calls)


def test_lifecycle_refuses_a_call_its_phase_does_not_own():
    life = Lifecycle(Clock(), _Actions())
    life.phase = Phase.PUNCHING
    with pytest.raises(PhaseError):
        life.call_later("grace", 1.0, lambda: None)


# -- pair states ------------------------------------------------------------

def _expected(state, known, event):
    """The pair rules in words, independently of the table."""
    if state is PairState.VERIFIED:
        return state, None
    if event is PairEvent.PROBE_SENT:
        return (PairState.IN_PROGRESS, None) if state is PairState.WAITING else (state, known)
    if event is PairEvent.SEND_FAILED:
        return PairState.FAILED, None
    direction = Direction.INBOUND if event is PairEvent.REQUEST else Direction.OUTBOUND
    if state is PairState.SUCCEEDED_ONE_WAY and known is not direction:
        return PairState.VERIFIED, None
    return PairState.SUCCEEDED_ONE_WAY, direction


def test_pair_table_is_complete_and_follows_the_rules():
    rows = [(s, None) for s in PairState if s is not PairState.SUCCEEDED_ONE_WAY]
    rows += [(PairState.SUCCEEDED_ONE_WAY, d) for d in Direction]
    assert len(PAIR_TRANSITIONS) == len(rows) * len(PairEvent)
    for state, known in rows:
        for event in PairEvent:
            assert PAIR_TRANSITIONS[state, known, event] == _expected(state, known, event), (state, known, event)


def test_pair_waiting_in_progress_one_way_out_verified():
    rig = Rig()
    pair = rig.a.paths[B_PUB]
    assert pair.state is PairState.WAITING
    rig.start()
    assert pair.state is PairState.IN_PROGRESS
    rig.clock.advance(0.03)
    rig.respond(rig.probes(to=B_PUB)[0][0], B_PUB)
    assert (pair.state, pair.one_way) == (PairState.SUCCEEDED_ONE_WAY, Direction.OUTBOUND)
    assert pair.rtt == pytest.approx(0.03) and pair.last_heard == pytest.approx(0.03)
    rig.request(B_PUB)
    assert pair.state is PairState.VERIFIED and pair.one_way is None


def test_pair_waiting_to_one_way_in_on_a_request_before_any_probe():
    rig = Rig()
    rig.request(B_PUB)  # IDLE: nothing probed yet
    pair = rig.a.paths[B_PUB]
    assert (pair.state, pair.one_way) == (PairState.SUCCEEDED_ONE_WAY, Direction.INBOUND)
    assert len(rig.probes(to=B_PUB)) == 1 and rig.answers() == [B_PUB]


def test_pair_one_way_in_then_verified_by_the_triggered_probe():
    rig = Rig()
    rig.start()
    sent = len(rig.probes(to=B_PUB))
    rig.request(B_PUB)
    pair = rig.a.paths[B_PUB]
    assert (pair.state, pair.one_way) == (PairState.SUCCEEDED_ONE_WAY, Direction.INBOUND)
    assert len(rig.probes(to=B_PUB)) == sent + 1  # triggered check, at once
    rig.request(B_PUB)  # still one way: the same state, one more triggered probe
    assert pair.one_way is Direction.INBOUND and len(rig.probes(to=B_PUB)) == sent + 2
    rig.respond(rig.probes(to=B_PUB)[-1][0], B_PUB)
    assert pair.state is PairState.VERIFIED


def test_stale_or_misdirected_responses_prove_nothing():
    rig = Rig(lan=[B_LAN])
    rig.start()
    txid, _ = rig.probes(to=B_PUB)[0]
    assert rig.respond(b"\x01" * 12, B_PUB)  # not a txid of ours
    assert rig.respond(txid, B_LAN)  # our probe to B_PUB, answered from elsewhere
    assert rig.respond(txid, B_PUB)  # and now from the right place: already used up
    assert {p.state for p in rig.a.paths.values()} == {PairState.IN_PROGRESS}


def test_pair_send_failure_fails_it_and_a_peer_message_revives_it():
    rig = Rig(lan=[B_LAN])
    rig.wire.fail.add(B_LAN)
    rig.start()
    pair = rig.a.paths[B_LAN]
    assert pair.state is PairState.FAILED and not pair.scheduled
    probes = rig.a.probes_sent
    rig.clock.advance(0.1)
    assert rig.a.probes_sent == probes + 1  # only B_PUB
    rig.wire.fail.clear()
    rig.request(B_LAN)
    assert (pair.state, pair.one_way) == (PairState.SUCCEEDED_ONE_WAY, Direction.INBOUND)
    assert rig.probes(to=B_LAN)  # the triggered probe went out


def test_failed_pair_revived_by_a_late_response():
    rig = Rig()
    rig.start()
    txid, _ = rig.probes(to=B_PUB)[0]
    rig.wire.fail.add(B_PUB)
    rig.clock.advance(0.1)
    pair = rig.a.paths[B_PUB]
    assert pair.state is PairState.FAILED
    rig.respond(txid, B_PUB)  # the first probe did get through
    assert (pair.state, pair.one_way) == (PairState.SUCCEEDED_ONE_WAY, Direction.OUTBOUND)


def test_one_way_pair_fails_on_a_send_error():
    rig = Rig()
    rig.start()
    rig.respond(rig.probes(to=B_PUB)[0][0], B_PUB)
    rig.wire.fail.add(B_PUB)
    rig.clock.advance(0.1)
    assert rig.a.paths[B_PUB].state is PairState.FAILED


def test_verified_pair_survives_a_send_error():
    rig = Rig()
    rig.start()
    rig.verify(B_PUB)
    rig.wire.fail.add(B_PUB)
    rig.a.probe(B_PUB)  # a keepalive meets a transient error
    assert rig.a.paths[B_PUB].state is PairState.VERIFIED


# -- candidate kinds ----------------------------------------------------------

def test_candidate_kinds_and_what_the_schedule_probes():
    rig = Rig(lan=[B_LAN, B_PUB])  # the public address among the LAN ones counts once, as srflx
    predicted = rig.a.add_candidate(B_OTHER, CandidateKind.PREDICTED)
    assert {a: p.kind for a, p in rig.a.paths.items()} == {
        B_LAN: CandidateKind.HOST, B_PUB: CandidateKind.SRFLX, B_OTHER: CandidateKind.PREDICTED}
    rig.start()
    rig.request(SPOOF)
    prflx = rig.a.paths[SPOOF]
    assert prflx.kind is CandidateKind.PRFLX and predicted.scheduled and not prflx.scheduled
    assert [p.kind.path_kind for p in (rig.a.paths[B_LAN], predicted, prflx)] == [LAN, DIRECT, DIRECT]
    rig.clock.advance(0.1)
    assert len(rig.probes(to=SPOOF)) == 1  # the triggered check only
    assert len(rig.probes(to=B_OTHER)) == 2


def test_path_of_a_peer_reflexive_pair():
    rig = Rig()
    rig.start()
    rig.request(B_OTHER)  # b's NAT gave its flow another port
    rig.respond(rig.probes(to=B_OTHER)[-1][0], B_OTHER)
    assert rig.results[0] == Path(B_OTHER, DIRECT, pytest.approx(0.0), CandidateKind.PRFLX)


def test_relay_ranks_after_direct():
    rig = Rig(public=None)
    rig.a.add_candidate(SPOOF, CandidateKind.RELAY)
    rig.a.add_candidate(B_PUB, CandidateKind.SRFLX)
    rig.a.probe(SPOOF)
    rig.a.probe(B_PUB)
    rig.clock.advance(0.1)
    rig.verify(SPOOF)  # the relay answers faster, yet
    rig.clock.advance(0.1)
    rig.verify(B_PUB)
    assert rig.a.paths[SPOOF].rtt < rig.a.paths[B_PUB].rtt
    assert rig.a.best().address == B_PUB


# -- local sockets ------------------------------------------------------------

def test_a_candidate_is_probed_from_its_own_local_socket():
    rig = Rig(public=None)
    second = Recorder()
    s2 = LocalSocket(second, "birthday-1")
    pair = rig.a.add_candidate(B_OTHER, CandidateKind.PREDICTED, local=s2)
    rig.start()
    assert rig.wire.sent == [] and [to for _, to in second.sent] == [B_OTHER]
    txid, _ = rig.probes(second)[0]
    assert rig.respond(txid, B_OTHER)  # on the default socket: not where the probe left from
    assert pair.state is PairState.IN_PROGRESS and list(rig.a.pairs.values()) == [pair]
    rig.clock.advance(0.1)
    assert rig.respond(rig.probes(second)[-1][0], B_OTHER, local=s2)
    assert pair.one_way is Direction.OUTBOUND
    assert rig.request(B_OTHER, local=s2)
    assert rig.answers(second) == [B_OTHER] and rig.answers() == []  # answered from s2
    path = rig.results[0]
    assert path.local is s2 and path.candidate_kind is CandidateKind.PREDICTED
    before = len(second.sent)
    rig.a.probe(B_OTHER)  # a keepalive leaves from the selected pair's socket
    assert len(second.sent) == before + 1 and rig.wire.sent == []
    assert rig.a.last_heard(B_OTHER) == rig.clock.seconds()


def test_same_address_from_two_sockets_two_pairs():
    rig = Rig()
    s2 = LocalSocket(Recorder(), "second")
    other = rig.a.add_candidate(B_PUB, CandidateKind.SRFLX, local=s2)
    assert len(rig.a.pairs) == 2 and len(rig.a.paths) == 1
    rig.start()
    rig.request(B_PUB, local=s2)  # learnt on s2 only
    assert other.one_way is Direction.INBOUND
    assert rig.a.pairs[rig.a.default_socket, B_PUB].state is PairState.IN_PROGRESS
    assert rig.a.paths[B_PUB] is other  # the most advanced one
