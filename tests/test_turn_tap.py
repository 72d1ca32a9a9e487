"""The TURN options of `twistd natsalon`."""

from __future__ import annotations

import pytest
from twisted.logger import globalLogPublisher
from twisted.python import usage

from natsalon.server import tap
from natsalon.server.turn.auth import mint, room_credentials
from natsalon.server.turn.options import TurnOptionsMixin, pick_relay_ip
from natsalon.server.turn.relay import TURN_METHODS, TurnService
from natsalon.stun import Method

ROOM = bytes(range(16))


def parse(*argv):
    opts = tap.Options()
    opts.parseOptions(list(argv))
    return opts


@pytest.fixture
def host_addresses(monkeypatch):
    """Set the addresses the wildcard salon finds on this host."""
    def set_(*addresses):
        monkeypatch.setattr(TurnOptionsMixin, "turn_addresses", staticmethod(lambda: frozenset(addresses)))
    return set_


@pytest.fixture
def logged():
    events = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def _turn_lines(events):
    from twisted.logger import formatEvent

    return [formatEvent(e) for e in events if "TURN" in formatEvent(e)]


def _verifies(svc, username: str, password: str, now: float) -> bool:
    """Does the salon's TURN core give ``username`` the key ``password`` makes?"""
    from natsalon.stun import long_term_key

    core = svc.turn.core
    keys = core.auth.keys(username, now) + (core.room_auth.keys(username, now) if core.room_auth else [])
    return long_term_key(username, core.config.realm, password) in keys


def test_turn_is_on_by_default_with_room_credentials():
    cfg = parse("--interface", "192.0.2.1").config
    assert cfg.turn is not None and cfg.turn.secrets == () and cfg.turn.relay_ip == "192.0.2.1"
    svc = tap.makeService(parse("--interface", "192.0.2.1"))
    assert isinstance(svc.turn, TurnService) and svc.turn.relays.relay_ip == "192.0.2.1"
    assert all(svc.state.handlers[m] == svc.turn.handle for m in TURN_METHODS)
    user, password = svc.introducer.turn_credentials(ROOM, 7200.0)
    assert user == "14400:room-0001020304050607"
    assert _verifies(svc, user, password, 7300.0)
    assert not _verifies(svc, user, password + "x", 7300.0)
    assert not _verifies(svc, user, password, 14401.0)  # the hour is over
    # the room secret signs room users only: the same secret gives "alice" nothing
    secret = svc.turn.core.room_auth.secrets[0]
    assert not _verifies(svc, *mint(secret, "alice", 20000), 7300.0)
    # and it is not the cookie secret itself
    assert secret != svc.introducer.cookies.secret


def test_shared_secrets_are_accepted_beside_room_credentials():
    svc = tap.makeService(parse("--interface", "192.0.2.1", "--turn-secret", "s"))
    assert _verifies(svc, *mint(b"s", "alice", 20000), 7300.0)
    assert _verifies(svc, *svc.introducer.turn_credentials(ROOM, 7200.0), 7300.0)
    # room credentials are signed with the internal secret, not the shared one
    assert svc.introducer.turn_credentials(ROOM, 7200.0) != room_credentials(b"s", ROOM, 7200.0)


def test_salons_sharing_the_cookie_secret_agree_on_room_credentials(tmp_path):
    cookies = tmp_path / "cookies"
    cookies.write_text("a new cookie secret, 32 bytes ok\nthe previous cookie secret, rotated\n")
    one, two = (tap.makeService(parse("--interface", "192.0.2.1", "--cookie-secret-file", str(cookies)))
                for _ in range(2))
    creds = one.introducer.turn_credentials(ROOM, 7200.0)
    assert creds == two.introducer.turn_credentials(ROOM, 7200.0)
    assert _verifies(two, *creds, 7300.0)
    # after a rotation (a new first line), credentials minted with the old one still verify
    cookies.write_text("a newer cookie secret, 32 bytes!\na new cookie secret, 32 bytes ok\n")
    three = tap.makeService(parse("--interface", "192.0.2.1", "--cookie-secret-file", str(cookies)))
    assert three.introducer.turn_credentials(ROOM, 7200.0) != creds
    assert _verifies(three, *creds, 7300.0)
    # a salon with its own random cookie secret does not accept them
    alone = tap.makeService(parse("--interface", "192.0.2.1"))
    assert not _verifies(alone, *creds, 7300.0)


