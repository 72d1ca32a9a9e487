"""A TURN client (RFC 8656) for one allocation on one server, over UDP.

:class:`TurnClient` holds no socket: it is given ``send(data, addr)`` and a
clock, and is fed every datagram from the TURN server through
:meth:`TurnClient.datagram`, which returns ``(payload, peer)`` for relayed
data and None for everything else.  The server's answers are matched by
:class:`natsalon.client.stunsocket.Transactions` (RFC 8489
retransmissions); the calls return Deferreds:

- :meth:`allocate` (long-term credentials: the first request draws the
  401 with REALM and NONCE; a 438 Stale Nonce is retried with the new one)
  fires with an :class:`Allocation` (relayed and mapped addresses,
  lifetime) and keeps it refreshed at half its lifetime;
- :meth:`permit` installs a permission for a peer's IP, refreshed every
  4 minutes (permissions last 5);
- :meth:`bind` binds a channel to a peer (which also permits it),
  refreshed every 8 minutes (channels last 10); once bound, data goes as
  ChannelData (4 bytes of overhead) instead of Send indications (36);
- :meth:`send` relays one datagram to a peer; :meth:`close` releases the
  allocation (Refresh with LIFETIME 0) and cancels every timer.

Failures are :class:`TurnError` with the server's code (401 wrong
credentials, 437, 441, 486 quota, 508 capacity, ...).  A refresh that
fails is logged and ends the allocation: ``on_lost(reason)`` is called.
"""

from __future__ import annotations

import struct
from typing import Callable, Dict, NamedTuple, Optional, Tuple

from twisted.internet import defer, task
from twisted.logger import Logger

from natsalon.client.stunsocket import Transactions
from natsalon.stun import Address, Attr, Class, Message, Method, StunDecodeError, decode, encode, long_term_key
from natsalon.stun.client import RetransmitPolicy, new_transaction_id
from natsalon.stun.constants import CHANNEL_MIN, FAMILY_IPV4, FAMILY_IPV6, TRANSPORT_UDP

#: Allocate and friends: RFC 8489's 500 ms RTO, seven sends (about 39.5 s)
TURN_POLICY = RetransmitPolicy(rto=0.5, sends=7, last_wait=16, max_rto=8.0)
PERMISSION_REFRESH = 240.0
CHANNEL_REFRESH = 480.0


class TurnError(Exception):
    """The TURN server refused a request (``code``, ``reason``), or did not answer."""

    def __init__(self, code: int, reason: str, method: str = "") -> None:
        super().__init__("%s: %d %s" % (method or "TURN", code, reason))
        self.code = code
        self.reason = reason


class Allocation(NamedTuple):
    relayed: Address  #: where peers send to reach us
    mapped: Address  #: our public address as the TURN server saw it
    lifetime: int  #: seconds granted
    #: the IPv6 relayed address of a dual allocation (ADDITIONAL-ADDRESS-FAMILY)
    also: Optional[Address] = None


def channel_data(channel: int, payload: bytes) -> bytes:
    return struct.pack("!HH", channel, len(payload)) + payload


def is_channel_data(data: bytes) -> bool:
    return len(data) >= 4 and 0x40 <= data[0] <= 0x7F


