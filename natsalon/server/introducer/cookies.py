"""Return-routability cookies: stateless, bound to the source address, the
room and a time bucket, so a JOIN from a spoofed source never registers."""

from __future__ import annotations

import hashlib
import hmac
import os
import socket
import struct
from typing import Optional, Sequence

from natsalon.stun import Address

COOKIE_SIZE = 16


class CookieJar:
    """Stateless cookies bound to source address, room and time bucket; a
    cookie is valid in its bucket and the next one (``lifetime`` to
    ``2 * lifetime`` seconds).

    Salons sharing rooms share ``secret`` (``--cookie-secret-file``), so a
    cookie from one verifies on all.  Cookies are issued with ``secret``;
    the ``previous`` secrets are still accepted, so a secret is rotated
    without refusing the cookies already out."""

    def __init__(self, secret: Optional[bytes] = None, lifetime: float = 30.0,
                 previous: Sequence[bytes] = ()) -> None:
        self.secret = secret or os.urandom(32)
        self.lifetime = lifetime
        self.previous = tuple(previous)

    def _make(self, bucket: int, source: Address, room_id: bytes, secret: Optional[bytes] = None) -> bytes:
        return self._digest(secret or self.secret, bucket, _bound(source, room_id))

    @staticmethod
    def _digest(secret: bytes, bucket: int, bound: bytes) -> bytes:
        return hmac.digest(secret, _BUCKET.pack(bucket) + bound, "sha256")[:COOKIE_SIZE]

    def issue(self, source: Address, room_id: bytes, now: float) -> bytes:
        return self._make(int(now // self.lifetime), source, room_id)

    def check(self, cookie: Optional[bytes], source: Address, room_id: bytes, now: float) -> bool:
        if not cookie or len(cookie) != COOKIE_SIZE:
            return False
        bucket = int(now // self.lifetime)
        bound = _bound(source, room_id)
        for secret in (self.secret,) + self.previous:
            for b in (bucket, bucket - 1):
                if hmac.compare_digest(cookie, self._digest(secret, b, bound)):
                    return True
        return False


_BUCKET = struct.Struct("!Q")
_PORT = struct.Struct("!H")


def _bound(source: Address, room_id: bytes) -> bytes:
    """What a cookie binds besides its time bucket: the source port and IP, the room."""
    host = source.host
    if ":" in host:
        packed = socket.inet_pton(socket.AF_INET6, host.split("%", 1)[0])  # a scoped one: fe80::1%eth0
    else:
        packed = socket.inet_aton(host)
    return _PORT.pack(source.port) + packed + room_id
