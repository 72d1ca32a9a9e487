"""The link's lean command path (``LeanCommands``): replies in order, error
replies as failures, cancellation keeping the queue in step, a lost
connection failing what waits; and txredisapi's own path for the rest."""

from __future__ import annotations

import pytest
import txredisapi
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from natsalon.server.introducer.redislink import RedisProtocol, _Factory


def _proto():
    proto = _Factory(RedisProtocol, Clock(), None).buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport


def _results(d):
    out = []
    d.addBoth(out.append)
    return out


def test_replies_fire_in_the_order_sent():
    proto, transport = _proto()
    a = _results(proto.execute_command(b"GET", b"a"))
    b = _results(proto.execute_command(b"EVALSHA", b"f" * 40, 1, b"k", b"v"))
    assert transport.value() == (b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n"
                                 b"*5\r\n$7\r\nEVALSHA\r\n$40\r\n" + b"f" * 40
                                 + b"\r\n$1\r\n1\r\n$1\r\nk\r\n$1\r\nv\r\n")
    proto.dataReceived(b"$2\r\nA!\r\n*2\r\n$1\r\nx\r\n:3\r\n")
    assert a == [b"A!"]
    assert b == [[b"x", 3]]
    assert not proto.replyQueue.waiting and not proto.replyQueue.pending


def test_an_error_reply_is_a_failure():
    proto, _ = _proto()
    a = _results(proto.execute_command(b"EVALSHA", b"0" * 40, 0))
    proto.dataReceived(b"-NOSCRIPT No matching script\r\n")
    assert a[0].check(txredisapi.ResponseError)
    assert str(a[0].value).startswith("NOSCRIPT")


def test_a_cancelled_command_keeps_its_place():
    proto, _ = _proto()
    a = proto.execute_command(b"GET", b"a")
    b = _results(proto.execute_command(b"GET", b"b"))
    a_out = _results(a)
    a.cancel()
    assert a_out[0].check(defer.CancelledError)
    proto.dataReceived(b"$1\r\n1\r\n$1\r\n2\r\n")  # a's reply is dropped, b gets its own
    assert b == [b"2"]


def test_a_lost_connection_fails_what_waits():
    proto, transport = _proto()
    a = _results(proto.execute_command(b"GET", b"a"))
    transport.loseConnection()
    proto.connectionLost(txredisapi.ConnectionError("gone"))
    assert a[0].check(txredisapi.ConnectionError)
    with pytest.raises(txredisapi.ConnectionError):
        proto.execute_command(b"GET", b"a")  # not connected: txredisapi's own path


def test_keyword_options_take_txredisapi_path():
    proto, _ = _proto()
    a = _results(proto.execute_command(b"GET", b"a", post_proc=lambda v: v + b"!"))
    proto.dataReceived(b"$1\r\n1\r\n")
    assert a == [b"1!"]
