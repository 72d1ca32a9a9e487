"""``--config FILE`` (TOML) for both daemons, the shipped examples and
units, JSON logs, and SIGHUP reload."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from twisted.logger import LogLevel
from twisted.python import usage

from natsalon.client import tap as client_tap
from natsalon.ops import config
from natsalon.ops.testing import free_tcp_port, require_tool, value, wait_scrape
from natsalon.server import tap

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
CONTRIB = Path(__file__).resolve().parent.parent / "contrib"


def salon_opts(*argv):
    o = tap.Options()
    o.parseOptions(list(argv))
    return o


def write(tmp_path, text, name="salon.toml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_file_sets_options_and_command_line_overrides(tmp_path):
    path = write(tmp_path, 'interface = "127.0.0.1"\nrate_limit = 50\nport = 4000\nno-introducer = true\n'
                           'turn-secret = ["a", "b"]\nmetrics = 9478\nlog-level = "debug"\n')
    o = salon_opts("--config", path, "--port", "5000")
    assert o.config.rate_limit == 50 and o.config.port == 5000 and o.config.interface == "127.0.0.1"
    assert o.config.introducer is False
    assert o.config.turn.secrets == (b"a", b"b")
    assert o.ops.metrics == ("127.0.0.1", 9478) and o.ops.config == path
    assert o.ops.levels.level is LogLevel.debug


def test_every_option_can_be_set_in_the_file(tmp_path):
    for opts_class in (tap.Options, client_tap.Options):
        o = opts_class()
        names = {name.rstrip("=") for name in o.longOpt} - config.NOT_IN_FILE
        for name in names:
            assert config.canonical(o, name) is not None


@pytest.mark.parametrize("text, words", [
    ("bogus = 1\n", "salon.toml: bogus: unknown key"),
    ("rate-limit = \"lots\"\n", "salon.toml: rate-limit: 'lots' is not a whole number"),
    ("port = 99999\n", "salon.toml: port: 99999 is out of range"),
    ("no-introducer = \"yes\"\n", "salon.toml: no-introducer: 'yes' is not true or false"),
    ("port = [1, 2]\n", "salon.toml: port: [1, 2] is not a string or a number"),
    ("[turn]\nrealm = \"x\"\n", "salon.toml: turn: tables are not options"),
    ("metrics = \"x:y\"\n", "salon.toml: metrics: 'x:y' is not [HOST:]PORT"),
    ("log-format = \"xml\"\n", "salon.toml: log-format: 'xml' is not one of text, json"),
    ("port = \n", "salon.toml: not valid TOML"),
    ("turn-secret-file = \"/nonexistent/x\"\n", "salon.toml: turn-secret-file: --turn-secret-file:"),
])
def test_bad_files_name_the_file_and_the_key(tmp_path, text, words):
    path = write(tmp_path, text)
    o = tap.Options()
    with pytest.raises(config.ConfigError) as e:
        o.ops_parse(["--config", path])
    assert words in str(e.value)
    assert "\n" not in str(e.value)


def test_a_bad_command_line_value_is_the_command_line_s(tmp_path):
    path = write(tmp_path, "rate-limit = 5\n")
    with pytest.raises(usage.UsageError, match="--rate-limit"):
        salon_opts("--config", path, "--rate-limit", "x")


def test_missing_file(tmp_path):
    with pytest.raises(config.ConfigError, match="nope.toml: cannot read"):
        tap.Options().ops_parse(["--config", str(tmp_path / "nope.toml")])


def test_twistd_bad_key_is_one_line_exit_2(tmp_path):
    path = write(tmp_path, "interface = \"127.0.0.1\"\nrate-limt = 5\n")
    r = subprocess.run([TWISTD, "-n", "--pidfile=", "natsalon", "--config", path], capture_output=True, text=True,
                       cwd=tmp_path, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip() == "config error: %s: rate-limt: unknown key" % path
    assert r.stdout == ""


def test_twistd_natclient_bad_value_is_one_line_exit_2(tmp_path):
    path = write(tmp_path, 'server = "192.0.2.1"\nroom = "r"\nsecret = "s"\ntimeout = "nan"\n', "client.toml")
    r = subprocess.run([TWISTD, "-n", "--pidfile=", "natclient", "--config", path], capture_output=True, text=True,
                       cwd=tmp_path, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip() == "config error: %s: timeout: 'nan' is not a finite number" % path


def test_client_file_and_override(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("a long shared secret\n")
    secret.chmod(0o600)
    path = write(tmp_path, 'server = "192.0.2.1:3478"\nroom = "r"\nsecret-file = "%s"\nkeepalive = 3\n'
                           'no-encrypt = true\nforward = 7000\n' % secret, "client.toml")
    o = client_tap.Options()
    o.parseOptions(["--config", path, "--keepalive", "4"])
    assert o.checked.server == ("192.0.2.1", 3478) and o.checked.keepalive == 4.0
    assert o.checked.encrypt is False and o.checked.forward == ("127.0.0.1", 7000)


@pytest.mark.parametrize("name", ["natsalon.toml", "natclient.toml"])
def test_shipped_examples_parse(tmp_path, name):
    text = (CONTRIB / "config" / name).read_text()
    if name == "natclient.toml":
        secret = tmp_path / "secret"
        secret.write_text("a long shared secret\n")
        secret.chmod(0o600)
        text = re.sub(r'secret-file = "[^"]*"', 'secret-file = "%s"' % secret, text)
        text = text.replace("salon.example.org", "192.0.2.1")
        o = client_tap.Options()
    else:
        o = tap.Options()
    path = write(tmp_path, text, name)
    o.parseOptions(["--config", path])
    assert o.ops.metrics is not None


@pytest.mark.parametrize("unit", ["natsalon.service", "natclient@.service"])
def test_units_pass_systemd_analyze_verify(tmp_path, unit):
    analyze = require_tool("systemd-analyze", "systemd")
    text = (CONTRIB / "systemd" / unit).read_text()
    assert "Type=notify" in text and "WatchdogSec=" in text and "ExecReload=" in text
    assert "NoNewPrivileges=true" in text and "CapabilityBoundingSet=\n" in text and "ProtectSystem=strict" in text
    text = text.replace("/opt/natsalon/bin/twistd", TWISTD)
    name = unit.replace("@.", "@office.")
    (tmp_path / name).write_text(text)
    r = subprocess.run([analyze, "verify", "--man=no", str(tmp_path / name)], capture_output=True, text=True,
                       timeout=120, env=dict(os.environ, SYSTEMD_LOG_LEVEL="warning"))
    problems = [line for line in (r.stdout + r.stderr).splitlines() if name in line or unit in line]
    assert r.returncode == 0 and not problems, r.stdout + r.stderr


def run_salon(tmp_path, *argv, env=None):
    return subprocess.Popen([TWISTD, "-n", "--pidfile=", "natsalon", "--interface", "127.0.0.1", "--port", "0",
                             "--alt-port", "0"] + list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            cwd=tmp_path, env=env)


def test_json_logs_one_object_per_event(tmp_path):
    proc = run_salon(tmp_path, "--log-format", "json")
    time.sleep(0.2)
    try:
        deadline = time.monotonic() + 20
        lines = []
        while time.monotonic() < deadline:
            line = proc.stdout.readline().decode()
            lines.append(line)
            if "serving STUN" in line:
                break
    finally:
        proc.terminate()
        rest = proc.communicate(timeout=30)[0].decode()
    events = [json.loads(line) for line in lines + rest.splitlines() if line.strip()]
    assert any("natsalon serving STUN" in e.get("log_format", "") for e in events)
    assert all("log_level" in e for e in events)


def test_debug_is_off_by_default_and_moves(tmp_path):
    from twisted.logger import Logger

    from natsalon.ops import logs

    levels = logs.LevelFilter(logs.parse_level("info"))
    parent = {"logfile": str(tmp_path / "out.log")}
    assert logs.install(parent, "json", levels)
    assert parent["logger"] == "natsalon.ops.logs.twistd_observer"
    observer = logs.twistd_observer()
    log = Logger(observer=observer)
    log.debug("peer {peer}", peer="198.51.100.1:4000")
    log.info("serving")
    levels.set(LogLevel.debug)
    log.debug("now {what}", what="shown")
    observer._observer._outFile.flush()
    events = [json.loads(line) for line in (tmp_path / "out.log").read_text().splitlines()]
    assert [e["log_format"] for e in events] == ["serving", "now {what}"]
    assert not logs.install({"logger": "x.y"}, "json", levels)  # the user's --logger wins
    assert not logs.install({"syslog": True}, "json", levels)
    assert not logs.install(None, "json", levels)


def test_log_level_choices():
    from natsalon.ops import logs

    assert logs.parse_level("WARNING") is LogLevel.warn
    with pytest.raises(ValueError, match="not a log level"):
        logs.parse_level("loud")


def test_sighup_reloads_rate_limit_and_log_level(tmp_path):
    mport = free_tcp_port()
    path = write(tmp_path, 'rate-limit = 200\nlog-level = "info"\nmetrics = %d\n' % mport)
    proc = run_salon(tmp_path, "--config", path)
    url = "http://127.0.0.1:%d/metrics" % mport
    try:
        assert value(wait_scrape(url, proc=proc), "natsalon_rate_limit") == 200
        Path(path).write_text('rate-limit = 50\nlog-level = "warn"\nmetrics = %d\nmax-rooms = 5\n' % mport)
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while value(wait_scrape(url), "natsalon_rate_limit") != 50 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert value(wait_scrape(url), "natsalon_rate_limit") == 50
        Path(path).write_text('rate-limit = "many"\n')
        proc.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        assert value(wait_scrape(url), "natsalon_rate_limit") == 50
        Path(path).write_text('rate-limit = 0\nmetrics = %d\n' % mport)
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while value(wait_scrape(url), "natsalon_rate_limit") != 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert value(wait_scrape(url), "natsalon_rate_limit") == 0
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0].decode()
    assert "reload: rate-limit '200' -> '50'" in out
    assert "reload: log-level 'info' -> 'warn'" in out
    assert "reload: max-rooms changed but need a restart" in out
    assert "rate-limit: 'many' is not a whole number" in out and "nothing changed" in out
    assert proc.poll() is not None


def test_sighup_rotates_turn_secrets():
    from natsalon.ops.reload import Reloader
    from natsalon.ops.wiring import register_salon_reloads

    argv = ["--interface", "127.0.0.1", "--turn-secret", "old", "--turn-user-quota", "5"]
    current = salon_opts(*argv)
    svc = tap.makeService(current)
    argv_new = ["--interface", "127.0.0.1", "--turn-secret", "new", "--turn-secret", "old", "--turn-user-quota", "7",
                "--turn-source-quota", "9"]
    reloader = Reloader(lambda: salon_opts(*argv_new), current)
    register_salon_reloads(reloader, svc, current.ops)
    assert sorted(reloader.reload()) == ["turn-secrets", "turn-source-quota", "turn-user-quota"]
    assert svc.turn.core.auth.secrets == [b"new", b"old"]
    assert svc.turn.core.config.user_quota == 7 and svc.turn.core.config.source_quota == 9


def test_a_reload_that_cannot_apply_says_so():
    from natsalon.ops.reload import Reloader
    from natsalon.ops.wiring import register_salon_reloads

    current = salon_opts("--interface", "127.0.0.1", "--turn-secret", "old")
    svc = tap.makeService(current)
    reloader = Reloader(lambda: salon_opts("--interface", "127.0.0.1", "--turn-secret", "old", "--no-turn"), current)
    register_salon_reloads(reloader, svc, current.ops)
    assert reloader.reload() == []
    assert svc.turn.core.auth.secrets == [b"old"]


def test_a_reload_may_drop_every_shared_secret():
    """TURN stays on without shared secrets (room credentials need none)."""
    from natsalon.ops.reload import Reloader
    from natsalon.ops.wiring import register_salon_reloads

    current = salon_opts("--interface", "127.0.0.1", "--turn-secret", "old")
    svc = tap.makeService(current)
    reloader = Reloader(lambda: salon_opts("--interface", "127.0.0.1"), current)
    register_salon_reloads(reloader, svc, current.ops)
    assert reloader.reload() == ["turn-secrets"]
    assert svc.turn.core.auth.secrets == [] and svc.turn.core.room_auth is not None
