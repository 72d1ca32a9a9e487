"""The NAT summary on the wire (NS-NAT in the JOIN) and the decision
table, exhaustively over the NAT lab's behaviours."""

import itertools

import pytest

from natsalon import wire
from natsalon.client.strategy import TABLE, NatClass, Role, Strategy, classify, decide, predicted_ports
from natsalon.client.strategy.table import ordered_ports
from natsalon.stun import Address, decode
from natsalon.wire.nat import AD, ALLOCATIONS, APD, BEHAVIOURS, EI, RANDOM, SEQUENTIAL, UNKNOWN, NatSummary

K_JOIN = b"k" * 32
ROOM = b"r" * 16

#: what the join-time probe reports for each lab behaviour (natlab.Nat values)
LAB = {
    "open": NatSummary(True, EI, EI, "preserving", None, 40000),
    "full_cone": NatSummary(True, EI, EI, "preserving", None, 40000),
    "restricted_cone": NatSummary(True, EI, AD, "preserving", None, 40000),
    "port_restricted_cone": NatSummary(True, EI, APD, "preserving", None, 40000),
    "symmetric_random": NatSummary(True, APD, APD, RANDOM, None, 51234),
    "symmetric_sequential": NatSummary(True, APD, APD, SEQUENTIAL, 1, 20011),
    "symmetric_udp_firewall": NatSummary(True, EI, APD, "preserving", None, 40000),
    "udp_blocked": NatSummary(False),
}
DIRECT_IMPOSSIBLE = {frozenset(("symmetric_random",)), frozenset(("symmetric_random", "symmetric_sequential"))}
PLAIN_WORKS = {"open", "full_cone", "restricted_cone"}


def expected(a: str, b: str) -> Strategy:
    """The acceptance criteria of issue 10, spelled out per pair."""
    if "udp_blocked" in (a, b):
        return Strategy.PLAIN
    if frozenset((a, b)) in DIRECT_IMPOSSIBLE:
        return Strategy.NONE
    if a in PLAIN_WORKS or b in PLAIN_WORKS:
        return Strategy.PLAIN
    if "symmetric_sequential" in (a, b):
        return Strategy.PREDICTED
    if "symmetric_random" in (a, b):
        return Strategy.BIRTHDAY
    return Strategy.PLAIN


@pytest.mark.parametrize("a,b", list(itertools.product(LAB, LAB)))
def test_lab_pairs(a, b):
    mine, theirs = decide(LAB[a], LAB[b]), decide(LAB[b], LAB[a])
    assert mine.strategy is theirs.strategy is expected(a, b)
    if mine.strategy is Strategy.NONE:
        assert mine.role is theirs.role is Role.GIVE_UP and "no direct path" in mine.reason
    if mine.strategy is Strategy.BIRTHDAY:
        assert {mine.role, theirs.role} == {Role.SPRAY, Role.SWEEP_RANDOM}
    if mine.strategy is Strategy.PREDICTED:
        roles = {mine.role, theirs.role}
        assert roles in ({Role.ORDERED}, {Role.SWEEP_SEQUENTIAL, Role.PLAIN})


ALL = [NatSummary(known, m, f, al, 1 if al == SEQUENTIAL else None, 20000)
       for known in (False, True) for m in BEHAVIOURS for f in BEHAVIOURS for al in ALLOCATIONS]


def test_every_summary_pair_agrees():
    """Both sides choose the same strategy for every pair of summaries."""
    for x, y in itertools.product(ALL, ALL):
        assert decide(x, y).strategy is decide(y, x).strategy, (x, y)


def test_table_is_symmetric_and_complete():
    assert len(TABLE) == len(NatClass) ** 2
    for (a, b), s in TABLE.items():
        assert TABLE[b, a] is s


def test_classes():
    assert classify(NatSummary()) is NatClass.UNKNOWN
    assert classify(NatSummary(True, UNKNOWN, EI)) is NatClass.UNKNOWN
    assert classify(NatSummary(True, EI, UNKNOWN)) is NatClass.FILTERING  # filtering not known yet: assume it filters
    assert classify(NatSummary(True, AD, APD, UNKNOWN)) is NatClass.RANDOM
    assert classify(NatSummary(True, AD, APD, "preserving")) is NatClass.SEQ


