from twisted.application.service import ServiceMaker

natsalon = ServiceMaker(
    "natsalon",
    "natsalon.server.tap",
    "A STUN (RFC 8489/5780) reflector and introducer for NAT traversal",
    "natsalon",
)

natclient = ServiceMaker(
    "natclient",
    "natsalon.client.tap",
    "A natsalon endpoint: probe the NAT, meet a peer in a room, punch and forward UDP",
    "natclient",
)
