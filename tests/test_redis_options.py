"""The shared-rooms options of ``twistd natsalon`` (--rooms,
--redis-password-file, --instance-id, --cookie-secret-file), cookie
secret rotation, the notices' format, and a registry outage that is
answered 503 but not logged per request.  No Redis needed."""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred
from twisted.logger import LogLevel, capturedLogs
from twisted.python import usage

from natsalon import wire
from natsalon.crypto.secret import new_nonce
from natsalon.server.introducer.cookies import CookieJar
from natsalon.server.introducer.errors import RegistryUnavailable
from natsalon.server.introducer.handler import Introducer
from natsalon.server.introducer.notify import MAX_NOTICE, pack_notice, unpack_notice
from natsalon.server.introducer.redislink import RedisAddress, RedisUnavailable, parse_redis_url
from natsalon.server.introducer.redisrooms import pack_record, unpack_record
from natsalon.server.service import SalonConfig, SalonService
from natsalon.server.tap import Options
from natsalon.server.testing import LaterRooms, UDPClock
from natsalon.stun import Address, decode


def parse(*args) -> SalonConfig:
    o = Options()
    o.parseOptions(list(args))
    return o.config


@pytest.mark.parametrize("url, address", [
    ("redis://10.0.0.5", RedisAddress(host="10.0.0.5")),
    ("redis://redis.example:6380/2", RedisAddress(host="redis.example", port=6380, db=2)),
    ("redis://[2001:db8::1]:7000", RedisAddress(host="2001:db8::1", port=7000)),
    ("unix:/run/redis/redis.sock", RedisAddress(path="/run/redis/redis.sock")),
    ("unix:/run/redis.sock?db=3", RedisAddress(path="/run/redis.sock", db=3)),
])
def test_redis_urls(url, address):
    assert parse_redis_url(url) == address


@pytest.mark.parametrize("url, reason", [
    ("http://x", "expected"), ("redis://", "expected"), ("redis://x/db", "number"),
    ("redis://:pw@x", "password"), ("unix:relative.sock", "absolute"), ("unix:/s?x=1", "db=N"),
])
def test_bad_redis_urls(url, reason):
    with pytest.raises(ValueError, match=reason):
        parse_redis_url(url)


def test_memory_rooms_by_default():
    config = parse()
    assert config.rooms is None and config.cookie_secrets == ()
    with pytest.raises(usage.UsageError, match="--instance-id needs --rooms"):
        parse("--instance-id", "a")


def test_shared_rooms_options(tmp_path):
    pw, secrets = tmp_path / "pw", tmp_path / "cookies"
    pw.write_text("hunter2-hunter2\n")
    secrets.write_text("new-secret-0123456789abcdef\n\nold-secret-0123456789abcdef\n")
    config = parse("--rooms", "redis://127.0.0.1:6390/1", "--redis-password-file", str(pw),
                   "--instance-id", "salon-7", "--cookie-secret-file", str(secrets))
    assert config.rooms == RedisAddress(host="127.0.0.1", port=6390, db=1)
    assert config.redis_password == b"hunter2-hunter2" and config.instance_id == "salon-7"
    assert config.cookie_secrets == (b"new-secret-0123456789abcdef", b"old-secret-0123456789abcdef")
    # without --instance-id each process gets a name of its own
    a, b = (parse("--rooms", "unix:/tmp/r.sock").instance_id for _ in range(2))
    assert a != b


def test_sentinel_password_option(tmp_path):
    pw = tmp_path / "sentinel-pw"
    pw.write_text("sentinel-secret\n")
    config = parse("--rooms", "redis+sentinel://10.0.0.1,10.0.0.2/rooms/2", "--sentinel-password-file", str(pw))
    assert config.rooms.sentinel_password == b"sentinel-secret" and config.rooms.db == 2
    assert "sentinel-secret" not in repr(config.rooms) + str(config.rooms)  # never shown
    assert config.redis_password is None  # the master's is --redis-password-file's


@pytest.mark.parametrize("args, reason", [
    (["--rooms", "redis://x", "--sentinel-password-file", "/dev/null"], "needs --rooms redis\\+sentinel"),
    (["--sentinel-password-file", "/dev/null"], "--sentinel-password-file needs --rooms"),
    (["--rooms", "redis+sentinel://s/m", "--sentinel-password-file", "/dev/null"], "no password"),
    (["--rooms", "redis+sentinel://s/m", "--sentinel-password-file", "/nonexistent"], "--sentinel-password-file"),
    (["--rooms", "redis://x:99999"], "--rooms: bad port"),
    (["--rooms", "redis://x", "--instance-id", "a/b"], "--instance-id"),
    (["--rooms", "redis://x", "--redis-password-file", "/nonexistent"], "--redis-password-file"),
    (["--cookie-secret-file", "/nonexistent"], "--cookie-secret-file"),
])
def test_shared_rooms_option_errors(args, reason):
    with pytest.raises(usage.UsageError, match=reason):
        parse(*args)


