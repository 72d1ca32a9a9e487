"""`twistd natsalon` options of the rooms: --member-timeout and the
deprecated --room-timeout, --max-members."""

from __future__ import annotations

import re

import pytest
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.python import usage

from natsalon.server import tap
from natsalon.server.introducer.rooms import MemoryRooms


def parse(*argv):
    opts = tap.Options()
    opts.parseOptions(list(argv))
    return opts


def test_member_timeout_defaults_to_three_missed_polls():
    cfg = parse().config
    assert cfg.member_timeout == 3.5 and cfg.max_members == 6
    rooms = tap.makeService(parse("--member-timeout", "5", "--max-members", "3")).introducer.rooms
    assert isinstance(rooms, MemoryRooms) and (rooms.member_timeout, rooms.max_members) == (5.0, 3)


def test_room_timeout_still_works_with_one_deprecation_line():
    with capturedLogs() as events:
        cfg = parse("--room-timeout", "10").config
    assert cfg.member_timeout == 10.0
    (warning,) = [e for e in events if e["log_level"] >= LogLevel.warn]
    assert "--room-timeout is deprecated: use --member-timeout" in formatEvent(warning)


@pytest.mark.parametrize("argv,words", [
    (["--member-timeout", "1"], "--member-timeout: 1 is out of range"),
    (["--member-timeout", "nan"], "--member-timeout: nan is out of range"),
    (["--member-timeout", "soon"], "not a number"),
    (["--room-timeout", "0"], "--room-timeout: 0 is out of range"),
    (["--max-members", "1"], "--max-members"),
])
def test_bad_room_options_are_usage_errors(argv, words):
    with pytest.raises(usage.UsageError, match=re.escape(words)):
        parse(*argv)


def test_version_option_prints_natsalons_version(capsys):
    import natsalon

    with pytest.raises(SystemExit) as exit:
        parse("--version")
    assert exit.value.code == 0
    assert capsys.readouterr().out == "natsalon %s\n" % natsalon.__version__


def test_twistd_natsalon_version():
    import os
    import subprocess
    import sys

    import natsalon

    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    r = subprocess.run([twistd, "natsalon", "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "natsalon %s" % natsalon.__version__
