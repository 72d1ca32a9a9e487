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

The relayed address is of the peer's IP family (RFC 8656
REQUESTED-ADDRESS-FAMILY, :func:`relay_version`): an IPv4-only host relays
to an IPv6-only one through an IPv6 relayed address, and the other way.

How the peer learns the relayed address: the client re-JOINs the room
with it (NS-RELAY, :mod:`natsalon.wire.join`; the salon updates the
member's JOIN and hands it to the peer's next JOIN, verified with k_join
end to end like the rest).  The peer probes it from its own socket; the
allocation permits the peer's public IP at once, so those probes come
through, and are answered through the allocation (to the peer's mapping
for the relayed address, which its NAT lets in since the peer sent
there).  The path is verified both ways with the session keys like any
other; the relay sees only PUNCH probes and AEAD frames.

:class:`RelayRace` is that race's data in the client machine's
``Punching`` state: when to allocate, the re-JOINs that signal, which
allocation survives the choice of a path.

Data goes as Send indications until a channel to the peer's address is
bound (bound on the first send to it), then as ChannelData.
:meth:`Relay.close` releases the allocation (Refresh with LIFETIME 0).
"""

from __future__ import annotations

from typing import Callable, Optional, Set, Tuple

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from natsalon import wire
from natsalon.client.demux import JOIN_POLICY
from natsalon.client.punch import RELAY, CandidateKind, LocalSocket, Path, Puncher
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
        self.credentials = (credentials[0], credentials[1])
        self.turn = TurnClient(clock, sock.write, self.server, credentials[0], credentials[1], lifetime=lifetime)
        self.local = LocalSocket(self.send, "relay", relayed=self.server)
        self.allocation: Optional[Allocation] = None
        self.closed = False
        self._binding: Set[Address] = set()
        self._allocating: Optional[defer.Deferred] = None
        #: called with a reason when the allocation is lost (a refresh failed)
        self.on_lost: Callable[[str], None] = lambda reason: None
        self.turn.on_lost = lambda reason: self.on_lost(reason)
        #: ``(payload, addr)`` of every relayed punch probe before the
        #: puncher sees it (a recovery learns the peer's new source there,
        #: :mod:`natsalon.client.recovery`)
        self.learn: Optional[Callable[[bytes, tuple], None]] = None
        self.peer_host: Optional[str] = None

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
        self.peer_host = peer_host
        d = self._allocating = self.turn.allocate(relay_version(peer_host, self.server[0]))

        def allocated(allocation: Allocation):
            self._allocating = None
            self.allocation = allocation
            self.turn.permit(peer_host).addErrback(self._permit_failed)
            return allocation.relayed

        return d.addCallback(allocated)

    def _permit_failed(self, f) -> None:
        if not f.check(defer.CancelledError):
            self.log.warn("TURN permission for the peer refused: {e}", e=f.getErrorMessage())

    def check(self) -> defer.Deferred:
        """Refresh the allocation now (is it still there?): a refusal (437
        allocation mismatch after a server restart) or no answer ends in
        :attr:`on_lost`; fires when the refresh is over either way."""
        if self.closed or self.allocation is None:
            return defer.succeed(None)
        return self.turn.refresh()

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
            if self.learn is not None:
                self.learn(payload, addr)
            self.sock.on_punch(payload, addr, self.local)


def relay_version(peer_host: str, server_host: str) -> int:
    """The IP family to ask the TURN server for (0: its default, IPv4): the
    peer's, so that it can reach our relayed address from its own socket
    (an IPv6-only peer, and we on IPv4: an IPv6 relayed address).  Asked
    for explicitly unless both are IPv4, for RFC 5766 servers."""
    peer = 6 if ":" in peer_host else 4
    return 0 if peer == 4 and ":" not in server_host else peer


def relay_server(core) -> Tuple[str, int]:
    """The TURN server the client relays through: ``--turn``'s, else the salon's."""
    turn = core.turn
    return (turn.host, turn.port) if turn is not None else tuple(core.server)


def signal_relay(core, intro, cookie: Optional[bytes], relayed: Optional[Address]) -> defer.Deferred:
    """JOIN the room again as the same member (``core.member``) with our
    relayed address (NS-RELAY): the salon updates our JOIN for the peer and
    answers with the peer's.  Fires with the salon's response
    (:func:`peer_relay` reads it).  ``core`` is the client machine's
    :class:`~natsalon.client.session.Core`, ``intro`` the introduction."""
    nonce, token = core.member
    msg, _ = wire.join_request(core.keys.room_id, nonce, core.candidates, core.keys.k_join, cookie,
                               leave_hash=wire.leave_hash(token),
                               flags=0 if core.connection.encrypt else wire.JOIN_FLAG_PLAIN,
                               nat=intro.nat if intro.nat.known else None, relay=relayed)
    return core.salon.stun.request(msg, core.server, policy=JOIN_POLICY, sha256_key=core.keys.k_join)


def peer_relay(core, intro, response) -> Tuple[Optional[bytes], Optional[Address]]:
    """The salon's answer to :func:`signal_relay`: ``(cookie, None)`` when
    it asks for a new cookie (its secret rolled over, or it restarted),
    ``(None, address)`` once the peer's JOIN (verified with k_join) lists
    its relayed address, ``(None, None)`` otherwise (ask again later)."""
    try:
        ans = wire.parse_join_answer(response.message)
    except wire.WireError:
        return None, None
    if ans.kind is wire.Answer.COOKIE:
        return ans.cookie, None
    if ans.kind is not wire.Answer.INTRODUCED:
        return None, None
    for raw, _address in ans.peers:
        try:
            peer = wire.verify_peer_join(raw, core.keys.k_join, core.keys.room_id)
        except wire.WireError:
            continue
        if peer.nonce == intro.peer.nonce and peer.relay is not None:
            return None, peer.relay
    return None, None


class Pending:
    """What a relay helper waits for: one timer (``_call``) and one request
    to the salon (``_req``), cancelled together."""

    _call = None
    _req = None

    def _cancel_pending(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        req, self._req = self._req, None
        if req is not None:
            req.cancel()


class RelayRace(Pending):
    """The relay's side of the race against direct punching (data of the
    machine's ``Punch``): after ``delay`` seconds without a verified pair
    it allocates (at ``core.turn`` if given, else at the salon with the
    introduction's credentials), then re-JOINs every
    ``settings.relay_signal`` seconds with the relayed address until the
    peer's relayed address is known (then a ``relay`` candidate of the
    puncher).  :meth:`keep` hands the allocation on when the chosen path is
    relayed and releases it otherwise; :meth:`stop` cancels everything.
    ``core`` is the machine's :class:`~natsalon.client.session.Core`."""

    def __init__(self, core, puncher: Puncher, intro, started: float) -> None:
        self.core = core
        self.puncher = puncher
        self.intro = intro
        self.started = started
        self.relay: Optional[Relay] = None
        self.error: Optional[str] = None  #: why the allocation failed, if it did
        self._cookie = intro.cookie
        self._call = None
        self._req: Optional[defer.Deferred] = None

    @property
    def server(self) -> Tuple[str, int]:
        return relay_server(self.core)

    @property
    def server_text(self) -> str:
        return "%s:%d" % self.server

    def _ms(self) -> float:
        return round((self.core.clock.seconds() - self.started) * 1000, 1)

    def start(self, delay: float) -> None:
        self._call = self.core.clock.callLater(delay, self._allocate)

    def _allocate(self) -> None:
        self._call = None
        if self.puncher.best() is not None or self.puncher.selected is not None:
            return  # direct punching won the head start: no allocation
        core = self.core
        credentials = core.turn.credentials if core.turn is not None else self.intro.turn
        self.relay = Relay(core.clock, core.salon, self.server, credentials)
        core.log.info("relay: allocating at {server}", server="the salon's TURN" if core.turn is None else "--turn")
        core.emit({"event": "relay-allocating", "server": self.server_text, "after_ms": self._ms()})
        self.relay.start(self.intro.peer_address.host).addCallbacks(self._allocated, self._failed)

    def _allocated(self, relayed: Address) -> None:
        self.core.emit({"event": "relay-allocated", "server": self.server_text, "allocate_ms": self._ms()})
        self.core.log.debug("relayed address {relayed}", relayed=relayed)
        self._signal()

    def _failed(self, f: Failure) -> None:
        if f.check(defer.CancelledError):
            return
        self.error = f.getErrorMessage()
        self.core.log.warn("relay: {error}", error=self.error)
        self.core.emit({"event": "relay-failed", "reason": self.error})
        if self.relay is not None:
            self.relay.close()

    # -- signalling through the salon -------------------------------------------
    def _signal(self) -> None:
        """JOIN again with our relayed address (NS-RELAY): the salon updates
        our JOIN for the peer, and its answer lists the peer's, with its
        relayed address once it has one."""
        self._call = None
        core, relay = self.core, self.relay
        if relay is None or relay.relayed is None or self.puncher.selected is not None or core.member is None:
            return
        self._req = signal_relay(core, self.intro, self._cookie, relay.relayed)
        self._req.addCallbacks(self._signalled, self._signal_failed)

    def _signalled(self, response) -> None:
        self._req = None
        cookie, relay = peer_relay(self.core, self.intro, response)
        if cookie is not None:
            self._cookie = cookie  # the salon's secret rolled over: at once with the new one
            self._signal()
            return
        if relay is not None:
            self.core.log.debug("the peer's relayed address {relay}", relay=relay)
            self.puncher.add_candidate(relay, CandidateKind.RELAY)
            # probed at once, not at the schedule's next round (up to
            # one punch interval later): the race is on
            self.puncher.probe(relay)
            if self.core.salon_transport != "udp" and self.relay is not None:
                # our UDP reaches nobody: relay to relay (its channel permits it)
                self.puncher.add_candidate(relay, CandidateKind.RELAY, self.relay.local)
                self.puncher.probe(relay, self.relay.local)
            return
        self._call = self.core.clock.callLater(self.core.settings.relay_signal, self._signal)

    def _signal_failed(self, f: Failure) -> None:
        self._req = None
        if not f.check(defer.CancelledError):
            self._call = self.core.clock.callLater(self.core.settings.relay_signal, self._signal)

    # -- the end of the race ------------------------------------------------------
    def won(self, path: Path) -> None:
        """A relayed path was chosen: say so."""
        self.core.log.info("relayed path through TURN")
        self.core.emit({"event": "relayed", "server": self.server_text, "relay_ms": self._ms(),
                        "local": "relay" if path.local is not None and path.local.relayed else "socket"})

    def keep(self, path: Path) -> Optional[Relay]:
        """Our allocation, if it goes on with ``path``: a relayed path keeps
        it (the peer may have chosen it even if we chose its own); any other
        releases it."""
        self._cancel_pending()
        relay, self.relay = self.relay, None
        if relay is not None and path.kind != RELAY:
            relay.close()
            return None
        return relay


    def stop(self) -> None:
        """Cancel the pending work and release the allocation."""
        self._cancel_pending()
        relay, self.relay = self.relay, None
        if relay is not None:
            relay.close()
