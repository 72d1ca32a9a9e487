"""`twistd natsalon` options: good ones build the service, bad ones are one
clear line and a non-zero exit."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import twisted
from twisted.python import usage

from natsalon.server import tap
from natsalon.server.service import SalonService
from natsalon.server.udpservice import DatagramService

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
# twistd before Twisted 26.10 (the newest on PyPy 3.9 is 26.4) prints a
# usage error and exits 0; later versions exit 1
TWISTD_EXITS_ON_USAGE_ERROR = tuple(int(x) for x in twisted.__version__.split(".")[:2]) >= (26, 10)


def parse(*argv):
    opts = tap.Options()
    opts.parseOptions(list(argv))
    return opts


def test_defaults():
    cfg = parse().config
    assert (cfg.interface, cfg.port, cfg.alt_port, cfg.alt_ip) == ("0.0.0.0", 3478, 3479, None)
    assert cfg.rate_limit > 0


def test_two_ip_service_has_four_sockets():
    opts = parse("--interface", "192.0.2.1", "--alt-ip", "192.0.2.2", "--advertise", "203.0.113.1")
    svc = tap.makeService(opts)
    assert isinstance(svc, SalonService)
    sockets = [s for s in svc if isinstance(s, DatagramService)]
    assert sorted((s.interface, s.port) for s in sockets) == [
        ("192.0.2.1", 3478), ("192.0.2.1", 3479), ("192.0.2.2", 3478), ("192.0.2.2", 3479)]
    assert not svc.running  # makeService only wires


def test_one_ip_service_has_two_sockets():
    svc = tap.makeService(parse("--port", "5000", "--alt-port", "5001"))
    assert sorted(s.port for s in svc if isinstance(s, DatagramService)) == [5000, 5001]


@pytest.mark.parametrize("argv,words", [
    (["--interface", "nope"], "--interface"),
    (["--port", "70000"], "--port"),
    (["--port", "x"], "whole number"),
    (["--port", "4000", "--alt-port", "4000"], "must differ"),
    (["--alt-ip", "192.0.2.2"], "needs --interface set to a specific"),
    (["--interface", "192.0.2.1", "--alt-ip", "2001:db8::1"], "IP versions"),
    (["--interface", "192.0.2.1", "--alt-ip", "192.0.2.1"], "must differ"),
    (["--advertise-alt", "192.0.2.9"], "needs --alt-ip"),
    (["--rate-limit", "-1"], "--rate-limit"),
])
def test_bad_options_are_usage_errors(argv, words):
    with pytest.raises(usage.UsageError, match=re.escape(words)):
        parse(*argv)


@pytest.mark.parametrize("argv, line", [
    (["natsalon", "--port", "99999"], "twistd natsalon: error: --port: 99999 is out of range (0 to 65535)"),
    (["natclient", "--server", "127.0.0.1", "--room", "r", "--secret", "s", "--keepalive", "0"],
     "twistd natclient: error: --keepalive: 0 is out of range (1 to 3600 seconds)"),
    (["natclient", "--room", "r", "--secret", "s"], "twistd natclient: error: --server is required"),
])
def test_twistd_rejects_bad_option_with_one_clear_line(tmp_path, argv, line):
    r = subprocess.run([TWISTD, "-n", "--pidfile="] + argv, capture_output=True, text=True, cwd=tmp_path,
                       timeout=60)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip() == line


def test_twistd_help_lists_every_option():
    r = subprocess.run([TWISTD, "natsalon", "--help"], capture_output=True, text=True, timeout=60)
    for opt in ("--interface", "--port", "--alt-port", "--alt-ip", "--advertise", "--advertise-alt",
                "--rate-limit", "--max-sources"):
        assert opt in r.stdout


def test_port_in_use_is_one_clear_line(tmp_path):
    import socket

    busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    busy.bind(("127.0.0.1", 0))
    port = busy.getsockname()[1]
    try:
        r = subprocess.run([TWISTD, "-n", "--pidfile=", "natsalon", "--interface", "127.0.0.1",
                            "--port", "0", "--alt-port", str(port)],
                           capture_output=True, text=True, cwd=tmp_path, timeout=60)
    finally:
        busy.close()
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert "natsalon: cannot listen on 127.0.0.1:%d" % port in out
    assert "Traceback" not in out
