"""systemd's notify protocol (``Type=notify``), written directly: one
datagram per message to the unix socket ``$NOTIFY_SOCKET`` (an ``@`` name
is an abstract socket).  Without ``$NOTIFY_SOCKET`` every call does
nothing.

:class:`NotifyService`, the last child of a daemon's service, sends
``READY=1`` once the reactor runs (every socket of its siblings is bound by
then), ``STATUS=`` with the daemon's one-line summary every
``status_interval`` seconds, ``WATCHDOG=1`` every ``WATCHDOG_USEC / 2``
while the reactor runs its timers (only when ``WATCHDOG_PID`` is unset or
is this process), and ``STOPPING=1`` when the service stops.
"""

from __future__ import annotations

import os
import socket
from typing import Callable, Mapping, Optional

from twisted.application import service
from twisted.internet import task
from twisted.logger import Logger

log = Logger()


def socket_address(environ: Mapping[str, str]) -> Optional[str]:
    """The address to write to, or None; ``@name`` becomes ``\\0name``."""
    path = environ.get("NOTIFY_SOCKET")
    if not path or not (path.startswith("/") or path.startswith("@")):
        return None
    return "\0" + path[1:] if path.startswith("@") else path


def watchdog_interval(environ: Mapping[str, str], pid: Optional[int] = None) -> Optional[float]:
    """Seconds between WATCHDOG=1 pings (half of ``WATCHDOG_USEC``), or None
    when there is no watchdog for this process."""
    usec = environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    owner = environ.get("WATCHDOG_PID")
    if owner and owner.strip() != str(os.getpid() if pid is None else pid):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2e6 if value > 0 else None


class Notifier:
    """Sends notify messages; a failure to send is logged once, never raised."""

    def __init__(self, environ: Optional[Mapping[str, str]] = None) -> None:
        self.address = socket_address(os.environ if environ is None else environ)
        self._sock: Optional[socket.socket] = None
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *lines: str) -> bool:
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto("\n".join(lines).encode("utf-8", "replace"), self.address)
        except OSError as e:
            if not self._warned:
                self._warned = True
                log.warn("cannot notify systemd at {address!r}: {err}", address=self.address, err=e)
            return False
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _status_line(text: str) -> str:
    return " ".join(text.split())[:200]


class NotifyService(service.Service):
    """READY/STATUS/WATCHDOG/STOPPING for the daemon; ``summary()`` is its
    one-line status ("3 rooms, 1 allocation", "connected, direct, 12 ms")."""

    def __init__(self, reactor, summary: Callable[[], str], environ: Optional[Mapping[str, str]] = None,
                 status_interval: float = 10.0, ready: Optional[Callable[[], bool]] = None,
                 ready_poll: float = 0.2) -> None:
        """``ready()``: True once the daemon's sockets are bound when that
        happens after start-up (the client binds after resolving the salon
        and deriving its keys); polled every ``ready_poll`` seconds."""
        env = os.environ if environ is None else environ
        self.reactor = reactor
        self.summary = summary
        self.notifier = Notifier(env)
        self.watchdog = watchdog_interval(env)
        self.status_interval = status_interval
        self.ready = ready
        self.ready_poll = ready_poll
        self._loops = []
        self._ready_call = None

    def startService(self) -> None:
        service.Service.startService(self)
        if not self.notifier.enabled:
            return
        # callWhenRunning: now if the reactor runs, else once it does (after
        # the siblings' startService bound every socket)
        self.reactor.callWhenRunning(self._ready)

    def _ready(self) -> None:
        self._ready_call = None
        if not self.running:
            return
        if self.ready is not None and not self.ready():
            self._ready_call = self.reactor.callLater(self.ready_poll, self._ready)
            return
        self.notifier.send("READY=1", "STATUS=" + self._summary(), "MAINPID=%d" % os.getpid())
        self._start_loop(self.status_interval, self._status)
        if self.watchdog is not None:
            self._start_loop(self.watchdog, self._ping)

    def _start_loop(self, interval: float, f) -> None:
        loop = task.LoopingCall(f)
        loop.clock = self.reactor
        loop.start(interval, now=False)
        self._loops.append(loop)

    def _summary(self) -> str:
        try:
            return _status_line(self.summary())
        except Exception:  # noqa: BLE001 - a boundary like the datagram one: a status
            # line must never keep READY=1 from systemd nor stop the updates
            log.failure("the status summary failed")
            return "running"

    def _status(self) -> None:
        self.notifier.send("STATUS=" + self._summary())

    def _ping(self) -> None:
        # runs from the reactor's timers: a wedged reactor stops pinging
        self.notifier.send("WATCHDOG=1")

    def reloading(self) -> None:
        self.notifier.send("RELOADING=1")

    def reloaded(self) -> None:
        self.notifier.send("READY=1", "STATUS=" + self._summary())

    def stopService(self):
        service.Service.stopService(self)
        call, self._ready_call = self._ready_call, None
        if call is not None and call.active():
            call.cancel()
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops = []
        self.notifier.send("STOPPING=1", "STATUS=stopping")
        self.notifier.close()
