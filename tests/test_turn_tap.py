"""The TURN options of `twistd natsalon`."""

from __future__ import annotations

import pytest
from twisted.python import usage

from natsalon.server import tap
from natsalon.server.turn.relay import TURN_METHODS, TurnService
from natsalon.stun import Method


def parse(*argv):
    opts = tap.Options()
    opts.parseOptions(list(argv))
    return opts


def test_turn_is_off_without_secrets():
    assert parse().config.turn is None
    svc = tap.makeService(parse())
    assert svc.turn is None and Method.ALLOCATE not in svc.state.handlers
    assert svc.state.channel_data is None


def test_turn_options(tmp_path):
    secrets = tmp_path / "secrets"
    secrets.write_bytes(b"one\n\n  two  \n")
    cfg = parse("--interface", "192.0.2.1", "--turn-secret", "zero", "--turn-secret-file", str(secrets),
                "--turn-allow-peer", "10.0.0.0/8", "--turn-allow-peer", "127.0.0.1", "--relay-ports", "50000-50999",
                "--turn-realm", "example.org", "--turn-max-allocations", "5", "--turn-user-quota", "0",
                "--turn-bandwidth", "125000", "--turn-byte-quota", "1000000", "--turn-max-lifetime", "300",
                "--turn-user-bandwidth", "250000").config
    turn = cfg.turn
    assert turn.secrets == (b"zero", b"one", b"two")
    assert turn.allow_peer == ("10.0.0.0/8", "127.0.0.1")
    assert turn.relay_ports == (50000, 50999) and turn.realm == "example.org"
    assert (turn.max_allocations, turn.user_quota, turn.bandwidth, turn.byte_quota) == (5, 0, 125000, 1000000)
    assert (turn.max_lifetime, turn.default_lifetime) == (300, 300)
    assert turn.user_bandwidth == 250000


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


def test_no_turn_wins():
    assert parse("--interface", "127.0.0.1", "--turn-secret", "s", "--no-turn").config.turn is None


@pytest.mark.parametrize("argv, message", [
    (["--turn-secret", "s"], "public IP"),
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
    (["--interface", "127.0.0.1", "--tls-cert", "c.pem"], "needs --turn-secret"),
    (["--interface", "127.0.0.1", "--turn-secret", "s", "--no-turn", "--tls-cert", "c.pem"], "needs --turn-secret"),
    (["--interface", "127.0.0.1", "--turn-secret", "s", "--tls-cert", "c.pem", "--tls-port", "70000"], "out of range"),
])
def test_bad_tls_options(argv, message):
    with pytest.raises(usage.UsageError, match=message):
        parse(*argv)
