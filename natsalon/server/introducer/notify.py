"""Introductions for members waiting on another salon, over Redis pub/sub.

Several salons share one Redis registry (:mod:`.redisrooms`); a member
waits on the salon it joined through, and only that salon's socket can
reach it through its NAT.  When a newcomer arrives at salon X, the
introducer pushes each waiting member an indication; a member held by
salon Y has ``via`` a :class:`~.redisrooms.RemoteVia`, and
:meth:`Notifier.send` publishes the indication on Y's channel
(``<prefix>notify:<instance id>``).  Y's :class:`Notifier` receives it on
its subscription and hands it to ``deliver``, which sends it from Y's own
socket.

Pub/sub delivers at most once: a notice lost (Y restarting, Redis down)
costs the member one poll interval, since its next poll is answered with
the introduction anyway.
"""

from __future__ import annotations

import json
from typing import Callable, Optional

from twisted.application import service
from twisted.logger import Logger

from natsalon.ops.stats import Stats
from natsalon.server.binding import Reply
from natsalon.server.introducer.redislink import RedisLink, SubscriberProtocol
from natsalon.server.introducer.redisrooms import RemoteVia

#: the largest notice accepted: an introduction and its routing
MAX_NOTICE = 2048


def pack_notice(via, to, data: bytes) -> bytes:
    head = json.dumps([list(via) if isinstance(via, tuple) else via, [to[0], to[1]]], separators=(",", ":"))
    return head.encode() + b"\n" + data


def unpack_notice(raw: bytes) -> Reply:
    """The reply a notice carries; ValueError if it is not one."""
    if len(raw) > MAX_NOTICE:
        raise ValueError("notice of %d bytes" % len(raw))
    head, sep, data = raw.partition(b"\n")
    if not sep or not data:
        raise ValueError("no reply in the notice")
    via, to = json.loads(head)
    host, port = to
    if not isinstance(host, str) or not isinstance(port, int) or not isinstance(via, list):
        raise ValueError("bad notice head")
    return Reply(tuple(via), (host, port), data)


class _Subscriber(SubscriberProtocol):
    """txredisapi's pub/sub protocol, handing each message to a callable."""

    def __init__(self, on_message: Callable[[object, bytes, bytes], None], **kwargs) -> None:
        super().__init__(**kwargs)
        self.on_message = on_message

    def messageReceived(self, pattern, channel, message) -> None:
        self.on_message(pattern, channel, message)


class Notifier(service.Service):
    """Publishes introductions for other salons' members (:meth:`send`)
    and delivers the ones published for this salon (``deliver(reply)``).

    ``link`` is the registry's :class:`RedisLink` (publishing);
    ``subscriber`` a link of its own, made by :meth:`subscriber_link`,
    that this service starts and stops (a connection in pub/sub mode
    takes no other command)."""

    log = Logger()

    def __init__(self, link: RedisLink, subscriber: RedisLink, instance: str, deliver: Callable[[Reply], None],
                 prefix: str = "natsalon:", stats: Optional[Stats] = None) -> None:
        self.link = link
        self.subscriber = subscriber
        self.instance = instance
        self.deliver = deliver
        self.prefix = prefix.encode()
        self.stats = stats if stats is not None else Stats()
        subscriber.on_ready = self._subscribe
        subscriber.protocol_class = lambda **kw: _Subscriber(self._message, **kw)

    def channel(self, instance: str) -> bytes:
        return self.prefix + b"notify:" + instance.encode()

    def startService(self) -> None:
        service.Service.startService(self)
        self.subscriber.startService()

    def stopService(self):
        service.Service.stopService(self)
        return self.subscriber.stopService()

    # -- sending ---------------------------------------------------------

    def send(self, reply: Reply) -> None:
        """Publish ``reply`` (whose ``via`` is a RemoteVia) to the salon
        holding its member; a failure is counted, never raised (the
        member's next poll gets the introduction)."""
        via: RemoteVia = reply.via
        self.stats["notices_sent"] += 1
        d = self.link.call(b"PUBLISH", self.channel(via.instance), pack_notice(via.via, reply.to, reply.data))
        d.addCallbacks(self._published, self._failed)

    def _published(self, receivers) -> None:
        if not int(receivers):
            self.stats["notices_unheard"] += 1  # that salon is gone: its member re-joins elsewhere

    def _failed(self, failure) -> None:
        self.stats["notices_failed"] += 1
        self.log.debug("notice not published: {err}", err=failure.getErrorMessage())

    # -- receiving -------------------------------------------------------

    def _subscribe(self, proto):
        return proto.subscribe([self.channel(self.instance)])

    def _message(self, pattern, channel, message) -> None:
        try:
            reply = unpack_notice(message)
        except (ValueError, TypeError) as e:
            self.stats["notices_bad"] += 1
            self.log.debug("bad notice: {err}", err=e)
            return
        self.stats["notices_received"] += 1
        self.deliver(reply)

    @staticmethod
    def subscriber_link(clock, endpoint, **kwargs) -> RedisLink:
        """A :class:`RedisLink` for :class:`Notifier`'s subscription (the
        notifier sets its protocol)."""
        kwargs.setdefault("down_effect", "introductions from other salons wait for their members' next poll")
        return RedisLink(clock, endpoint, **kwargs)
