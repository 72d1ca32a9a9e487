"""The salon server (``twistd -n natsalon``): the STUN reflector and its
RFC 5780 grid of sockets, the fast read loop, the rate limiter, and the
introducer (:mod:`natsalon.server.introducer`); :mod:`natsalon.server.tap`
builds it from the command line."""
