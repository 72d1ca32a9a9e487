"""Where the shared secret comes from: ``--secret``, else ``--secret-file``
(trailing newline dropped), else ``$NATSALON_SECRET``."""

from __future__ import annotations

import os
from typing import Optional

ENV_SECRET = "NATSALON_SECRET"


class SecretError(ValueError):
    pass


def load_secret(secret: Optional[str], secret_file: Optional[str], environ=os.environ) -> bytes:
    """--secret, else --secret-file (trailing newline dropped), else $NATSALON_SECRET."""
    if secret:
        return secret.encode("utf-8")
    if secret_file:
        with open(secret_file, "rb") as f:
            value = f.read().rstrip(b"\r\n")
        if not value:
            raise SecretError("secret file %s is empty" % secret_file)
        return value
    value = environ.get(ENV_SECRET, "")
    if value:
        return value.encode("utf-8")
    raise SecretError("no secret: give --secret-file, --secret or $%s" % ENV_SECRET)
