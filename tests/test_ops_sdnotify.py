"""systemd notify: READY/STATUS/WATCHDOG/STOPPING written to NOTIFY_SOCKET,
unit-tested on a Clock and checked against a real ``twistd -n natsalon``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
from twisted.internet import task

from natsalon.ops.sdnotify import NotifyService, socket_address, watchdog_interval
from natsalon.ops.testing import NotifyListener

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


class RunningClock(task.Clock):
    def callWhenRunning(self, f, *a, **kw):
        f(*a, **kw)


@pytest.fixture
def listener(tmp_path):
    n = NotifyListener(str(tmp_path / "notify"))
    yield n
    n.close()


def test_addresses():
    assert socket_address({}) is None
    assert socket_address({"NOTIFY_SOCKET": "/run/systemd/notify"}) == "/run/systemd/notify"
    assert socket_address({"NOTIFY_SOCKET": "@abstract"}) == "\0abstract"
    assert socket_address({"NOTIFY_SOCKET": "relative"}) is None


def test_watchdog_interval_honours_watchdog_pid():
    assert watchdog_interval({"WATCHDOG_USEC": "20000000"}) == 10.0
    assert watchdog_interval({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": str(os.getpid())}) == 10.0
    assert watchdog_interval({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({}) is None


def test_ready_status_watchdog_stopping(listener):
    clock = RunningClock()
    status = ["3 rooms"]
    svc = NotifyService(clock, lambda: status[0], environ={"NOTIFY_SOCKET": listener.name,
                                                            "WATCHDOG_USEC": "2000000"}, status_interval=10)
    svc.startService()
    first = listener.read()[0].split("\n")
    assert first[0] == "READY=1" and "STATUS=3 rooms" in first
    clock.advance(1.0)
    assert listener.read()[-1] == "WATCHDOG=1"
    status[0] = "4 rooms"
    clock.pump([1.0] * 9)
    assert "STATUS=4 rooms" in listener.read()
    assert listener.messages.count("WATCHDOG=1") == 10
    svc.stopService()
    assert "STOPPING=1" in listener.read()[-1].split("\n")
    n = len(listener.messages)
    clock.advance(10)
    assert len(listener.read()) == n  # nothing after stopping


def test_ready_waits_for_the_daemon(listener):
    clock = RunningClock()
    ready = [False]
    svc = NotifyService(clock, lambda: "opening", environ={"NOTIFY_SOCKET": listener.name}, ready=lambda: ready[0])
    svc.startService()
    clock.advance(1)
    assert listener.read() == []
    ready[0] = True
    clock.advance(0.2)
    assert listener.read()[0].startswith("READY=1")
    svc.stopService()


def test_abstract_socket():
    name = "@natsalon-test-%s" % uuid.uuid4().hex
    listener = NotifyListener(name)
    try:
        svc = NotifyService(RunningClock(), lambda: "ok", environ={"NOTIFY_SOCKET": name})
        svc.startService()
        assert listener.read()[0].startswith("READY=1")
        svc.stopService()
    finally:
        listener.close()


def test_no_socket_no_messages_no_errors():
    svc = NotifyService(RunningClock(), lambda: "ok", environ={})
    svc.startService()
    svc.stopService()
    assert not svc.notifier.enabled


def test_a_failing_summary_does_not_stop_the_daemon(listener):
    svc = NotifyService(RunningClock(), lambda: 1 / 0, environ={"NOTIFY_SOCKET": listener.name})
    svc.startService()
    assert "STATUS=running" in listener.read()[0].split("\n")
    svc.stopService()


def test_twistd_natsalon_notifies_systemd(tmp_path, listener):
    env = dict(os.environ, NOTIFY_SOCKET=listener.name, WATCHDOG_USEC="1000000")
    env.pop("WATCHDOG_PID", None)
    proc = subprocess.Popen([TWISTD, "-n", "--pidfile=", "natsalon", "--interface", "127.0.0.1", "--port", "0",
                             "--alt-port", "0"], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        ready = listener.wait_for("READY=1")
        lines = ready.split("\n")
        assert "MAINPID=%d" % proc.pid in lines
        status = [line for line in lines if line.startswith("STATUS=")]
        assert status and "0 rooms" in status[0], lines
        listener.wait_for("WATCHDOG=1", timeout=5)
        proc.send_signal(signal.SIGTERM)
        listener.wait_for("STOPPING=1")
        out = proc.communicate(timeout=30)[0].decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode in (0, -signal.SIGTERM), out  # Twisted 26 re-raises SIGTERM
    # READY only once every socket was bound: the serving line came first
    assert "natsalon serving STUN on" in out


def test_twistd_natsalon_no_watchdog_for_another_pid(tmp_path, listener):
    env = dict(os.environ, NOTIFY_SOCKET=listener.name, WATCHDOG_USEC="200000", WATCHDOG_PID="1")
    proc = subprocess.Popen([TWISTD, "-n", "--pidfile=", "natsalon", "--interface", "127.0.0.1", "--port", "0",
                             "--alt-port", "0"], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        listener.wait_for("READY=1")
        listener.read(timeout=1.0)
        assert "WATCHDOG=1" not in listener.messages
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _wait_for_stun(port: int, limit: float = 30.0) -> None:
    """Until something answers a plain Binding request on 127.0.0.1:port."""
    import socket
    import struct

    deadline = time.monotonic() + limit
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        while time.monotonic() < deadline:
            s.sendto(struct.pack("!HHI", 1, 0, 0x2112A442) + os.urandom(12), ("127.0.0.1", port))
            try:
                s.recvfrom(2048)
                return
            except OSError:
                time.sleep(0.1)
    raise AssertionError("no salon on port %d" % port)


def test_twistd_natclient_ready_once_open_and_reload(tmp_path, listener):
    import socket

    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    stun = s.getsockname()[1]
    s.close()
    salon = subprocess.Popen([TWISTD, "-n", "--pidfile=", "natsalon", "--interface", "127.0.0.1", "--port", str(stun),
                              "--alt-port", "0"], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_stun(stun)  # else the client's first join meets an ICMP port unreachable and backs off
    cfg = tmp_path / "client.toml"
    cfg.write_text('server = "127.0.0.1:%d"\nroom = "notify"\nsecret = "a shared secret"\ninterface = "127.0.0.1"\n'
                   'log-level = "info"\n' % stun)
    env = dict(os.environ, NOTIFY_SOCKET=listener.name)
    client = subprocess.Popen([TWISTD, "-n", "--pidfile=", "natclient", "--config", str(cfg)], env=env,
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        ready = listener.wait_for("READY=1").split("\n")
        status = [line for line in ready if line.startswith("STATUS=")][0]
        assert status.split("=", 1)[1].split(";")[0] in ("joining", "waiting"), ready
        cfg.write_text(cfg.read_text().replace('"info"', '"debug"'))
        client.send_signal(signal.SIGHUP)
        listener.wait_for("RELOADING=1")
        n = listener.messages.index("RELOADING=1")
        deadline = time.monotonic() + 60
        while not any(m.startswith("READY=1") for m in listener.read()[n:]) and time.monotonic() < deadline:
            pass
        assert any(m.startswith("READY=1") for m in listener.messages[n:]), listener.messages
        client.send_signal(signal.SIGTERM)
        listener.wait_for("STOPPING=1")
        out = client.communicate(timeout=30)[0].decode()
    finally:
        for p in (client, salon):
            if p.poll() is None:
                p.terminate()
            p.wait(timeout=30)
    assert "reload: log-level 'info' -> 'debug'" in out, out
