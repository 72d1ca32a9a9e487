"""The client's options, one check for ``natsalon connect`` and ``twistd
natclient``: every bad value is one line naming the option, exit status 2."""

import socket
import subprocess
import sys

import pytest
from twisted.python import usage

import natsalon
from natsalon.client.options import DEFAULTS, OptionError, check
from natsalon.client.tap import Options

BASE = {"server": "127.0.0.1:9", "room": "r", "secret": "s"}

BAD = [
    ({"keepalive": "0"}, "--keepalive: 0 is out of range"),
    ({"keepalive": "nan"}, "--keepalive: 'nan' is not a finite number"),
    ({"timeout": "-1"}, "--timeout: -1 is out of range"),
    ({"timeout": "0"}, "--timeout: 0 is out of range"),
    ({"timeout": "nan"}, "--timeout: 'nan' is not a finite number"),
    ({"punch-timeout": "-3"}, "--punch-timeout: -3 is out of range"),
    ({"room": ""}, "--room is required"),
    ({"port": "99999"}, "--port: 99999 is out of range"),
    ({"server": "h:70000"}, "--server: port 70000 out of range"),
    ({"server": "127.0.0.1,[::1]:3478"}, "--server: salons of both IP families"),
    ({"interface": "::1"}, "--interface: ::1 is IPv6 but the salon is IPv4"),
    ({"server6": "192.0.2.1"}, "--server6: 192.0.2.1 is not an IPv6 address"),
    ({"server": "[::1]:3478", "server6": "[::1]"}, "--server6: only beside an IPv4 --server"),
    ({"interface": "not-an-ip"}, "--interface: 'not-an-ip' is not an IP address"),
    ({"forward": "abc"}, "--forward: no port in 'abc'"),
    ({"dead-after": "x"}, "--dead-after: 'x' is not a whole number"),
    ({"salon-tls": "h:70000"}, "--salon-tls: port 70000 out of range"),
    ({"probe-cache": "/nonexistent/dir/probe.json"}, "--probe-cache: no directory /nonexistent/dir"),
    ({"salon-ca": "ca.pem"}, "--salon-ca: only with --salon-tls"),
    ({"salon-tls": "203.0.113.10", "salon-ca": "/nonexistent/ca.pem"},
     "--salon-ca: cannot read /nonexistent/ca.pem: No such file or directory"),
    ({"salon-tls": "203.0.113.10", "salon-ca": natsalon.__file__},
     "--salon-ca: %s holds no PEM certificate" % natsalon.__file__),
]


@pytest.mark.parametrize("change, message", BAD)
def test_bad_values_are_one_line(change, message):
    raw = dict(DEFAULTS, **BASE)
    raw.update(change)
    with pytest.raises(OptionError) as e:
        check(raw, environ={})
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


@pytest.mark.parametrize("change, message", BAD)
def test_natclient_refuses_the_same(change, message):
    argv = []
    for k, v in dict(BASE, **change).items():
        argv += ["--" + k, v]
    with pytest.raises(usage.UsageError, match=message.replace("[", r"\[").replace("(", r"\(")):
        Options().parseOptions(argv)


def test_good_values():
    o = check(dict(DEFAULTS, **BASE, forward="7000", deliver="127.0.0.1:51820", keepalive="5"), environ={})
    assert o.server == ("127.0.0.1", 9) and o.forward == ("127.0.0.1", 7000) and o.keepalive == 5.0
    assert o.deliver == ("127.0.0.1", 51820) and o.encrypt and o.lan and o.secret == b"s"


def test_probe_cache_file_by_option_by_systemd_or_none(tmp_path):
    base = dict(DEFAULTS, **BASE)
    assert check(base, environ={}).probe_cache is None  # not outside systemd: a shared home is no place
    assert check(base, environ={"HOME": str(tmp_path)}).probe_cache is None
    under_systemd = {"STATE_DIRECTORY": str(tmp_path / "state")}
    assert check(base, environ=under_systemd).probe_cache == str(tmp_path / "state" / "probe.json")
    assert check(dict(base, **{"no-probe-cache": True}), environ=under_systemd).probe_cache is None
    mine = str(tmp_path / "p.json")
    assert check(dict(base, **{"probe-cache": mine}), environ=under_systemd).probe_cache == mine
    with pytest.raises(OptionError, match="contradict"):
        check(dict(base, **{"probe-cache": mine, "no-probe-cache": True}), environ={})


def test_salon_tls_values(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n...\n-----END CERTIFICATE-----\n")
    o = check(dict(DEFAULTS, **BASE, **{"salon-tls": "salon.example.org", "salon-ca": str(ca)}), environ={})
    assert o.salon_tls == ("salon.example.org", 5349) and o.salon_ca == str(ca)
    o = check(dict(DEFAULTS, **BASE, **{"salon-tls": "203.0.113.10:443"}), environ={})
    assert o.salon_tls == ("203.0.113.10", 443) and o.salon_ca is None
    assert check(dict(DEFAULTS, **BASE), environ={}).salon_tls is None
    o = Options()
    o.parseOptions(["--server", "192.0.2.1", "--room", "r", "--secret", "s", "--salon-tls", "salon.example.org:443",
                    "--salon-ca", str(ca)])
    assert o.checked.salon_tls == ("salon.example.org", 443) and o.checked.salon_ca == str(ca)


@pytest.mark.parametrize("change, message", BAD[:4] + BAD[7:9])
def test_connect_command_exits_2_with_one_line(change, message):
    argv = [sys.executable, "-m", "natsalon.cli", "connect"]
    for k, v in dict(BASE, **change).items():
        argv += ["--" + k, v]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == ["natsalon connect: error: " + p.stderr.strip()[25:]]
    assert message in p.stderr and p.stdout == ""


def test_taken_forward_port_is_refused_before_joining():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        # refused before any JOIN is sent (and the salon is only loopback)
        p = subprocess.run([sys.executable, "-m", "natsalon.cli", "connect", "--server", "127.0.0.1:9", "--room", "r",
                            "--secret", "s", "--forward", str(port), "--timeout", "5"],
                           capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.strip() == ("natsalon connect: error: --forward: cannot listen on 127.0.0.1:%d: "
                                "[Errno 98] Address already in use" % port)
