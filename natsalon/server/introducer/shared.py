"""Rooms shared by several salons through Redis: the registry, its
connection and the notices between salons, as one service.

:class:`SharedRooms` holds no logic: it builds a :class:`.redislink.RedisLink`
(the registry's connection), the :class:`.redisrooms.RedisRooms` registry
on it, and a :class:`.notify.Notifier` with a subscriber link of its own,
and starts and stops them with the salon.
"""

from __future__ import annotations

from typing import Callable, Optional

from twisted.application import service

from natsalon.ops.stats import Stats
from natsalon.server.binding import Reply
from natsalon.server.introducer.notify import Notifier
from natsalon.server.introducer.redislink import RedisAddress, RedisLink
from natsalon.server.introducer.redisrooms import RedisRooms


class SharedRooms(service.MultiService):
    """``rooms`` is the registry for the introducer; :meth:`send` routes a
    push to a member held by another salon; ``deliver`` sends the pushes
    other salons route here."""

    def __init__(self, reactor, address: RedisAddress, instance: str, deliver: Callable[[Reply], None], *,
                 password: Optional[bytes] = None, stats: Optional[Stats] = None, prefix: str = "natsalon:",
                 **registry) -> None:
        super().__init__()
        common = dict(name=str(address), password=password, db=address.db, master_only=bool(address.sentinels))
        self.link = RedisLink(reactor, address.endpoint(reactor), **common)
        self.link.setServiceParent(self)
        self.rooms = RedisRooms(self.link, instance, prefix=prefix, **registry)
        subscriber = Notifier.subscriber_link(reactor, address.endpoint(reactor), **common)
        self.notifier = Notifier(self.link, subscriber, instance, deliver, prefix=prefix, stats=stats)
        self.notifier.setServiceParent(self)
        self.address = address
        self.instance = instance

    def send(self, reply: Reply) -> None:
        self.notifier.send(reply)
