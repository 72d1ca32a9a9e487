"""The way to the salon when UDP does not get there: TCP, or TLS.

A network that blocks UDP (or a salon whose UDP port does not answer)
leaves a client no join and no relay.  :class:`SalonLink` is what the
:class:`~natsalon.client.join.Joiner`, the
:class:`~natsalon.client.relay.Relay` (its TURN client) and the LEAVE talk
to instead of the client's UDP socket: the same surface (``stun.request``,
``write``, ``relays``, ``on_salon``, ``on_frame``, ``on_punch``), over UDP
at first, over a stream to the salon once UDP is found not to reach it:

- a request to the salon unanswered over UDP for ``switch_after`` seconds
  (the JOIN's fifth send), or the salon check
  (:func:`natsalon.client.salonprobe.check_salon`, given to
  :meth:`SalonLink.checked`) hearing nothing at all, or an ICMP port
  unreachable, opens the stream; once it is up, the pending requests move
  to it (sent again there, the same transaction) and everything to the
  salon goes that way from then on (``streamed``);
- if the stream cannot be opened, the UDP requests run on as before (their
  own timeout says "no answer from the salon"); an ICMP port unreachable is
  reported with the stream's reason added.

The stream (:class:`StreamProtocol`) carries STUN messages and TURN
ChannelData as RFC 8656 section 12.5 frames them (ChannelData padded to 4
bytes).  Requests on it are sent once, not retransmitted (RFC 8489 section
6.2.2), and time out when their UDP schedule would have.  TLS (``turns:``)
is Twisted's, certificate verified through ``service_identity`` against
the salon's name or IP address, trusting the system's roots or ``--salon-ca``.
The peer still reaches our relayed address over UDP: only our leg to the
salon is a stream.
"""

from __future__ import annotations

import struct
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

from twisted.internet import defer
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from natsalon.client.demux import JOIN_POLICY
from natsalon.client.errors import SalonUnreachable
from natsalon.client.stunsocket import Transactions
from natsalon.stun import Class, Method, StunDecodeError, decode
from natsalon.stun.client import RetransmitPolicy, StunTimeout
from natsalon.stun.constants import MAX_MESSAGE_SIZE

_HH = struct.Struct("!HH")
#: seconds without an answer over UDP before the stream is tried: the JOIN's fifth send
SWITCH_AFTER = 3.75
#: seconds a stream may take to connect (and to finish its TLS handshake)
CONNECT_TIMEOUT = 10.0


class FrameError(ValueError):
    """The stream holds something that is neither STUN nor ChannelData."""


def split_frames(buf: bytes) -> Tuple[List[bytes], bytes]:
    """``buf`` -> (the whole frames it starts with, the rest).  A STUN
    message is 20 bytes plus its length; ChannelData (first byte 0x40 to
    0x7F) is 4 plus its length, padded to 4.  Raises :class:`FrameError`."""
    frames, pos, n = [], 0, len(buf)
    while n - pos >= 4:
        first = buf[pos]
        length = _HH.unpack_from(buf, pos)[1]
        if 0x40 <= first <= 0x7F:
            end = pos + 4 + length
            step = end + (-length & 3)
        elif first & 0xC0:
            raise FrameError("neither STUN nor ChannelData")
        else:
            end = step = pos + 20 + length
            if 20 + length > MAX_MESSAGE_SIZE:
                raise FrameError("a STUN message of %d bytes" % (20 + length))
        if step > n:
            break
        frames.append(buf[pos:end])
        pos = step
    return frames, buf[pos:]


def pad(data: bytes) -> bytes:
    """``data`` padded with zeros to a multiple of 4 bytes (ChannelData on a stream)."""
    extra = -len(data) & 3
    return data + b"\x00" * extra if extra else data


def stream_policy(policy: RetransmitPolicy) -> RetransmitPolicy:
    """One send, and the whole of ``policy``'s timeout to wait for the answer."""
    total = policy.schedule()[1]
    return RetransmitPolicy(rto=total, sends=1, last_wait=1.0, max_rto=total)


class StreamTarget(NamedTuple):
    """Where the stream goes: ``kind`` ``"tcp"`` or ``"tls"``, the address,
    and for TLS the name the certificate must carry (a DNS name or the IP
    address) and a CA file to trust instead of the system's (None: the system's)."""

    kind: str
    host: str
    port: int
    name: str = ""
    ca: Optional[str] = None