def test_wildcard_relays_on_the_hosts_one_ipv4_address(host_addresses):
    host_addresses("127.0.0.1", "::1", "169.254.3.4", "fe80::1", "2001:db8::1", "192.0.2.7")
    cfg = parse().config
    assert cfg.turn.relay_ip == "192.0.2.7"
    svc = tap.makeService(parse())
    assert svc.turn.relays.relay_ip == "192.0.2.7" and svc.turn.relays.interface == "0.0.0.0"
    svc = tap.makeService(parse("--interface", "::", "--port", "0", "--alt-port", "0"))
    assert svc.turn.relays.relay_ip == "192.0.2.7" and svc.turn.relays.interface == "0.0.0.0"


@pytest.mark.parametrize("addresses, why", [
    (("127.0.0.1", "192.0.2.7", "10.1.2.3"), "2 IPv4 addresses (10.1.2.3, 192.0.2.7)"),
    (("127.0.0.1", "::1", "2001:db8::1", "169.254.1.1"), "no IPv4 address"),
])
def test_an_ambiguous_relay_ip_leaves_turn_off_with_one_line(host_addresses, logged, addresses, why):
    host_addresses(*addresses)
    assert parse().config.turn is None
    lines = _turn_lines(logged)
    assert len(lines) == 1 and why in lines[0] and "--advertise" in lines[0] and "--interface" in lines[0]
    svc = tap.makeService(parse())
    assert svc.turn is None and Method.ALLOCATE not in svc.state.handlers and svc.state.channel_data is None
    # asked for explicitly, it is an error
    with pytest.raises(usage.UsageError, match="public IP: .*" + why.replace("(", r"\(").replace(")", r"\)")):
        parse("--turn-secret", "s")
    # --advertise settles it
    assert parse("--advertise", "203.0.113.9").config.turn.relay_ip == "203.0.113.9"


def test_pick_relay_ip():
    assert pick_relay_ip(["198.51.100.1", "::1", "127.0.0.1"]) == ("198.51.100.1", "")
    assert pick_relay_ip(["10.0.0.1"]) == ("10.0.0.1", "")  # a LAN salon relays on its LAN address
    assert pick_relay_ip(["224.0.0.1", "0.0.0.0", "nonsense"])[0] is None


def test_the_embedded_default_parses_on_this_host(logged):
    """``make run`` (no option at all): TURN on or off with one line, never an error."""
    turn = parse().config.turn
    assert turn is not None or len(_turn_lines(logged)) == 1


def test_no_turn_and_no_introducer():
    assert parse("--interface", "192.0.2.1", "--no-turn").config.turn is None
    svc = tap.makeService(parse("--interface", "192.0.2.1", "--no-turn"))
    assert svc.turn is None and svc.introducer.turn_credentials is None
    # without the introducer there are no room credentials: only shared secrets
    assert parse("--interface", "192.0.2.1", "--no-introducer").config.turn is None
    svc = tap.makeService(parse("--interface", "192.0.2.1", "--no-introducer", "--turn-secret", "s"))
    assert svc.turn.core.room_auth is None and svc.turn.core.auth.secrets == [b"s"]


def test_turn_options(tmp_path):
    secrets = tmp_path / "secrets"
    secrets.write_bytes(b"one\n\n  two  \n")
    cfg = parse("--interface", "192.0.2.1", "--turn-secret", "zero", "--turn-secret-file", str(secrets),
                "--turn-allow-peer", "10.0.0.0/8", "--turn-allow-peer", "127.0.0.1", "--relay-ports", "50000-50999",
                "--turn-realm", "example.org", "--turn-max-allocations", "5", "--turn-user-quota", "0",
                "--turn-bandwidth", "125000", "--turn-byte-quota", "1000000", "--turn-max-lifetime", "300",
                "--turn-user-bandwidth", "250000", "--turn-source-quota", "3").config
    turn = cfg.turn
    assert turn.secrets == (b"zero", b"one", b"two")
    assert turn.allow_peer == ("10.0.0.0/8", "127.0.0.1")
    assert turn.relay_ports == (50000, 50999) and turn.realm == "example.org"
    assert (turn.max_allocations, turn.user_quota, turn.bandwidth, turn.byte_quota) == (5, 0, 125000, 1000000)
    assert (turn.max_lifetime, turn.default_lifetime) == (300, 300)
    assert turn.user_bandwidth == 250000 and turn.source_quota == 3
    assert parse("--interface", "192.0.2.1").config.turn.source_quota == 32


