"""The ``natsalon`` command as a person meets it: version, errors on one
line in one format, signals while waiting, an unreachable salon."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

import natsalon

CMD = [sys.executable, "-m", "natsalon.cli"]


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def salon():
    """A real ``twistd -n natsalon`` on loopback; yields its port."""
    port, alt = free_udp_port(), free_udp_port()
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    proc = subprocess.Popen([twistd, "-n", "--pidfile=", "natsalon", "--interface",
                             "127.0.0.1", "--port", str(port), "--alt-port", str(alt)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in proc.stdout:
            if "natsalon serving STUN" in line:
                break
        else:
            pytest.fail("the salon did not start")
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_version():
    p = subprocess.run(CMD + ["--version"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.strip() == "natsalon %s" % natsalon.__version__


def test_no_command_is_an_error_on_stderr():
    p = subprocess.run(CMD, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.strip().splitlines()[-1] == "natsalon: error: a command is required (probe, connect, status)"


def test_unreachable_salon_is_reported_as_such_not_as_a_timeout():
    port = free_udp_port()  # nothing listens there: the kernel answers ICMP port unreachable
    p = subprocess.run(CMD + ["connect", "--server", "127.0.0.1:%d" % port, "--room", "r", "--secret", "s",
                              "--json", "--timeout", "20"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 1
    failed = json.loads(p.stdout.strip().splitlines()[-1])
    assert failed["event"] == "failed" and failed["reason"].startswith("SalonUnreachable: ")
    assert "ICMP port unreachable" in failed["reason"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_probe_interrupted_says_so_and_nothing_else(salon, sig):
    proc = subprocess.Popen(CMD + ["probe", "--server", "127.0.0.1:%d" % salon, "--lifetime"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)  # the lifetime test keeps it busy for minutes
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 130 and out == ""
    assert err.strip() == "natsalon probe: error: interrupted"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_connect_interrupted_while_waiting_leaves_and_says_so(salon, sig):
    proc = subprocess.Popen(CMD + ["connect", "--server", "127.0.0.1:%d" % salon, "--room", "alone", "--secret",
                                   "s", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    events = []
    while not events or events[-1]["event"] != "waiting":
        events.append(json.loads(proc.stdout.readline()))
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=20)
    events += [json.loads(line) for line in out.splitlines()]
    assert proc.returncode == 130, (events, err)
    assert [e["event"] for e in events] == ["joined", "waiting", "failed"]
    assert events[-1]["reason"].startswith("Interrupted")
    assert "Traceback" not in err
