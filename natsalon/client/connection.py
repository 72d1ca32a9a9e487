"""The user's handle on the peer: :class:`Connection` sends and receives
payload over whichever verified path the client machine
(:mod:`natsalon.client.session`) currently holds.

The connection outlives paths: when a path dies the machine re-joins the
room and punches again, then :meth:`Connection.attach` gives the
connection the new session's path and keys; meanwhile ``send`` returns
False and frames are dropped.  It holds no timers and makes no decisions:
keepalives are :mod:`natsalon.client.keepalive`, re-joining is the
machine's.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional

from twisted.internet import defer
from twisted.logger import Logger

from natsalon.client.punch import Path, Puncher
from natsalon.crypto.aead import FrameRejected, Opener, PlainCodec, Sealer
from natsalon.crypto.secret import SessionKeys
from natsalon.stun import Address


class Connection:
    """A UDP path to the peer, verified both ways.

    - ``send(payload) -> bool``: one datagram to the peer (False when there
      is no path right now: the machine is re-joining);
    - ``set_receiver(callable(payload))``: where the peer's datagrams go;
    - ``path``: the current :class:`natsalon.client.punch.Path`
      (``address``, ``kind``, ``rtt``), None while re-joining;
    - ``sent`` / ``received`` / ``rejected``: frame counters;
    - ``info``: ``elapsed`` (s from ``connect()`` to the first path),
      ``punch`` (s from the introduction to it), ``observed`` (our public
      endpoint as the salon saw it);
    - ``local_port``: the UDP port of the punched socket;
    - ``close()``: stop the machine, release the socket.
    """

    log = Logger()

    def __init__(self, clock, socket, encrypt: bool = True,
                 on_close: Optional[Callable[[], object]] = None) -> None:
        self.clock = clock
        self.socket = socket
        self.encrypt = encrypt
        self.on_close = on_close
        self.on_event: Callable[[dict], None] = lambda event: None
        self.receiver: Callable[[bytes], None] = lambda payload: None
        self.puncher: Optional[Puncher] = None
        self.path: Optional[Path] = None
        self.sent = 0
        self.received = 0
        self.rejected = 0
        self.sent_bytes = self.received_bytes = 0  #: payload bytes
        self.closed = False
        self.info: Dict[str, object] = {}
        self.local_port = 0
        self._sealer = None
        self._opener = None

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
            frame = self._sealer.seal(payload)
            local = self.path.local
            # from the path's own local socket: an extra socket, a TURN
            # allocation (natsalon.client.relay), or the client's socket
            if local is not None and self.puncher is not None and local is not self.puncher.default_socket:
                local.send(frame, tuple(self.path.address))
            else:
                self.socket.write(frame, tuple(self.path.address))
        except OSError:
            return False
        self.sent += 1
        self.sent_bytes += len(payload)
        return True

    def close(self) -> None:
        """Stop for good: the machine stops (its pending work cancelled)
        and the socket is released."""
        if self.closed:
            return
        self.closed = True
        self.detach()
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

    # -- driven by the client machine ----------------------------------------
    def attach(self, puncher: Puncher, session: SessionKeys, path: Path) -> None:
        """Carry payload over a new verified session (first connect, or after a re-join)."""
        self.puncher = puncher
        self.path = path
        if self.encrypt:
            self._sealer = Sealer(session.k_data, session.role)
            self._opener = Opener(session.k_data, 1 - session.role)
        else:
            self._sealer = self._opener = PlainCodec()

    def move(self, path: Path) -> None:
        """Carry payload over another verified path of the same session
        (an upgrade from relayed to direct): same keys, same frame counters."""
        if self.path is not None:
            self.path = path

    def detach(self) -> None:
        """The path is gone: drop frames until the next :meth:`attach`."""
        self.path = None

    def frame_received(self, data: bytes, addr) -> None:
        if not self.connected:
            return
        # without encryption the source address is all that tells the peer
        # apart: only the selected path, or another pair that verified both
        # ways (the peer may still send on it for a round trip while the
        # sides agree on one path, :mod:`natsalon.client.punch.nomination`),
        # counts, not mere candidates
        if not self.encrypt and not self._verified_source(Address(addr[0], addr[1])):
            self.rejected += 1
            return
        try:
            payload = self._opener.open(data)
        except FrameRejected as e:
            self.rejected += 1
            self.log.debug("frame rejected: {reason}", reason=e)
            return
        self.received += 1
        self.received_bytes += len(payload)
        self.receiver(payload)

    def _verified_source(self, src: Address) -> bool:
        if src == self.path.address:
            return True
        pairs = self.puncher.pairs.values() if self.puncher is not None else ()
        return any(p.verified and p.address == src for p in pairs)