def stream_endpoint(reactor, target: StreamTarget, interface: str = ""):
    """The Twisted client endpoint for ``target`` (TLS through
    ``optionsForClientTLS``: service_identity checks the name)."""
    from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS

    bind = (interface, 0) if interface else None
    tcp = TCP4ClientEndpoint(reactor, target.host, target.port, timeout=CONNECT_TIMEOUT, bindAddress=bind)
    if target.kind != "tls":
        return tcp
    from twisted.internet import ssl

    root = ssl.platformTrust()
    if target.ca:
        with open(target.ca, "rb") as f:
            root = ssl.Certificate.loadPEM(f.read())
    return wrapClientTLS(ssl.optionsForClientTLS(target.name or target.host, trustRoot=root), tcp)


@implementer(IHandshakeListener)
class StreamProtocol(Protocol):
    """One stream to the salon: frames in to ``on_frame(data)``, frames out
    padded.  ``ready`` fires once it can carry data (connected; for TLS,
    the handshake done and the certificate verified), or fails with the
    reason it closed before; ``on_lost(reason)`` is called when it closes
    after that."""

    log = Logger()

    def __init__(self, tls: bool, on_frame: Callable[[bytes], None], on_lost: Callable[[str], None]) -> None:
        self.tls = tls
        self.on_frame = on_frame
        self.on_lost = on_lost
        self.ready: defer.Deferred = defer.Deferred(lambda _: self.close())
        self.open = False
        self._buf = b""

    def connectionMade(self) -> None:
        if not self.tls:
            self._ready()

    def handshakeCompleted(self) -> None:
        self._ready()

    def _ready(self) -> None:
        self.open = True
        if not self.ready.called:
            self.ready.callback(self)

    def write(self, data: bytes) -> None:
        if not self.open:
            raise OSError("the stream to the salon is closed")
        self.transport.write(pad(data))

    def dataReceived(self, data: bytes) -> None:
        try:
            frames, self._buf = split_frames(self._buf + data)
        except FrameError as e:
            self.log.warn("closing the stream to the salon: {reason}", reason=e)
            self._buf = b""
            self.transport.loseConnection()
            return
        for frame in frames:
            try:
                self.on_frame(frame)
            except Exception:
                self.log.failure("error handling a frame from the salon")

    def connectionLost(self, reason=None) -> None:
        was_open, self.open = self.open, False
        why = reason.getErrorMessage() if reason is not None else "closed"
        if not self.ready.called:
            self.ready.errback(reason if reason is not None else Failure(ConnectionError(why)))
        elif was_open:
            self.on_lost(why)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.loseConnection()


class _Moving:
    """A request to the salon over UDP that may move to the stream."""

    __slots__ = ("outer", "msg", "policy", "kw", "inner", "timer")

    def __init__(self, outer, msg, policy, kw) -> None:
        self.outer, self.msg, self.policy, self.kw = outer, msg, policy, kw
        self.inner = self.timer = None


