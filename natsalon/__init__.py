"""natsalon: get two hosts behind NATs talking directly over UDP.

The server half (``twistd -n natsalon``) is a STUN reflector with RFC 5780
alternate responders and an introducer; the client half probes NATs and
punches holes.  See README.md for the public API.
"""

__version__ = "0.1.0"

# The public client API: ``natsalon.connect(reactor, server, room, secret)``
# (see docs/salon.md).  Imported eagerly so the name is the function, not the
# ``natsalon.connect`` submodule.
from .connect import connect  # noqa: E402

__all__ = ["connect", "__version__"]