def test_predicted_ports():
    peer = NatSummary(True, APD, APD, SEQUENTIAL, 2, 20010)
    assert predicted_ports(peer, 20004, 3) == (20012, 20014, 20016)
    assert predicted_ports(peer, 20030, 2, start=2) == (20034, 20036)  # its public port is later
    assert predicted_ports(NatSummary(True, APD, APD, SEQUENTIAL, 1, 65534), 1, 5) == (65535,)


# -- NS-NAT on the wire ---------------------------------------------------------

def test_nat_round_trip():
    for s in ALL:
        got = wire.unpack_nat(wire.pack_nat(s))
        assert got == s._replace(step=s.step or None)
    assert len(wire.pack_nat(LAB["symmetric_sequential"])) == 8
    assert wire.unpack_nat(None) == wire.UNKNOWN_NAT
    assert wire.unpack_nat(wire.pack_nat(NatSummary(True, APD, APD, SEQUENTIAL, 999, 1))).step == 255
    # a later version with a longer value: the first eight bytes are read
    assert wire.unpack_nat(wire.pack_nat(LAB["open"]) + b"more") == LAB["open"]


@pytest.mark.parametrize("raw", [b"", b"\x01" * 7, b"\x00" + b"\x00" * 7, b"\x01\x01\x09\x00\x00\x00\x00\x00",
                                 b"\x01\x01\x00\x00\x07\x00\x00\x00"])
def test_nat_rejects(raw):
    with pytest.raises(wire.WireError):
        wire.unpack_nat(raw)


def test_nat_pack_rejects():
    with pytest.raises(wire.WireError):
        wire.pack_nat(NatSummary(True, "sideways"))


def test_join_carries_summary_under_its_mac():
    nat = LAB["symmetric_sequential"]
    _, raw = wire.join_request(ROOM, b"n" * 16, [Address("10.0.0.2", 5000)], K_JOIN, nat=nat)
    peer = wire.verify_peer_join(raw, K_JOIN, ROOM)
    assert peer.nat == nat
    assert wire.parse_join_request(decode(raw)).nat == nat
    # tampering with the summary breaks the JOIN's MAC
    i = raw.index(wire.pack_nat(nat))
    bad = raw[:i + 4] + bytes([raw[i + 4] ^ 1]) + raw[i + 5:]
    with pytest.raises(wire.WireError):
        wire.verify_peer_join(bad, K_JOIN, ROOM)


def test_join_without_summary_is_unknown():
    """An old peer's JOIN (no NS-NAT) reads as an unknown NAT: plain punching."""
    _, raw = wire.join_request(ROOM, b"n" * 16, [], K_JOIN)
    peer = wire.verify_peer_join(raw, K_JOIN, ROOM)
    assert peer.nat == wire.UNKNOWN_NAT
    assert decide(LAB["symmetric_random"], peer.nat).strategy is Strategy.PLAIN


def test_ordered_ports_meet_despite_drift():
    """Seq against seq: the in-order side's flow i leaves from its base +
    dA + i towards the peer's i-th port, the other's flow k from its base +
    dB + k towards the in-order side's (2k - 1)-th; some pair meets both ways
    whenever dA + 2dB < the window (and without drift, the first flows)."""
    seq = NatSummary(True, APD, APD, SEQUENTIAL, 1, 20000)
    window = 32
    in_order = [p - 20000 for p in predicted_ports(seq, 20000, window)]
    shifted = [p - 20000 for p in ordered_ports(seq, 20000, window, shifted=True)]
    assert in_order == list(range(1, 33)) and shifted == list(range(1, 64, 2))
    for da in range(32):
        for db in range(16):
            # flows: (source offset, destination offset) on each side
            a_flows = {(da + i, dst) for i, dst in enumerate(in_order, 1)}
            b_flows = {(db + k, dst) for k, dst in enumerate(shifted, 1)}
            meets = any((dst, src) in b_flows for src, dst in a_flows)
            assert meets == (da + 2 * db < window), (da, db)
    assert (1, 1) in {(k, dst) for k, dst in enumerate(shifted, 1)}  # no drift: the first flows meet
    assert ordered_ports(seq, 20000, 4, shifted=False) == predicted_ports(seq, 20000, 4)