class SalonLink:
    """The client's way to the salon ``server``: the UDP socket ``udp`` (a
    :class:`~natsalon.client.demux.ClientSocket`) until UDP is found not to
    reach it, then a stream opened by ``connect(link)`` (a Deferred firing
    with a :class:`StreamProtocol` that is ready); ``kind`` (``"tcp"`` or
    ``"tls"``) says which.  ``connect`` None: UDP only.  See the module
    docstring."""

    log = Logger()

    def __init__(self, clock, udp, server: Tuple[str, int], connect: Optional[Callable] = None,
                 kind: str = "tcp", switch_after: float = SWITCH_AFTER) -> None:
        self.clock = clock
        self.udp = udp
        self.server = (server[0], server[1])
        self.connect = connect
        self.kind = kind
        self.switch_after = switch_after
        self.stun = self  #: requests: ``stun.request(msg, addr, **kw)`` as on the client socket
        self.relays = udp.relays  #: shared: a relay hears the salon on either way
        self.streamed = False  #: the salon is reached over the stream from now on
        self.stream: Optional[StreamProtocol] = None
        self.answered = False  #: the salon has answered over UDP
        #: why the stream could not be opened, last time it was tried
        self.refused: Optional[str] = None
        #: what the salon check heard over UDP (an ICMP port unreachable), if anything
        self.udp_refusal: Optional[str] = None
        self.transactions = Transactions(clock, self._stream_send, JOIN_POLICY)
        self._moving: Dict[bytes, _Moving] = {}
        self._opening: Optional[defer.Deferred] = None
        self._waiters: List[defer.Deferred] = []
        self._on_salon = udp.on_salon

    # -- what the joiner, the relay and the LEAVE see ---------------------------
    @property
    def transport(self) -> str:
        """How the salon is reached now: ``"udp"``, ``"tcp"`` or ``"tls"``."""
        return self.kind if self.streamed else "udp"

    @property
    def on_salon(self):
        return self._on_salon

    @on_salon.setter
    def on_salon(self, handler) -> None:
        self._on_salon = self.udp.on_salon = handler

    @property
    def on_frame(self):
        return self.udp.on_frame

    @property
    def on_punch(self):
        return self.udp.on_punch

    def write(self, data: bytes, addr) -> None:
        """To the salon over the stream once streamed, anything else over UDP."""
        if self.streamed and (addr[0], addr[1]) == self.server:
            if self.stream is None:
                self._open().addErrback(lambda f: None)  # reopened for what follows; this one is lost
                raise OSError("the stream to the salon is closed")
            self.stream.write(data)
        else:
            self.udp.write(data, addr)

    def request(self, msg, addr, policy: RetransmitPolicy = JOIN_POLICY, **kw) -> defer.Deferred:
        """A STUN transaction with ``addr``, as ``ClientSocket.stun.request``."""
        if (addr[0], addr[1]) != self.server:
            return self.udp.stun.request(msg, tuple(addr), policy=policy, **kw)
        if self.streamed:
            return self._on_stream(msg, policy, kw)
        return self._on_udp(msg, policy, kw)

    def checked(self, check: defer.Deferred) -> defer.Deferred:
        """Watch the salon check's result (True: answered; False: nothing
        came back; SalonUnreachable: ICMP port unreachable): silence or a
        refusal over UDP opens the stream.  Fires None, or fails with
        SalonUnreachable when the stream cannot be opened either after a refusal."""
        def answered(ok):
            if ok is False and not self.answered:
                self.switch("no answer to a Binding request over UDP").addErrback(lambda f: None)

        def refused(f: Failure):
            f.trap(SalonUnreachable)
            self.udp_refusal = f.getErrorMessage()
            if self.connect is None:
                return f
            d = self.switch(f.getErrorMessage())
            d.addCallback(lambda _: None)
            d.addErrback(lambda g: Failure(SalonUnreachable("%s; over %s: %s" % (
                f.getErrorMessage(), self.kind.upper(), g.getErrorMessage()))))
            return d

        return check.addCallbacks(answered, refused)

    # -- over UDP, until moved ----------------------------------------------------
    def _on_udp(self, msg, policy, kw) -> defer.Deferred:
        txid = msg.transaction_id
        moving = _Moving(None, msg, policy, kw)

        def cancel(_) -> None:
            self._forget(txid)
            if not moving.inner.called:
                moving.inner.cancel()  # moved to the stream

        moving.outer = defer.Deferred(cancel)
        moving.inner = self.udp.stun.request(msg, self.server, policy=policy, **kw)
        moving.inner.addCallbacks(self._udp_answer, self._udp_failed, callbackArgs=(txid,), errbackArgs=(txid,))
        if self.connect is not None:
            moving.timer = self.clock.callLater(self.switch_after, self._silent)
        self._moving[txid] = moving
        return moving.outer

    def _forget(self, txid: bytes) -> Optional[_Moving]:
        moving = self._moving.pop(txid, None)
        if moving is not None:
            if moving.timer is not None and moving.timer.active():
                moving.timer.cancel()
            if not moving.inner.called:
                moving.inner.cancel()
        return moving

    def _udp_answer(self, response, txid: bytes) -> None:
        self.answered = True
        moving = self._forget(txid)
        if moving is not None:
            moving.outer.callback(response)

    def _udp_failed(self, f: Failure, txid: bytes) -> None:
        if f.check(defer.CancelledError):
            return None
        moving = self._forget(txid)
        if moving is not None and f.check(StunTimeout) and self.refused is not None:
            # said in full: the reason the stream failed is what the user can act on
            udp = self.udp_refusal or "no answer from the salon at %s:%d over UDP" % self.server
            f = Failure(SalonUnreachable("%s, nor over %s: %s" % (udp, self.kind.upper(), self.refused)))
        if moving is not None:
            moving.outer.errback(f)
        return None

    def _silent(self) -> None:
        if not self.answered:
            self.switch("no answer over UDP in %gs" % self.switch_after).addErrback(lambda f: None)

    # -- the stream -----------------------------------------------------------------
    def switch(self, reason: str) -> defer.Deferred:
        """Reach the salon over the stream from now on (``reason``: why);
        fires once it is open (the pending requests moved to it), fails if
        it cannot be opened (they stay on UDP)."""
        if self.connect is None:
            return defer.fail(SalonUnreachable("no stream to the salon is configured"))
        if self.streamed and self.stream is not None:
            return defer.succeed(self.stream)
        if self._opening is None:
            self.log.info("the salon does not answer over UDP ({reason}): trying {kind}", reason=reason,
                          kind=self.kind.upper())
        return self._open()

    def _open(self) -> defer.Deferred:
        """A Deferred for the stream: opened now unless it is being opened."""
        waiter: defer.Deferred = defer.Deferred()
        self._waiters.append(waiter)
        if self._opening is None and self.connect is not None:
            self._opening = self.connect(self)
            self._opening.addTimeout(CONNECT_TIMEOUT, self.clock)
            self._opening.addBoth(self._opened)
        elif self.connect is None:
            self._waiters.remove(waiter)
            waiter.errback(SalonUnreachable("the link to the salon is closed"))
        return waiter

    def _opened(self, result) -> None:
        self._opening = None
        waiters, self._waiters = self._waiters, []
        if not isinstance(result, StreamProtocol):
            reason = refusal(result) if isinstance(result, Failure) else str(result)
            self.refused = reason
            self.log.warn("the salon cannot be reached over {kind} either: {e}", kind=self.kind.upper(), e=reason)
            for waiter in waiters:
                waiter.errback(SalonUnreachable(reason))
            return None
        if not self.streamed:
            self.log.info("reaching the salon over {kind}", kind=self.kind.upper())
        self.stream, self.streamed, self.refused = result, True, None
        for txid in list(self._moving):
            moving = self._forget(txid)
            moving.inner = self._on_stream(moving.msg, moving.policy, moving.kw)
            moving.inner.addCallbacks(moving.outer.callback, _unless_cancelled(moving.outer.errback))
        for waiter in waiters:
            waiter.callback(result)
        return None

    def frame(self, data: bytes) -> None:
        """A frame from the stream: the relay's, an answer, or a pushed introduction."""
        addr = self.server
        relay = self.relays.get(addr)
        if relay is not None and relay(data, addr):
            return
        if self.transactions.datagram(data, addr) or len(data) < 20 or data[0] & 0xC0:
            return
        try:
            msg = decode(data)
        except StunDecodeError:
            return
        if msg.method == Method.JOIN and msg.cls == Class.INDICATION:
            self._on_salon(msg, addr)

    def lost(self, reason: str) -> None:
        """The stream closed: the next message to the salon opens another."""
        self.log.info("the stream to the salon closed: {reason}", reason=reason)
        self.stream = None

    def _stream_send(self, data: bytes, addr) -> None:
        if self.stream is None:
            raise OSError("the stream to the salon is closed")
        self.stream.write(data)

    def _on_stream(self, msg, policy, kw) -> defer.Deferred:
        if self.stream is None:
            d = self._open()
            return d.addCallback(lambda _: self._on_stream(msg, policy, kw))
        return self.transactions.request(msg, self.server, policy=stream_policy(policy), **kw)

    def close(self) -> None:
        """Close the stream, if open (the client is stopping)."""
        self.connect = None
        if self.stream is not None:
            self.stream.close()
            self.stream = None


