"""natsalon.client.probe.classify: every row of every table."""

from __future__ import annotations

import itertools
import random

import pytest

from natsalon.client.probe.classify import (
    ADF,
    ADM,
    APDF,
    APDM,
    CLASSIC_TABLE,
    EIF,
    EIM,
    UNKNOWN,
    Allocation,
    Behaviour,
    Classic,
    classic_type,
    filtering_behaviour,
    is_nat,
    mapping_behaviour,
    newest_port,
    port_allocation,
)
from natsalon.stun import Address

A = Address("192.0.2.10", 40000)
B = Address("192.0.2.10", 40001)
C = Address("192.0.2.10", 40002)

BEHAVIOURS = list(Behaviour)


# -- classic type: all 2 x 3 x 4 x 4 combinations ----------------------------
def expected_classic(answered, nat, mapping, filtering):
    if not answered:
        return Classic.UDP_BLOCKED
    if nat is False:
        return {EIF: Classic.OPEN, ADF: Classic.SYMMETRIC_UDP_FIREWALL,
                APDF: Classic.SYMMETRIC_UDP_FIREWALL}.get(filtering, Classic.UNKNOWN)
    if nat is True:
        if mapping in (ADM, APDM):
            return Classic.SYMMETRIC
        if mapping is EIM:
            return {EIF: Classic.FULL_CONE, ADF: Classic.RESTRICTED_CONE,
                    APDF: Classic.PORT_RESTRICTED_CONE}.get(filtering, Classic.UNKNOWN)
    return Classic.UNKNOWN


@pytest.mark.parametrize("answered,nat,mapping,filtering", list(itertools.product(
    (True, False), (True, False, None), BEHAVIOURS, BEHAVIOURS)))
def test_classic_every_combination(answered, nat, mapping, filtering):
    assert classic_type(answered, nat, mapping, filtering) is expected_classic(answered, nat, mapping, filtering)


def test_classic_table_ends_with_catch_all():
    assert CLASSIC_TABLE[-1][4] is Classic.UNKNOWN
    values = {row[4] for row in CLASSIC_TABLE}
    assert values == set(Classic)


def test_enum_values_are_the_documented_strings():
    assert [c.value for c in Classic] == ["open", "full-cone", "restricted-cone", "port-restricted-cone",
                                          "symmetric", "symmetric-udp-firewall", "udp-blocked", "unknown"]
    assert [b.value for b in Behaviour] == ["endpoint-independent", "address-dependent",
                                            "address-and-port-dependent", "unknown"]


# -- nat ----------------------------------------------------------------------
def test_is_nat():
    assert is_nat(Address("192.0.2.10", 5000), 5000, ["10.0.0.2"])
    assert not is_nat(Address("198.51.100.5", 5000), 5000, ["127.0.0.1", "198.51.100.5"])
    assert is_nat(Address("198.51.100.5", 5001), 5000, ["198.51.100.5"])  # port translated on the host


# -- mapping ------------------------------------------------------------------
@pytest.mark.parametrize("primary,alt_ip,alt_both,alt_port,want,inconsistent", [
    # two-IP server
    (A, A, A, A, EIM, False),
    (A, A, A, None, EIM, False),
    (A, A, None, None, EIM, False),
    (A, A, A, B, EIM, True),
    (A, B, B, A, ADM, False),
    (A, B, B, None, ADM, False),
    (A, B, B, C, ADM, True),
    (A, B, C, B, APDM, False),
    (A, B, C, None, APDM, False),
    (A, B, C, A, APDM, True),
    (A, B, None, None, UNKNOWN, False),
    (A, B, None, C, UNKNOWN, False),
    # one-IP server
    (A, None, None, B, APDM, False),
    (A, None, None, A, UNKNOWN, False),
    (A, None, None, None, UNKNOWN, False),
    # nothing
    (None, None, None, None, UNKNOWN, False),
    (None, A, A, A, UNKNOWN, False),
])
def test_mapping(primary, alt_ip, alt_both, alt_port, want, inconsistent):
    v = mapping_behaviour(primary, alt_ip, alt_both, alt_port)
    assert v.behaviour is want
    assert any("inconsistent" in n for n in v.notes) == inconsistent
    if want is UNKNOWN:
        assert v.notes, "an unknown always says why"


def test_mapping_one_ip_says_what_is_left_open():
    v = mapping_behaviour(A, None, None, A)
    assert "endpoint-independent or address-dependent" in v.notes[0]


# -- filtering ----------------------------------------------------------------
@pytest.mark.parametrize("both,port,want,inconsistent", [
    (True, True, EIF, False),
    (True, None, EIF, False),
    (True, False, EIF, True),
    (False, True, ADF, False),
    (False, False, APDF, False),
    (False, None, UNKNOWN, False),
    (None, False, APDF, False),
    (None, True, UNKNOWN, False),
    (None, None, UNKNOWN, False),
])
def test_filtering_every_combination(both, port, want, inconsistent):
    v = filtering_behaviour(both, port)
    assert v.behaviour is want
    assert any("inconsistent" in n for n in v.notes) == inconsistent
    if want is UNKNOWN:
        assert v.notes


# -- port allocation ----------------------------------------------------------
def test_preserving():
    assert port_allocation([(40000, 40000), (40123, 40123), (51000, 51000)]).kind is Allocation.PRESERVING


def test_too_few_samples():
    assert port_allocation([]).kind is Allocation.UNKNOWN
    assert port_allocation([(1, 1)]).kind is Allocation.UNKNOWN
    assert port_allocation([(1, 2), (3, 4)]).kind is Allocation.UNKNOWN


def test_sequential_step_one_in_any_order():
    samples = [(40000 + i * 37, p) for i, p in enumerate([20003, 20001, 20000, 20002, 20004])]
    assert port_allocation(samples) == (Allocation.SEQUENTIAL, 1)


def test_sequential_with_gaps_from_other_flows():
    samples = [(40000 + i, p) for i, p in enumerate([20000, 20001, 20003, 20004, 20007, 20008])]
    assert port_allocation(samples) == (Allocation.SEQUENTIAL, 1)


def test_sequential_step_two():
    samples = [(40000 + i, 30000 + 2 * i) for i in range(6)]
    assert port_allocation(samples) == (Allocation.SEQUENTIAL, 2)


def test_repeated_mapped_port_counts_once():
    samples = [(40000, 20000), (40001, 20000), (40002, 20001), (40003, 20002)]
    assert port_allocation(samples) == (Allocation.SEQUENTIAL, 1)


def test_sequential_wrapping_around_its_range():
    """A sequential allocator that wraps (the lab's: 20000..20999) while we
    sample: two tight runs; the newest port is the top of the low run."""
    samples = [(40000 + i, p) for i, p in enumerate([20997, 20998, 20999, 20000, 20001])]
    assert port_allocation(samples) == (Allocation.SEQUENTIAL, 1)
    assert newest_port(samples) == 20001
    assert newest_port([(1, 20003), (2, 20001), (3, 20002)]) == 20003
    assert newest_port([]) is None


def test_random():
    rnd = random.Random(7)
    for _ in range(200):
        samples = [(40000 + i, rnd.randint(1024, 65535)) for i in range(8)]
        assert port_allocation(samples).kind is Allocation.RANDOM


def test_partly_preserving_is_not_preserving():
    samples = [(40000, 40000), (40001, 40001), (40002, 61000), (40003, 1200)]
    assert port_allocation(samples).kind is Allocation.RANDOM