def test_turn_service_registers_its_methods():
    svc = tap.makeService(parse("--interface", "127.0.0.1", "--turn-secret", "s"))
    assert isinstance(svc.turn, TurnService)
    assert all(svc.state.handlers[m] == svc.turn.handle for m in TURN_METHODS)
    assert svc.state.channel_data == svc.turn.core.channel_data


def test_advertise_gives_the_relay_ip():
    svc = tap.makeService(parse("--advertise", "203.0.113.1", "--turn-secret", "s"))
    assert svc.turn.relays.relay_ip == "203.0.113.1"


def test_no_turn_tcp():
    assert parse("--interface", "127.0.0.1", "--turn-secret", "s").config.turn.tcp
    assert not parse("--interface", "127.0.0.1", "--turn-secret", "s", "--no-turn-tcp").config.turn.tcp


def test_no_turn_wins_over_secrets():
    assert parse("--interface", "127.0.0.1", "--turn-secret", "s", "--no-turn").config.turn is None


@pytest.mark.parametrize("argv, message", [
    (["--interface", "127.0.0.1", "--turn-source-quota", "-1"], "out of range"),
    (["--turn-secret", ""], "empty secret"),
    (["--interface", "127.0.0.1", "--turn-secret", "s", "--relay-ports", "5000"], "LO-HI"),
    (["--interface", "127.0.0.1", "--turn-secret", "s", "--relay-ports", "6000-5000"], "above"),
    (["--interface", "127.0.0.1", "--turn-secret", "s", "--relay-ports", "0-5000"], "out of range"),
    (["--interface", "127.0.0.1", "--turn-secret", "s", "--turn-bandwidth", "fast"], "whole number"),
    (["--turn-allow-peer", "10.0.0.0/33"], "not a CIDR"),
    (["--turn-secret-file", "/nonexistent/secrets"], "turn-secret-file"),
])
def test_bad_turn_options(argv, message):
    with pytest.raises(usage.UsageError, match=message):
        parse(*argv)


def test_tls_options():
    turn = parse("--interface", "127.0.0.1", "--turn-secret", "s").config.turn
    assert (turn.tls_cert, turn.tls_key, turn.tls_port) == ("", "", 5349)
    turn = parse("--interface", "127.0.0.1", "--turn-secret", "s", "--tls-cert", "c.pem", "--tls-key", "k.pem",
                 "--tls-port", "443").config.turn
    assert (turn.tls_cert, turn.tls_key, turn.tls_port) == ("c.pem", "k.pem", 443)


@pytest.mark.parametrize("argv, message", [
    (["--interface", "127.0.0.1", "--turn-secret", "s", "--tls-key", "k.pem"], "needs --tls-cert"),
    (["--interface", "127.0.0.1", "--turn-secret", "s", "--no-turn", "--tls-cert", "c.pem"], "not with --no-turn"),
    (["--interface", "127.0.0.1", "--no-introducer", "--tls-cert", "c.pem"], "needs --turn-secret"),
    (["--interface", "127.0.0.1", "--turn-secret", "s", "--tls-cert", "c.pem", "--tls-port", "70000"], "out of range"),
])
def test_bad_tls_options(argv, message):
    with pytest.raises(usage.UsageError, match=message):
        parse(*argv)


def test_the_relayed_sockets_bind_on_the_salons_interface_of_the_relay_ips_family():
    from natsalon.server.service import SalonConfig, _relay_bind

    assert _relay_bind(SalonConfig(interface="::"), 4) == "0.0.0.0"
    assert _relay_bind(SalonConfig(interface="0.0.0.0"), 4) == "0.0.0.0"
    assert _relay_bind(SalonConfig(interface="192.0.2.1"), 4) == "192.0.2.1"
    assert _relay_bind(SalonConfig(interface="2001:db8::1"), 6) == "2001:db8::1"