def refusal(f: Failure) -> str:
    """One line for why a stream could not be opened (a refused
    certificate said as such)."""
    from OpenSSL.SSL import Error as TLSError
    from service_identity import VerificationError

    if f.check(TLSError):
        return "TLS handshake failed: the salon's certificate is not trusted (%s)" % (f.getErrorMessage(),)
    if f.check(VerificationError):
        return "TLS handshake failed: the salon's certificate does not name it (%s)" % (f.getErrorMessage(),)
    if f.check(defer.TimeoutError, defer.CancelledError):
        return "no connection within %gs" % CONNECT_TIMEOUT
    return f.getErrorMessage()


def _unless_cancelled(errback: Callable) -> Callable:
    def call(f: Failure) -> None:
        if not f.check(defer.CancelledError):
            errback(f)
    return call


def stream_connector(reactor, target: StreamTarget, interface: str = "") -> Callable:
    """``connect(link)`` for a :class:`SalonLink`: opens ``target`` and
    fires with the ready :class:`StreamProtocol` (cancelling it closes
    the connection)."""
    def connect(link: SalonLink) -> defer.Deferred:
        proto = StreamProtocol(target.kind == "tls", link.frame, link.lost)
        factory = Factory()
        factory.noisy = False
        factory.protocol = lambda: proto
        d = stream_endpoint(reactor, target, interface).connect(factory)
        return d.addCallback(lambda _: proto.ready)

    return connect
