"""Issue 12, step 1: the salon hands out TURN credentials scoped to the
room and the hour with every introduction (only past the cookie check),
and the client reads them."""

from twisted.internet import task

from natsalon import wire
from natsalon.server.introducer.handler import Introducer
from natsalon.server.turn.auth import SharedSecretAuth, room_credentials
from natsalon.stun import Address, Message, decode, encode
from natsalon.wire.join import NS_RELAY, pack_turn, unpack_turn

ROOM = bytes(range(16))
K_JOIN = b"k" * 32


def test_room_credentials_are_scoped_to_the_room_and_the_hour():
    user, password = room_credentials(b"s3cret", ROOM, 7200.5)
    assert user == "14400:room-0001020304050607"
    assert room_credentials(b"s3cret", ROOM, 10799) == (user, password)  # the same hour: the same pair
    assert room_credentials(b"s3cret", ROOM, 10800)[0] == "18000:room-0001020304050607"
    assert room_credentials(b"s3cret", bytes(16), 7200)[0] != user
    auth = SharedSecretAuth([b"s3cret"], "natsalon")
    assert auth.keys(user, 10000) and not auth.keys(user, 14401)  # the salon's TURN accepts it, then not
    assert auth.user(user) == "room-0001020304050607"


def test_pack_turn_round_trip_and_malformed():
    assert unpack_turn(pack_turn(("1:room-ab", "pw=="))) == ("1:room-ab", "pw==")
    assert unpack_turn(None) is None
    assert unpack_turn(b"nonul") is None
    assert unpack_turn(b"\0pw") is None


def _join(intro: Introducer, nonce: bytes, source: Address, relay=None):
    msg, raw = wire.join_request(ROOM, nonce, [], K_JOIN, relay=relay)
    reply = intro.handle(decode(raw), source, ("v",))
    cookie = wire.parse_join_answer(decode(reply.data)).cookie
    msg, raw = wire.join_request(ROOM, nonce, [], K_JOIN, cookie=cookie, relay=relay)
    return intro.handle(decode(raw), source, ("v",)), raw


def test_introductions_carry_the_credentials_only_past_the_cookie_check():
    clock = task.Clock()
    clock.advance(7200)
    pushed = []
    intro = Introducer(clock, push=pushed.append)
    intro.turn_credentials = lambda room, now: room_credentials(b"s3cret", room, now)
    a, b = Address("198.51.100.1", 4000), Address("203.0.113.1", 5000)
    msg, raw = wire.join_request(ROOM, b"a" * 16, [], K_JOIN)
    first = wire.parse_join_answer(decode(intro.handle(decode(raw), a, ("v",)).data))
    assert first.kind is wire.Answer.COOKIE and first.turn is None
    reply, _ = _join(intro, b"a" * 16, a)
    assert wire.parse_join_answer(decode(reply.data)).kind is wire.Answer.WAITING
    relayed = Address("192.0.2.1", 50000)
    reply, _ = _join(intro, b"b" * 16, b, relay=relayed)
    ans = wire.parse_join_answer(decode(reply.data))
    assert ans.kind is wire.Answer.INTRODUCED
    assert ans.turn == room_credentials(b"s3cret", ROOM, 7200)
    pushed_ans = wire.parse_join_answer(decode(pushed[0].data))
    assert pushed_ans.turn == ans.turn
    peer = wire.verify_peer_join(pushed_ans.peer_raw, K_JOIN, ROOM)
    assert peer.relay == relayed


def test_no_relay_no_credentials():
    clock = task.Clock()
    intro = Introducer(clock)
    _join(intro, b"a" * 16, Address("198.51.100.1", 4000))
    reply, _ = _join(intro, b"b" * 16, Address("203.0.113.1", 5000))
    ans = wire.parse_join_answer(decode(reply.data))
    assert ans.kind is wire.Answer.INTRODUCED and ans.turn is None


def test_a_join_without_relay_has_none_and_a_bad_one_is_refused():
    _, raw = wire.join_request(ROOM, b"a" * 16, [], K_JOIN)
    assert wire.parse_join_request(decode(raw)).relay is None
    msg, raw = wire.join_request(ROOM, b"a" * 16, [], K_JOIN)
    bad = Message(msg.method, msg.cls, msg.transaction_id, msg.attributes + ((NS_RELAY, b""),))
    bad = decode(encode(bad, sha256_key=K_JOIN))
    try:
        wire.parse_join_request(bad)
    except wire.WireError:
        pass
    else:
        raise AssertionError("an empty NS-RELAY was accepted")
