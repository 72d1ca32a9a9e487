"""Is anything listening at the salon's address?  The client's own socket
talks to the salon and to peers, so it cannot be connected, and an
unconnected UDP socket never hears ICMP errors.  :func:`check_salon` sends
one Binding request from a fresh *connected* socket: an ICMP port
unreachable ends it with :class:`~natsalon.client.errors.SalonUnreachable`
at once, instead of after the JOIN's whole retransmission schedule."""

from __future__ import annotations

from twisted.internet import defer

from natsalon.client.errors import SalonUnreachable
from natsalon.client.probe.sockets import ProbeSocket
from natsalon.client.stunsocket import StunTimeout
from natsalon.stun import Class, Message, Method
from natsalon.stun.client import RetransmitPolicy, new_transaction_id

#: a short schedule: this only listens for an ICMP error (about 3 s in all)
CHECK_POLICY = RetransmitPolicy(rto=0.25, sends=4, last_wait=4, max_rto=1.0)


def check_salon(reactor, server, interface: str = "") -> defer.Deferred:
    """Fires True when the salon answered a Binding request, False when
    nothing came back (UDP may be filtered: the JOIN will tell), or fails
    with SalonUnreachable on an ICMP port unreachable.  Cancellable."""
    done = defer.Deferred()

    def refused(sock: ProbeSocket) -> None:
        if not done.called:
            done.errback(SalonUnreachable("nothing listens on UDP %s:%d at the salon (ICMP port unreachable)"
                                          % tuple(server)))

    sock = ProbeSocket(reactor, "salon", refused)
    port = sock.port = reactor.listenUDP(0, sock, interface=interface)
    port.connect(server[0], server[1])
    request = sock.request(Message(Method.BINDING, Class.REQUEST, new_transaction_id()), tuple(server),
                           policy=CHECK_POLICY)
    request.addCallbacks(lambda _: True, lambda f: f.trap(StunTimeout) and False)
    request.addBoth(lambda result: done.callback(result) if not done.called else None)

    def close(result):
        sock.closing = True
        if not request.called:
            request.cancel()
        port.stopListening()
        return result

    done.addBoth(close)
    return done
