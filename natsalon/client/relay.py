"""The relayed candidate: one TURN allocation at the salon, seen by the
:class:`~natsalon.client.punch.Puncher` as one more local socket.

:class:`Relay` wraps a :class:`~natsalon.client.turn.client.TurnClient`
that shares the client's UDP socket (the salon answers TURN on its STUN
port).  Its :attr:`Relay.local` is a
:class:`~natsalon.client.punch.LocalSocket` whose ``send`` relays through
the allocation, so the puncher probes and answers through it like through
any socket, and the connection's frames follow it (a
:class:`~natsalon.client.connection.Connection` sends from its path's
local socket).  What the relay hands back (ChannelData, Data
indications) goes to the client socket's usual consumers: payload frames
to ``on_frame``, punch probes to ``on_punch`` tagged with :attr:`local`.

How the peer learns the relayed address: the client re-JOINs the room
with it (NS-RELAY, :mod:`natsalon.wire.join`; the salon updates the
member's JOIN and hands it to the peer's next JOIN, verified with k_join
end to end like the rest).  The peer probes it from its own socket; the
allocation permits the peer's public IP at once, so those probes come
through, and are answered through the allocation (to the peer's mapping
for the relayed address, which its NAT lets in since the peer sent
there).  The path is verified both ways with the session keys like any
other; the relay sees only PUNCH probes and AEAD frames.

Data goes as Send indications until a channel to the peer's address is
bound (bound on the first send to it), then as ChannelData.
:meth:`Relay.close` releases the allocation (Refresh with LIFETIME 0).
"""

from __future__ import annotations

from typing import Callable, Optional, Set, Tuple

from twisted.internet import defer
from twisted.logger import Logger

from natsalon.client.punch import LocalSocket
from natsalon.client.turn.client import Allocation, TurnClient, is_channel_data
from natsalon.crypto.aead import is_frame
from natsalon.stun import Address, Class, Method, StunDecodeError, decode


class Relay:
    """One allocation at ``server`` with ``credentials`` (username,
    password), on the client socket ``sock`` (a
    :class:`~natsalon.client.demux.ClientSocket`)."""

    log = Logger()

    def __init__(self, clock, sock, server: Tuple[str, int], credentials: Tuple[str, str],
                 lifetime: int = 600) -> None:
        self.clock = clock
        self.sock = sock
        self.server = (server[0], server[1])
        self.turn = TurnClient(clock, sock.write, self.server, credentials[0], credentials[1], lifetime=lifetime)
        self.local = LocalSocket(self.send, "relay", relayed=self.server)
        self.allocation: Optional[Allocation] = None
        self.closed = False
        self._binding: Set[Address] = set()
        self._allocating: Optional[defer.Deferred] = None
        #: called with a reason when the allocation is lost (a refresh failed)
        self.on_lost: Callable[[str], None] = lambda reason: None
        self.turn.on_lost = lambda reason: self.on_lost(reason)

    @property
    def relayed(self) -> Optional[Address]:
        return self.allocation.relayed if self.allocation is not None else None

    def start(self, peer_host: str) -> defer.Deferred:
        """Allocate, then permit ``peer_host`` (the peer's public IP); fires
        with the relayed :class:`Address` as soon as it is allocated (fails
        with :class:`~natsalon.client.turn.client.TurnError`): the
        permission is installed meanwhile, within one round trip to the
        server, before the peer can learn the address (through the salon,
        one round trip at least) and probe it."""
        self.sock.relays[self.server] = self.datagram
        d = self._allocating = self.turn.allocate()

        def allocated(allocation: Allocation):
            self._allocating = None
            self.allocation = allocation
            self.turn.permit(peer_host).addErrback(self._permit_failed)
            return allocation.relayed

        return d.addCallback(allocated)

    def _permit_failed(self, f) -> None:
        if not f.check(defer.CancelledError):
            self.log.warn("TURN permission for the peer refused: {e}", e=f.getErrorMessage())

    def close(self) -> defer.Deferred:
        """Release the allocation (idempotent); fires True once the server
        confirmed.  Nothing is relayed afterwards."""
        if self.closed:
            return defer.succeed(False)
        self.closed = True
        if self._allocating is not None:
            self._allocating.cancel()
        self.allocation = None
        d = self.turn.close()

        def unhook(result):
            if self.sock.relays.get(self.server) == self.datagram:
                del self.sock.relays[self.server]
            return result

        return d.addBoth(unhook)

    # -- data ----------------------------------------------------------------
    def send(self, data: bytes, addr) -> None:
        """Relay ``data`` to ``addr`` (the :attr:`local` socket's send);
        binds a channel to ``addr`` on the first send."""
        if self.closed or self.allocation is None:
            raise OSError("no relay allocation")
        peer = Address(addr[0], addr[1])
        if peer not in self.turn.channels and peer not in self._binding:
            self._binding.add(peer)
            self.turn.bind(peer).addErrback(self._bind_failed, peer)
        if not self.turn.send(data, peer):
            raise OSError("relay send failed")

    def _bind_failed(self, f, peer: Address) -> None:
        self._binding.discard(peer)  # the next send tries again
        if not f.check(defer.CancelledError):
            self.log.debug("channel bind failed: {e}", e=f.getErrorMessage())

    def datagram(self, data: bytes, addr) -> bool:
        """A datagram from the TURN server: True if it was the relay's
        (relayed data, or an answer to one of its requests)."""
        if is_channel_data(data):
            got = self.turn.datagram(data, addr)
            if got is not None:
                self._deliver(*got)
            return True
        if self.turn.transactions.datagram(data, addr):
            return True
        if len(data) < 20 or data[0] & 0xC0:
            return False
        try:
            msg = decode(data)
        except StunDecodeError:
            return False
        if msg.method != Method.DATA or msg.cls != Class.INDICATION:
            return False
        got = self.turn.datagram(data, addr)
        if got is not None:
            self._deliver(*got)
        return True

    def _deliver(self, payload: bytes, peer: Address) -> None:
        addr = (peer.host, peer.port)
        if is_frame(payload):
            self.sock.on_frame(payload, addr)
        else:
            self.sock.on_punch(payload, addr, self.local)