class TurnClient:
    log = Logger()

    def __init__(self, clock, send: Callable[[bytes, tuple], None], server: Tuple[str, int], username: str,
                 password: str, lifetime: int = 600, policy: RetransmitPolicy = TURN_POLICY) -> None:
        self.clock = clock
        self.server = (server[0], server[1])
        self.username = username
        self.password = password
        self.lifetime = lifetime
        self.transactions = Transactions(clock, send, policy)
        self._send = send
        self.realm: Optional[str] = None
        self.nonce: Optional[str] = None
        self.key: Optional[bytes] = None
        self.allocation: Optional[Allocation] = None
        self.on_lost: Callable[[str], None] = lambda reason: None
        self.channels: Dict[Address, int] = {}
        self.peers_by_channel: Dict[int, Address] = {}
        self._timers: Dict[object, task.LoopingCall] = {}
        self._next_channel = CHANNEL_MIN

    # -- requests ------------------------------------------------------------
    @defer.inlineCallbacks
    def _request(self, method: int, attrs=(), name: str = "", eager: bool = False) -> defer.Deferred:
        """One authenticated request; follows 401 (first contact) and 438
        (stale nonce) once each.  Fires with the success Message.
        ``eager``: the first copy leaves before this returns (the
        transactions' first send is a ``callLater(0)``, too late when the
        socket closes right after, as at shutdown); the retransmissions
        carry the same transaction id."""
        for _ in range(3):
            msg = Message(method, Class.REQUEST, new_transaction_id(), tuple(attrs) + self._credentials())
            if eager:
                eager = False
                try:
                    self._send(encode(msg, integrity_key=self.key), self.server)
                except OSError:
                    pass
            response = yield self.transactions.request(msg, self.server, integrity_key=self.key)
            answer = response.message
            if answer.cls == Class.SUCCESS:
                return answer
            err = answer.get(Attr.ERROR_CODE)
            code = err.code if err is not None else 0
            if code in (401, 438) and answer.get(Attr.NONCE) and (code == 438 or self.key is None):
                self.realm = answer.get(Attr.REALM) or self.realm
                self.nonce = answer.get(Attr.NONCE)
                self.key = long_term_key(self.username, self.realm or "", self.password)
                continue
            raise TurnError(code, err.reason if err is not None else "no ERROR-CODE", name)
        raise TurnError(401, "credentials refused", name)

    def _credentials(self) -> tuple:
        if self.key is None:
            return ()
        return ((Attr.USERNAME, self.username), (Attr.REALM, self.realm or ""), (Attr.NONCE, self.nonce))

    # -- the allocation ------------------------------------------------------
    @defer.inlineCallbacks
    def allocate(self, version: int = 0, both: bool = False):
        """Allocate a relayed address; ``version`` 4 or 6 asks for that IP
        family (REQUESTED-ADDRESS-FAMILY, RFC 8656), 0 leaves it to the
        server (IPv4, as RFC 5766 servers know only); ``both``: an IPv4
        and an IPv6 one (ADDITIONAL-ADDRESS-FAMILY; the IPv6 one in
        ``Allocation.also`` if the server gave it)."""
        attrs = ((Attr.REQUESTED_TRANSPORT, TRANSPORT_UDP), (Attr.LIFETIME, self.lifetime))
        if both:
            attrs += ((Attr.ADDITIONAL_ADDRESS_FAMILY, FAMILY_IPV6),)
        elif version:
            attrs += ((Attr.REQUESTED_ADDRESS_FAMILY, FAMILY_IPV6 if version == 6 else FAMILY_IPV4),)
        answer = yield self._request(Method.ALLOCATE, attrs, "Allocate")
        relayed = [v for t, v in answer.attributes if t == Attr.XOR_RELAYED_ADDRESS]
        if not relayed:
            raise TurnError(0, "Allocate success without XOR-RELAYED-ADDRESS", "Allocate")
        granted = answer.get(Attr.LIFETIME, self.lifetime)
        self.allocation = Allocation(relayed[0], answer.get(Attr.XOR_MAPPED_ADDRESS), granted,
                                     relayed[1] if len(relayed) > 1 else None)
        self._every("allocation", max(1.0, granted / 2.0), self._refresh)
        return self.allocation

    def refresh(self) -> defer.Deferred:
        """Refresh the allocation now; a failure ends it (``on_lost``)."""
        return self._refresh()

    def _refresh(self) -> defer.Deferred:
        d = self._request(Method.REFRESH, ((Attr.LIFETIME, self.lifetime),), "Refresh")
        d.addErrback(self._lost, "the allocation could not be refreshed")
        return d

    def _lost(self, f, what: str) -> None:
        if f.check(defer.CancelledError):
            return
        reason = "%s: %s" % (what, f.getErrorMessage())
        self.log.warn("TURN {reason}", reason=reason)
        self._stop_timers()
        self.allocation = None
        self.on_lost(reason)

    def permit(self, host: str) -> defer.Deferred:
        """A permission for ``host`` (any port), kept refreshed."""
        d = self._permit(host)
        d.addCallback(lambda _: self._every(("permission", host), PERMISSION_REFRESH, self._permit, host))
        return d

    def _permit(self, host: str) -> defer.Deferred:
        d = self._request(Method.CREATE_PERMISSION, ((Attr.XOR_PEER_ADDRESS, Address(host, 0)),),
                          "CreatePermission")
        return d

    def bind(self, peer: Address) -> defer.Deferred:
        """A channel to ``peer`` (and with it a permission); fires with its number."""
        peer = Address(*peer)
        channel = self.channels.get(peer)
        if channel is None:
            channel, self._next_channel = self._next_channel, self._next_channel + 1
        d = self._bind(peer, channel)

        def bound(_):
            self.channels[peer] = channel
            self.peers_by_channel[channel] = peer
            self._every(("channel", peer), CHANNEL_REFRESH, self._bind, peer, channel)
            return channel

        return d.addCallback(bound)

    def _bind(self, peer: Address, channel: int) -> defer.Deferred:
        return self._request(Method.CHANNEL_BIND, ((Attr.CHANNEL_NUMBER, channel), (Attr.XOR_PEER_ADDRESS, peer)),
                             "ChannelBind")

    def _every(self, key, interval: float, call, *args) -> None:
        old = self._timers.pop(key, None)
        if old is not None and old.running:
            old.stop()
        loop = self._timers[key] = task.LoopingCall(call, *args)
        loop.clock = self.clock
        loop.start(interval, now=False).addErrback(self._lost, "a refresh failed")

    def _stop_timers(self) -> None:
        for loop in self._timers.values():
            if loop.running:
                loop.stop()
        self._timers.clear()

    def close(self) -> defer.Deferred:
        """Release the allocation (Refresh with LIFETIME 0, its first copy
        sent before this returns); fires True once
        the server confirmed, False if it refused or did not answer (the
        allocation then expires on its own).  Relayed data is dropped from now on."""
        self._stop_timers()
        self.channels.clear()
        self.peers_by_channel.clear()
        if self.allocation is None:
            self.transactions.cancel_all()
            return defer.succeed(False)
        self.allocation = None
        d = self._request(Method.REFRESH, ((Attr.LIFETIME, 0),), "Refresh", eager=True)
        d.addCallbacks(lambda answer: answer.get(Attr.LIFETIME) == 0,
                       lambda f: self.log.debug("release: {e}", e=f.getErrorMessage()) or False)
        d.addBoth(lambda released: self.transactions.cancel_all() or released)
        return d

    # -- data ----------------------------------------------------------------
    def send(self, payload: bytes, peer) -> bool:
        """Relay ``payload`` to ``peer``: ChannelData once a channel is bound,
        else a Send indication (the peer needs a permission either way)."""
        if self.allocation is None:
            return False
        peer = Address(*peer)
        channel = self.channels.get(peer)
        if channel is not None:
            data = channel_data(channel, payload)
        else:
            data = encode(Message(Method.SEND, Class.INDICATION, new_transaction_id(),
                                  ((Attr.XOR_PEER_ADDRESS, peer), (Attr.DATA, payload))))
        try:
            self._send(data, self.server)
        except OSError:
            return False
        return True

    def datagram(self, data: bytes, addr) -> Optional[Tuple[bytes, Address]]:
        """Feed a datagram from the socket; ``(payload, peer)`` if it was relayed data."""
        if (addr[0], addr[1]) != self.server:
            return None
        if is_channel_data(data):
            channel, length = struct.unpack_from("!HH", data)
            peer = self.peers_by_channel.get(channel)
            if peer is None or length > len(data) - 4:
                return None
            return data[4:4 + length], peer
        if self.transactions.datagram(data, addr):
            return None
        try:
            msg = decode(data)
        except StunDecodeError:
            return None
        if msg.method == Method.DATA and msg.cls == Class.INDICATION and self.allocation is not None:
            peer, payload = msg.get(Attr.XOR_PEER_ADDRESS), msg.get(Attr.DATA)
            if peer is not None and payload is not None:
                return payload, peer
        return None
