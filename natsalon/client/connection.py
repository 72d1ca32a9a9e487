"""The connection to the peer once a path is verified: payload frames,
keepalives, dead-path detection and re-punching through the salon.

:class:`Connection` is glue around the pieces that hold the logic
(:class:`natsalon.client.punch.Puncher` verifies probes, :mod:`natsalon.crypto.aead` seals
frames).  Every ``keepalive`` seconds it probes the path (an authenticated
PUNCH request; the peer answers and probes back).  When nothing valid has
been heard from the peer on the path for ``dead_after`` keepalive intervals
(binding expired, NAT rebinding, the peer moved or left), the path is dead:
the connection asks ``repunch()`` for a new session (a fresh join in the
salon and a new punch) and goes on with it.  Events (``connected``,
``path-lost``, ``repunch-failed``) go to ``on_event(dict)``.
"""

from __future__ import annotations

from typing import Callable, Optional

from twisted.internet import defer
from twisted.logger import Logger

from natsalon.crypto.aead import FrameRejected, Opener, PlainCodec, Sealer
from natsalon.client.punch import Path, Puncher
from natsalon.crypto.secret import SessionKeys
from natsalon.stun import Address


class Connection:
    """A punched UDP path to the peer.

    - ``send(payload)``: send one datagram (False when no path right now);
    - ``set_receiver(callable(payload))``: where the peer's datagrams go;
    - ``path`` (:class:`natsalon.client.punch.Path`: ``address``, ``kind``, ``rtt``);
    - ``close()``.
    """

    log = Logger()

    def __init__(self, clock, socket, repunch: Callable[[], defer.Deferred], keepalive: float = 15.0,
                 dead_after: int = 3, encrypt: bool = True, on_close: Optional[Callable[[], None]] = None) -> None:
        self.clock = clock
        self.socket = socket
        self.repunch = repunch
        self.keepalive = keepalive
        self.dead_after = dead_after
        self.encrypt = encrypt
        self.on_close = on_close
        self.on_event: Callable[[dict], None] = lambda event: None
        self.receiver: Callable[[bytes], None] = lambda payload: None
        self.puncher: Optional[Puncher] = None
        self.path: Optional[Path] = None
        self.sent = self.received = self.rejected = 0
        self.closed = False
        self._sealer = self._opener = None
        self._keepalive_call = None
        self._repunching: Optional[defer.Deferred] = None
        self._retry_call = None

    # -- public ------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self.path is not None and not self.closed

    @property
    def peer(self) -> Optional[Address]:
        return self.path.address if self.path else None

    def set_receiver(self, receiver: Callable[[bytes], None]) -> None:
        self.receiver = receiver

    def send(self, payload: bytes) -> bool:
        if not self.connected:
            return False
        try:
            self.socket.write(self._sealer.seal(payload), tuple(self.path.address))
        except OSError:
            return False
        self.sent += 1
        return True

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for name in ("_keepalive_call", "_retry_call"):
            call = getattr(self, name)
            if call is not None and call.active():
                call.cancel()
        if self._repunching is not None:
            self._repunching.cancel()
        if self.puncher is not None:
            self.puncher.stop()
        self.path = None
        if self.on_close is not None:
            self.on_close()

    def peer_confirmed(self, timeout: float = 3.0, interval: float = 0.1) -> defer.Deferred:
        """Fires True once the peer said it has a verified path too (its
        probes carry the connected flag), False after ``timeout``; probes
        the path meanwhile so the peer can finish."""
        d = defer.Deferred()
        deadline = self.clock.seconds() + timeout

        def check():
            if self.puncher is not None and self.puncher.peer_connected:
                d.callback(True)
            elif self.clock.seconds() >= deadline or not self.connected:
                d.callback(False)
            else:
                self.puncher.probe(self.path.address)
                self.clock.callLater(interval, check)

        check()
        return d

    # -- session -----------------------------------------------------------
    def attach(self, puncher: Puncher, session: SessionKeys, path: Path) -> None:
        """Use a new verified session (first connect, or after a re-punch)."""
        if self.puncher is not None and self.puncher is not puncher:
            self.puncher.stop()
        self.puncher = puncher
        self.path = path
        if self.encrypt:
            self._sealer = Sealer(session.k_data, session.role)
            self._opener = Opener(session.k_data, 1 - session.role)
        else:
            self._sealer = self._opener = PlainCodec()
        self._schedule_keepalive()

    def _schedule_keepalive(self) -> None:
        if self._keepalive_call is not None and self._keepalive_call.active():
            self._keepalive_call.cancel()
        self._keepalive_call = self.clock.callLater(self.keepalive, self._keepalive_tick)

    def _keepalive_tick(self) -> None:
        self._keepalive_call = None
        if not self.connected:
            return
        silent = self.clock.seconds() - self.puncher.last_heard(self.path.address)
        if silent >= self.dead_after * self.keepalive:
            self._path_lost(silent)
            return
        self.puncher.probe(self.path.address)
        self._schedule_keepalive()

    def _path_lost(self, silent: float) -> None:
        self.on_event({"event": "path-lost", "silent_s": round(silent, 1)})
        self.path = None
        self._start_repunch()

    def _start_repunch(self) -> None:
        self._retry_call = None
        if self.closed:
            return
        d = self._repunching = self.repunch()

        def done(result):
            self._repunching = None
            puncher, session, path = result
            self.attach(puncher, session, path)
            self.on_event({"event": "connected", "path": path.kind, "peer": str(path.address),
                           "rtt_ms": round(path.rtt * 1000, 1), "repunched": True})

        def failed(f):
            self._repunching = None
            if self.closed or f.check(defer.CancelledError):
                return None
            self.on_event({"event": "repunch-failed", "reason": str(f.value)})
            self._retry_call = self.clock.callLater(self.keepalive, self._start_repunch)

        d.addCallbacks(done, failed)

    # -- receiving -----------------------------------------------------------
    def frame_received(self, data: bytes, addr) -> None:
        if not self.connected:
            return
        # without encryption the source address is all that tells the peer
        # apart: only the verified, selected path counts (not mere candidates)
        if not self.encrypt and Address(addr[0], addr[1]) != self.path.address:
            self.rejected += 1
            return
        try:
            payload = self._opener.open(data)
        except FrameRejected as e:
            self.rejected += 1
            self.log.debug("frame rejected: {reason}", reason=e)
            return
        self.received += 1
        self.receiver(payload)