def test_short_cookie_secret_refused(tmp_path):
    f = tmp_path / "c"
    f.write_text("short\n")
    with pytest.raises(usage.UsageError, match="shorter than 16"):
        parse("--cookie-secret-file", str(f))


def test_cookie_rotation_accepts_the_previous_secret():
    src, room = Address("192.0.2.1", 4000), b"r" * 16
    old = CookieJar(b"old" * 11)
    rotated = CookieJar(b"new" * 11, previous=[b"old" * 11])
    cookie = old.issue(src, room, 100)
    assert rotated.check(cookie, src, room, 100) and rotated.check(cookie, src, room, 130)
    assert rotated.issue(src, room, 100) != cookie  # issued with the new one
    assert not CookieJar(b"new" * 11).check(cookie, src, room, 100)
    # another salon given the same file verifies this one's cookies
    assert CookieJar(b"new" * 11).check(rotated.issue(src, room, 100), src, room, 100)


def test_records_and_notices_round_trip():
    assert unpack_record(pack_record("a", (0, 1, 4), b"\n\0join")) == ("a", (0, 1, 4), b"\n\0join")
    reply = unpack_notice(pack_notice((1, 0), ("2001:db8::1", 5), b"\x01\x11data"))
    assert reply.via == (1, 0) and reply.to == ("2001:db8::1", 5) and reply.data == b"\x01\x11data"
    for bad in (b"no newline", b'[[0,0],["h",1]]\n', b'[[0,0],["h","p"]]\nx', b"{}\nx", b"x" * (MAX_NOTICE + 1)):
        with pytest.raises((ValueError, TypeError)):
            unpack_notice(bad)


def test_a_registry_outage_is_answered_503_and_not_logged_per_request():
    clock = UDPClock()
    clock.advance(1000)
    rooms = LaterRooms()
    intro = Introducer(clock, rooms)
    with capturedLogs() as events:
        for _ in range(5):
            nonce, src = new_nonce(), Address("192.0.2.1", 4000)
            msg, raw = wire.join_request(b"r" * 16, nonce, (), b"k" * 32,
                                         cookie=intro.cookies.issue(src, b"r" * 16, clock.seconds()))
            d = intro.handle(decode(raw), src, (0, 0))
            assert isinstance(d, Deferred)
            rooms.fail(RedisUnavailable("not connected"))
            reply = d.result
            assert reply.to == ("192.0.2.1", 4000) and reply.via == (0, 0)
            answer = decode(reply.data)
            assert answer.transaction_id == msg.transaction_id
            ans = wire.parse_join_answer(answer)
            assert ans.kind is wire.Answer.REFUSED and ans.error.code == 503 and ans.retry_later
            assert len(reply.data) < len(raw)  # no amplification
        # a LEAVE during the outage goes unanswered
        token = wire.new_leave_token()
        d = intro.handle_leave(decode(wire.leave_request(b"r" * 16, new_nonce(), token)), src, (0, 0))
        rooms.fail(RedisUnavailable("not connected"))
        assert d.result is None
        d = intro.prune()
        rooms.fail(RedisUnavailable("not connected"))
    assert intro.stats["join_registry_failed"] == 5 and intro.stats["join_retry_later"] == 5
    assert intro.stats["leave_registry_failed"] == 1
    assert not [e for e in events if e["log_level"] >= LogLevel.warn]


def test_any_other_registry_failure_is_logged_and_not_answered():
    clock = UDPClock()
    clock.advance(1000)
    rooms = LaterRooms()
    intro = Introducer(clock, rooms)
    src = Address("192.0.2.1", 4000)
    _, raw = wire.join_request(b"r" * 16, new_nonce(), (), b"k" * 32,
                               cookie=intro.cookies.issue(src, b"r" * 16, clock.seconds()))
    with capturedLogs() as events:
        d = intro.handle(decode(raw), src, (0, 0))
        rooms.fail(RuntimeError("a script bug"))
    assert d.result is None and intro.stats["join_retry_later"] == 0
    assert [e for e in events if e["log_level"] >= LogLevel.critical]


def test_salon_with_shared_rooms_builds_without_connecting():
    """Building the service opens nothing: the links connect when it
    starts (twistd's makeService only wires)."""
    config = SalonConfig(interface="127.0.0.1", port=0, alt_port=0, rooms=RedisAddress(host="127.0.0.1", port=1),
                         instance_id="x", cookie_secrets=(b"s" * 16,))
    from twisted.internet import reactor

    svc = SalonService(reactor, config)
    assert svc.shared is not None and svc.introducer.rooms is svc.shared.rooms
    assert svc.introducer.cookies.secret == b"s" * 16
    assert svc.shared.link.protocol is None and not svc.running


def test_the_tap_loads_the_redis_client_only_when_rooms_are_shared():
    """txredisapi imports the global reactor: twistd must have installed
    the one it was asked for (``twistd -r ...``) before that happens."""
    import subprocess
    import sys

    code = ("import sys; import natsalon.server.tap as t; t.Options().parseOptions([]); "
            "print('txredisapi' in sys.modules, 'twisted.internet.reactor' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
