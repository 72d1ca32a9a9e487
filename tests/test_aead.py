"""Payload frames: AEAD, replay window, tampering."""

import os

import pytest
from hypothesis import given, strategies as st

from natsalon.crypto.aead import FrameRejected, Opener, PlainCodec, ReplayWindow, Sealer, is_frame
from natsalon.crypto.secret import derive, new_nonce, session_keys


def pair():
    keys = derive("room", "secret")
    n1, n2 = new_nonce(), new_nonce()
    s1, s2 = session_keys(keys, n1, n2), session_keys(keys, n2, n1)
    assert s1.k_data == s2.k_data and s1.k_punch == s2.k_punch and {s1.role, s2.role} == {0, 1}
    return (Sealer(s1.k_data, s1.role), Opener(s2.k_data, s1.role),
            Sealer(s2.k_data, s2.role), Opener(s1.k_data, s2.role))


def test_roundtrip_both_ways_and_not_stun():
    a_seal, b_open, b_seal, a_open = pair()
    for i in range(100):
        frame = a_seal.seal(b"x%d" % i)
        assert is_frame(frame) and frame[0] & 0xC0  # never mistaken for STUN
        assert b_open.open(frame) == b"x%d" % i
        assert a_open.open(b_seal.seal(b"y")) == b"y"


def test_replay_rejected():
    a_seal, b_open, _, _ = pair()
    f = a_seal.seal(b"once")
    b_open.open(f)
    with pytest.raises(FrameRejected, match="replayed"):
        b_open.open(f)


def test_own_frames_reflected_back_rejected():
    a_seal, _, _, a_open = pair()
    with pytest.raises(FrameRejected):
        a_open.open(a_seal.seal(b"echo"))


@pytest.mark.parametrize("pos", [0, 1, 8, 9, 20, -1])
def test_tampered_rejected(pos):
    a_seal, b_open, _, _ = pair()
    f = bytearray(a_seal.seal(b"payload" * 4))
    f[pos] ^= 0x01
    with pytest.raises(FrameRejected):
        b_open.open(bytes(f))
    # the genuine frame still passes: a forgery does not burn its counter
    a_seal.counter = 0
    assert b_open.open(a_seal.seal(b"payload" * 4)) == b"payload" * 4


def test_other_session_rejected():
    a_seal, _, _, _ = pair()
    _, b_open, _, _ = pair()
    with pytest.raises(FrameRejected, match="authentication"):
        b_open.open(a_seal.seal(b"old session"))


def test_reordering_within_window_accepted():
    a_seal, b_open, _, _ = pair()
    frames = [a_seal.seal(b"%d" % i) for i in range(50)]
    for f in reversed(frames):
        b_open.open(f)


def test_window_too_old():
    w = ReplayWindow(64)
    w.commit(1000)
    assert not w.check(1000 - 64)
    assert w.check(1000 - 63)
    w.commit(5000)  # a jump beyond the window
    assert not w.check(1000) and w.check(4999) and not w.check(5000)


@given(st.lists(st.integers(0, 300), max_size=200))
def test_window_accepts_each_counter_once(counters):
    w = ReplayWindow(128)
    seen = set()
    highest = -1
    for n in counters:
        ok = w.check(n)
        expect = n not in seen and (n > highest or highest - n < 128)
        assert ok == expect
        if ok:
            w.commit(n)
            seen.add(n)
            highest = max(highest, n)


def test_plain_codec():
    assert PlainCodec.open(PlainCodec.seal(b"abc")) == b"abc"
    with pytest.raises(FrameRejected):
        PlainCodec.open(b"\x00abc")
