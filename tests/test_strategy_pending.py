"""A summary published after the JOIN: ``early()`` (what a side does while
one summary of the pair is pending) checked against every lab pair, NS-NAT's
pending flag on the wire, the Joiner's update and the salon's push of an
updated JOIN."""

import itertools

import pytest
from twisted.internet.task import Clock

from natsalon import wire
from natsalon.client.strategy import Strategy, decide
from natsalon.client.strategy.table import NatClass, Pending, Role, classify, early
from natsalon.crypto.secret import derive, new_nonce
from natsalon.server.introducer.cookies import CookieJar
from natsalon.server.introducer.handler import Introducer
from natsalon.server.introducer.rooms import MemoryRooms
from natsalon.stun import Address, Class, decode
from natsalon.wire.nat import PENDING_NAT, UNKNOWN_NAT

from test_strategy import LAB

NAMES = sorted(LAB)


@pytest.mark.parametrize("known,hidden", list(itertools.product(NAMES, NAMES)))
def test_early_is_sound(known, hidden):
    """Whatever the pending summary turns out to be: a plan taken early is
    the one both sides choose once it is known, and a side punches plainly
    meanwhile only where the final strategy tolerates plain probes before
    it (never seq against seq, never none)."""
    for mine, peer in ((LAB[known], PENDING_NAT), (PENDING_NAT, LAB[known])):
        plan, pending = early(mine, peer)
        final = decide(LAB[known], LAB[hidden])
        if pending is Pending.DECIDED:
            assert plan.strategy is final.strategy
        elif pending is Pending.PLAIN:
            assert final.strategy is not Strategy.NONE
            assert not (final.strategy is Strategy.PREDICTED and final.role is Role.ORDERED)
        assert (pending is Pending.HOLD) == (classify(LAB[known]) in (NatClass.SEQ, NatClass.RANDOM))


def test_early_both_known_or_both_pending():
    a, b = LAB["symmetric_sequential"], LAB["port_restricted_cone"]
    assert early(a, b) == (decide(a, b), Pending.DECIDED)
    assert early(PENDING_NAT, PENDING_NAT) == (None, Pending.PLAIN)
    # an unknown NAT that is not pending is final: an old peer, a failed probe
    assert early(a, UNKNOWN_NAT)[1] is Pending.DECIDED and early(a, UNKNOWN_NAT)[0].strategy is Strategy.PLAIN


def test_pending_on_the_wire():
    assert wire.unpack_nat(wire.pack_nat(PENDING_NAT)) == PENDING_NAT
    assert wire.unpack_nat(wire.pack_nat(LAB["open"]._replace(pending=True))).pending is False  # known wins
    assert wire.unpack_nat(None).pending is False  # an old peer's JOIN: final


# -- the salon pushes an updated JOIN -------------------------------------------------

A = Address("192.0.2.1", 40000)
B = Address("198.51.100.7", 50000)


def _join(intro, keys, nonce, source, nat, flags=0, cookie=None):
    _, raw = wire.join_request(keys.room_id, nonce, (), keys.k_join, cookie=cookie, nat=nat, flags=flags)
    reply = intro.handle(decode(raw), source, (0, 0))
    ans = wire.parse_join_answer(decode(reply.data))
    if ans.kind is wire.Answer.COOKIE:
        return _join(intro, keys, nonce, source, nat, flags, ans.cookie)
    return ans, cookie


def test_an_update_is_pushed_to_the_room_and_a_poll_is_not():
    clock = Clock()
    pushed = []
    intro = Introducer(clock, MemoryRooms(), CookieJar(b"k" * 32), push=pushed.append)
    keys = derive("room", "s3cret")
    na, nb = new_nonce(), new_nonce()
    _join(intro, keys, na, A, LAB["symmetric_sequential"])
    ans, cookie = _join(intro, keys, nb, B, PENDING_NAT)
    assert ans.kind is wire.Answer.INTRODUCED and len(pushed) == 1  # the newcomer, as always
    _join(intro, keys, nb, B, PENDING_NAT, cookie=cookie)  # a poll: nothing pushed
    assert len(pushed) == 1
    ans, _ = _join(intro, keys, nb, B, LAB["port_restricted_cone"], wire.JOIN_FLAG_UPDATE, cookie)
    assert ans.kind is wire.Answer.INTRODUCED  # the answer brings a's JOIN
    assert wire.verify_peer_join(ans.peer_raw, keys.k_join, keys.room_id).nat == LAB["symmetric_sequential"]
    push = pushed[-1]
    assert len(pushed) == 2 and push.to == (A.host, A.port)
    assert intro.stats["introductions_pushed"] == 1 and intro.stats["updates_pushed"] == 1
    msg = decode(push.data)
    told = wire.parse_join_answer(msg)
    assert msg.cls == Class.INDICATION and told.nonce == na
    assert wire.verify_peer_join(told.peer_raw, keys.k_join, keys.room_id).nat == LAB["port_restricted_cone"]


def test_alone_in_the_room_an_update_pushes_nothing():
    pushed = []
    intro = Introducer(Clock(), MemoryRooms(), CookieJar(b"k" * 32), push=pushed.append)
    keys = derive("room", "s3cret")
    na = new_nonce()
    _, cookie = _join(intro, keys, na, A, PENDING_NAT)
    ans, _ = _join(intro, keys, na, A, LAB["open"], wire.JOIN_FLAG_UPDATE, cookie)
    assert ans.kind is wire.Answer.WAITING and pushed == []
