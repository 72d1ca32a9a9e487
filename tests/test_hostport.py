"""The one HOST:PORT parser (natsalon.net.hostport) every command uses."""

import pytest

from natsalon.net.hostport import DEFAULT_PORT, parse_hostport, parse_local, parse_server


@pytest.mark.parametrize("text, expected", [
    ("203.0.113.10", ("203.0.113.10", DEFAULT_PORT)),
    ("salon.example:3479", ("salon.example", 3479)),
    ("[2001:db8::1]:5000", ("2001:db8::1", 5000)),
    ("[2001:db8::1]", ("2001:db8::1", DEFAULT_PORT)),
    ("2001:db8::1", ("2001:db8::1", DEFAULT_PORT)),
    (" 198.51.100.1:1 ", ("198.51.100.1", 1)),
])
def test_parse_server(text, expected):
    assert parse_server(text) == expected


@pytest.mark.parametrize("text, message", [
    ("h:70000", "out of range"),
    ("h:0", "out of range"),
    ("h:abc", "bad port"),
    (":3478", "no host"),
    ("", "no host"),
    ("[2001:db8::1", "bad address"),
    ("[2001:db8::1]x", "bad address"),
])
def test_parse_server_errors_are_one_line(text, message):
    with pytest.raises(ValueError) as e:
        parse_server(text)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_parse_local():
    assert parse_local("51821") == ("127.0.0.1", 51821)
    assert parse_local("0") == ("127.0.0.1", 0)
    assert parse_local("10.0.0.2:7000") == ("10.0.0.2", 7000)
    assert parse_local("[::1]:7000") == ("::1", 7000)
    for bad in ("abc", "99999", "h:", "-1"):
        with pytest.raises(ValueError):
            parse_local(bad)


def test_parse_hostport_without_default_port():
    with pytest.raises(ValueError, match="no port"):
        parse_hostport("example.org", default_port=None)
