"""TURN long-term credentials (RFC 8489 section 9.2): coturn's shared-secret
scheme and stateless nonces.  Sans-IO: ``now`` is always passed in.

Shared secret (coturn's ``use-auth-secret``, the "TURN REST API"): the
username is ``"<expiry-unix-time>:<user>"`` (coturn also accepts
``"<user>:<expiry>"`` and a bare expiry), the password is
``base64(HMAC-SHA1(secret, username))``.  Several secrets may be configured
for rotation; a username is refused once its expiry time has passed.

Room credentials (what the salon hands the members of a room with their
introduction, :func:`room_credentials`) use the same scheme with an
internal secret the operator never sees: :func:`room_secret` derives it
from the salon's cookie secret (HKDF-SHA256), so the salons sharing a
``--cookie-secret-file`` agree on it.  :class:`RoomAuth` accepts it for
``room-<hex>`` users only.

Nonces carry their own expiry and a MAC over it and the client's IP, so the
server keeps no nonce state: ``"<expiry hex>-<mac>"``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from typing import List, Optional, Sequence, Tuple, Union

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from natsalon.stun import long_term_key

Secret = Union[str, bytes]


def _b(secret: Secret) -> bytes:
    return secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)


def rest_password(secret: Secret, username: str) -> str:
    """coturn's REST API password for ``username``."""
    mac = hmac.digest(_b(secret), username.encode("utf-8"), "sha1")
    return base64.b64encode(mac).decode("ascii")


def mint(secret: Secret, user: str, expiry: int) -> Tuple[str, str]:
    """A ``(username, password)`` pair valid until the unix time ``expiry``
    (what a WebRTC back end hands its clients)."""
    username = "%d:%s" % (expiry, user)
    return username, rest_password(secret, username)


#: room credentials last until the end of the hour after the current one
#: (so between one and two hours): every introduction within one hour hands
#: out the same pair, and a session may last an hour after the last one
ROOM_CREDENTIAL_HOUR = 3600


def room_credentials(secret: Secret, room_id: bytes, now: float) -> Tuple[str, str]:
    """The ``(username, password)`` the salon hands the members of
    ``room_id`` with their introduction: ``"<expiry>:room-<first 8 bytes
    of the room id, hex>"`` signed with ``secret`` (:func:`mint`), valid
    until the end of the next hour.  Scoped to the room and the hour: the
    user is what the per-user quota counts (one room's allocations), and it
    is useless after that hour."""
    expiry = (int(now) // ROOM_CREDENTIAL_HOUR + 2) * ROOM_CREDENTIAL_HOUR
    return mint(secret, "room-" + room_id[:8].hex(), expiry)


#: the user of a room credential: "room-" and 8 bytes of the room id, hex
ROOM_USER = re.compile(r"room-[0-9a-f]{16}\Z")


def room_secret(cookie_secret: bytes) -> bytes:
    """The internal secret room credentials are signed with, derived from
    a cookie secret (HKDF-SHA256): the same on every salon given the same
    ``--cookie-secret-file``, and never equal to the cookie secret itself."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"natsalon turn room credentials",
                info=b"room-credential-secret").derive(cookie_secret)


def split_username(username: str, separator: str = ":") -> Tuple[Optional[int], str]:
    """``(expiry, user)`` of a REST API username, as coturn reads it: the
    numeric part is the expiry, the other part the user; expiry is None
    when there is no numeric part."""
    head, sep, tail = username.partition(separator)
    if not sep:
        return (int(head), "") if head.isdigit() else (None, username)
    if head.isdigit():
        return int(head), tail
    last_head, _, last = username.rpartition(separator)
    if last.isdigit():
        return int(last), last_head
    return None, username


class SharedSecretAuth:
    """Long-term keys for coturn-style shared-secret usernames."""

    def __init__(self, secrets: Sequence[Secret], realm: str, separator: str = ":") -> None:
        self.secrets = [_b(s) for s in secrets]
        self.realm = realm
        self.separator = separator

    def keys(self, username: str, now: float) -> List[bytes]:
        """The candidate long-term keys for ``username`` (one per secret);
        empty when the username is malformed or expired."""
        expiry, _ = split_username(username, self.separator)
        if expiry is None or expiry < now:
            return []
        return [long_term_key(username, self.realm, rest_password(s, username)) for s in self.secrets]

    def user(self, username: str) -> str:
        """The user a username belongs to (what quotas count)."""
        return split_username(username, self.separator)[1]


class RoomAuth(SharedSecretAuth):
    """Long-term keys for room credentials only: the internal secrets
    (:func:`room_secret`; the first mints, all verify) sign nothing but
    ``"<expiry>:room-<hex>"`` usernames, so they grant no other user."""

    def keys(self, username: str, now: float) -> List[bytes]:
        if not ROOM_USER.match(self.user(username)):
            return []
        return super().keys(username, now)


class NonceJar:
    """Stateless nonces bound to the client's IP, valid for ``lifetime`` s."""

    def __init__(self, lifetime: float = 600.0, key: Optional[bytes] = None) -> None:
        self.lifetime = lifetime
        self.key = key if key is not None else os.urandom(16)

    def _mac(self, expiry: int, host: str) -> str:
        mac = hmac.new(self.key, b"%x|%s" % (expiry, host.encode("ascii", "replace")), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac[:12]).decode("ascii")

    def issue(self, host: str, now: float) -> str:
        expiry = int(now + self.lifetime)
        return "%x-%s" % (expiry, self._mac(expiry, host))

    def check(self, nonce: str, host: str, now: float) -> bool:
        head, sep, mac = nonce.partition("-")
        if not sep or not 0 < len(head) <= 12:
            return False
        try:
            expiry = int(head, 16)
        except ValueError:
            return False
        if expiry < now:
            return False
        return hmac.compare_digest(mac, self._mac(expiry, host))
