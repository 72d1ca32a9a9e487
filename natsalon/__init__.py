"""natsalon: get two hosts behind NATs talking to each other over UDP.

The server half (``twistd -n natsalon``, :mod:`natsalon.server`) is a STUN
reflector with RFC 5780 alternate responders and an introducer; the client
half (:mod:`natsalon.client`, ``natsalon probe|connect``, ``twistd
natclient``) probes NATs, punches holes and carries traffic.  Shared
sans-IO pieces: :mod:`natsalon.stun`, :mod:`natsalon.wire`,
:mod:`natsalon.crypto`, :mod:`natsalon.net`.  See README.md for the public
API.

``import natsalon`` stays cheap: :func:`connect` (the public client API,
:func:`natsalon.client.api.connect`) is loaded on first use.
"""

__version__ = "0.1.0"

__all__ = ["connect", "__version__"]


def __getattr__(name):
    if name == "connect":
        from natsalon.client.api import connect

        return connect
    raise AttributeError("module 'natsalon' has no attribute %r" % name)
