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
        #: each secret's HMAC with its key already absorbed: a cookie is a copy fed the rest
        self._keyed = tuple(_keyed(s) for s in (self.secret,) + self.previous)

    def _make(self, bucket: int, source: Address, room_id: bytes) -> bytes:
        return self._digest(self._keyed[0], bucket, _bound(source, room_id))

    @staticmethod
    def _digest(keyed, bucket: int, bound: bytes) -> bytes:
        """HMAC-SHA256(secret, bucket | bound), truncated; ``keyed`` is
        the secret's :func:`_keyed` HMAC."""
        mac = keyed.copy()
        mac.update(_BUCKET.pack(bucket) + bound)
        return mac.digest()[:COOKIE_SIZE]

    def issue(self, source: Address, room_id: bytes, now: float) -> bytes:
        return self._make(int(now // self.lifetime), source, room_id)

    def check(self, cookie: Optional[bytes], source: Address, room_id: bytes, now: float) -> bool:
        if not cookie or len(cookie) != COOKIE_SIZE:
            return False
        bucket = int(now // self.lifetime)
        bound = _bound(source, room_id)
        for keyed in self._keyed:
            for b in (bucket, bucket - 1):
                if hmac.compare_digest(cookie, self._digest(keyed, b, bound)):
                    return True
        return False


try:  # CPython with OpenSSL: the C HMAC object, copied in C
    from _hashlib import hmac_new as _openssl_hmac
except ImportError:  # pragma: no cover (PyPy)
    _openssl_hmac = None


def _keyed(secret: bytes):
    """An HMAC-SHA256 object keyed with ``secret``, nothing fed yet (to copy)."""
    if _openssl_hmac is not None:
        return _openssl_hmac(secret, digestmod="sha256")
    return hmac.new(secret, digestmod=hashlib.sha256)


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
