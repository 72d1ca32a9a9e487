"""SIGHUP: re-read the ``--config`` file and apply what can change without
a restart.

The services register one callable per reloadable option
(:meth:`Reloader.register`); on SIGHUP the daemon's own arguments are
parsed again over the file (the command line still wins), and for every
option whose value changed its callable gets the new parsed options.  What
changed is logged; an option that changed but cannot be reloaded is
named as needing a restart; a file that no longer parses is logged and
nothing changes.  Sockets are never re-bound.
"""

from __future__ import annotations

import signal
from typing import Callable, Dict, List, Optional

from twisted.application import service
from twisted.logger import Logger
from twisted.python import usage

from natsalon.ops.config import ConfigError

log = Logger()

#: options that say how to run, not what: never worth a restart warning
IGNORED = frozenset({"config"})
#: applied after the others
LAST = frozenset({"log-level"})


def _shown(name: str, value) -> str:
    if "secret" in name:
        return "(%d secret%s)" % (len(value), "" if len(value) == 1 else "s") if isinstance(value, list) else "(hidden)"
    return repr(value)


class Reloader:
    """``parse()`` returns freshly parsed options (or raises
    ``ConfigError`` / ``usage.UsageError``); ``current`` is what runs."""

    def __init__(self, parse: Callable[[], usage.Options], current: usage.Options) -> None:
        self.parse = parse
        self.current = current
        self.handlers: Dict[str, Callable[[usage.Options], None]] = {}
        self.before: List[Callable[[], None]] = []
        self.after: List[Callable[[], None]] = []

    def register(self, name: str, apply: Callable[[usage.Options], None]) -> None:
        """``apply(new_options)`` runs when option ``name`` changed."""
        self.handlers[name] = apply

    def reload(self) -> List[str]:
        """Re-read and apply; returns the names applied."""
        for f in self.before:
            f()
        try:
            return self._reload()
        finally:
            for f in self.after:
                f()

    def _reload(self) -> List[str]:
        try:
            new = self.parse()
        except (ConfigError, usage.UsageError) as e:
            log.error("reload: {error}; nothing changed", error=str(e))
            return []
        changed = sorted((k for k in set(new) | set(self.current)
                          if k not in IGNORED and new.get(k) != self.current.get(k)),
                         key=lambda k: (k in LAST, k))  # the log level last: its own lines still show
        applied, restart = [], [k for k in changed if k not in self.handlers]
        if restart:
            log.warn("reload: {names} changed but need a restart", names=", ".join(restart))
        if not changed:
            log.info("reload: nothing changed")
        for name in changed:
            handler = self.handlers.get(name)
            if handler is None:
                continue
            log.info("reload: {name} {old} -> {new}", name=name, old=_shown(name, self.current.get(name)),
                     new=_shown(name, new.get(name)))
            try:
                handler(new)
            except ValueError as e:  # the new value cannot be applied live (e.g. TURN turned off)
                log.warn("reload: {name} not applied: {reason}", name=name, reason=str(e))
                continue
            applied.append(name)
            self.current[name] = new.get(name)
        return applied


class ReloadService(service.Service):
    """Installs the SIGHUP handler while running; the reload itself runs
    in the reactor (``callFromThread``), never inside the signal handler."""

    def __init__(self, reactor, reloader: Reloader) -> None:
        self.reactor = reactor
        self.reloader = reloader
        self._previous = None

    def startService(self) -> None:
        service.Service.startService(self)
        try:
            self._previous = signal.signal(signal.SIGHUP, self._signalled)
        except ValueError:  # not the main thread (an embedding application)
            self._previous = None

    def _signalled(self, signum, frame) -> None:
        self.reactor.callFromThread(self.reload)

    def reload(self) -> Optional[List[str]]:
        if not self.running:
            return None
        log.info("SIGHUP: reloading the configuration")
        return self.reloader.reload()

    def stopService(self):
        service.Service.stopService(self)
        if self._previous is not None:
            try:
                signal.signal(signal.SIGHUP, self._previous)
            except ValueError:
                pass
            self._previous = None
