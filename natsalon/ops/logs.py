"""Logging: ``--log-format text|json`` and ``--log-level``.

twistd builds its log observer from its own options after ours are
parsed, so :func:`install` hands it a factory through twistd's
``--logger`` slot (unless the user gave ``--logger`` or ``--syslog``).  The
observer writes where twistd would (stdout under ``-n`` or with
``--logfile -``, else the ``--logfile`` file), human-readable lines or, with
``json``, one JSON object per event (Twisted's ``jsonFileLogObserver``),
behind a level filter SIGHUP can move (:class:`LevelFilter`).  Events
below ``info`` (peer addresses, per-datagram details) are dropped unless
``--log-level debug``.
"""

from __future__ import annotations

import sys
from typing import Callable, Optional

from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    jsonFileLogObserver,
    textFileLogObserver,
)
from twisted.python import logfile

FORMATS = ("text", "json")
LEVELS = ("debug", "info", "warn", "error", "critical")


def parse_level(text: str) -> LogLevel:
    """``"info"`` -> ``LogLevel.info``; ValueError names the choices."""
    name = str(text).strip().lower()
    if name == "warning":
        name = "warn"
    if name not in LEVELS:
        raise ValueError("%r is not a log level (%s)" % (text, ", ".join(LEVELS)))
    return LogLevel.levelWithName(name)


class LevelFilter:
    """The level below which events are dropped; :meth:`set` moves it at
    run time (SIGHUP)."""

    def __init__(self, level: LogLevel = LogLevel.info) -> None:
        self.predicate = LogLevelFilterPredicate(defaultLogLevel=level)
        self.level = level

    def set(self, level: LogLevel) -> None:
        self.level = level
        self.predicate.defaultLogLevel = level
        self.predicate.clearLogLevels()

    def wrap(self, observer):
        return FilteringLogObserver(observer, [self.predicate])


def observer_factory(fmt: str, levels: LevelFilter, logfile_name: Optional[str],
                     daemon: bool = False) -> Callable[[], object]:
    """The ``--logger`` factory twistd calls: the observer for ``fmt``,
    writing where twistd would (stdout, or ``twistd.log`` for a daemon
    without ``--logfile``), filtered by ``levels``."""
    if daemon and not logfile_name:
        logfile_name = "twistd.log"

    def make():
        if not logfile_name or logfile_name == "-":
            out = sys.stdout
        else:
            out = logfile.LogFile.fromFullPath(logfile_name)
        # one JSON object a line (no RFC 7464 record separator): what
        # journald, jq and log shippers read
        base = jsonFileLogObserver(out, recordSeparator="") if fmt == "json" else textFileLogObserver(out)
        return levels.wrap(base)

    return make


#: the factory :func:`twistd_observer` calls: twistd's ``--logger`` takes
#: only a dotted name, so :func:`install` leaves the factory here
_factory: Optional[Callable[[], object]] = None


def twistd_observer():
    """What twistd's ``--logger natsalon.ops.logs.twistd_observer`` calls."""
    if _factory is None:
        return textFileLogObserver(sys.stdout)
    return _factory()


def install(parent, fmt: str, levels: LevelFilter) -> bool:
    """Give twistd (``parent``: its ServerOptions, or None outside twistd)
    our observer; False when the user chose another (``--logger``,
    ``--syslog``) or there is no twistd."""
    global _factory
    if parent is None or parent.get("logger") or parent.get("syslog"):
        return False
    daemon = "nodaemon" in parent and not parent.get("nodaemon")
    _factory = observer_factory(fmt, levels, parent.get("logfile"), daemon)
    parent["logger"] = __name__ + ".twistd_observer"
    return True
