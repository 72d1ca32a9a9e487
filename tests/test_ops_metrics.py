"""Prometheus metrics: the collectors read the daemons' own counters at
scrape time; the exposition passes ``promtool check metrics``; a real
``twistd -n natsalon --metrics`` serves what it counted."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
from twisted.internet import task
from twisted.web.test.requesthelper import DummyRequest

from natsalon.client.session import Phase
from natsalon.ops import metrics
from natsalon.ops.options import parse_listen
from natsalon.ops.testing import free_tcp_port, require_tool, samples, value, wait_scrape
from natsalon.server import tap

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


def promtool_check(text: str) -> None:
    promtool = require_tool("promtool", "prometheus")
    r = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def exposition(collector) -> str:
    reg = metrics.registry(collector)
    page = metrics.MetricsPage(reg)
    req = DummyRequest([b"metrics"])
    body = page.render_GET(req)
    assert req.responseHeaders.getRawHeaders(b"content-type")[0].startswith(b"text/plain")
    return body.decode()


def salon(*argv):
    opts = tap.Options()
    opts.parseOptions(["--interface", "127.0.0.1", "--port", "0", "--alt-port", "0"] + list(argv))
    return tap.makeService(opts)


@pytest.mark.parametrize("text, expected", [
    ("9478", ("127.0.0.1", 9478)),
    ("0.0.0.0:9478", ("0.0.0.0", 9478)),
    ("[::1]:9478", ("::1", 9478)),
    ("localhost:0", ("localhost", 0)),
])
def test_parse_listen(text, expected):
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["", "x", ":9478", "::1:9478", "1.2.3.4:70000", "[::1]9478"])
def test_parse_listen_refuses(text):
    with pytest.raises(ValueError):
        parse_listen(text)


def test_salon_counters_are_read_at_scrape_time():
    svc = salon("--turn-secret", "s")
    clock = task.Clock()
    c = metrics.SalonCollector(svc, clock)
    stats = svc.state.stats
    stats.update({"answered": 7, "answered_400": 2, "dropped_malformed": 3, "rate_limited": 4, "join_waiting": 2,
                  "join_introduced": 1, "introductions_pushed": 1, "members_expired": 5, "leaves": 3,
                  "leave_refused": 1, "turn_401": 6,
                  "turn_486": 2, "turn_user_quota": 1, "turn_source_quota": 1, "turn_allocations": 2})
    core = svc.turn.core
    core.to_peer_packets, core.to_client_packets, core.to_client_bytes = 3, 4, 440
    core.ended_bytes = 740  # the credit used, both ways: 300 of it to peers
    core.dropped_bandwidth, core.dropped_quota = 5, 6
    svc.protocols[0].fast_answers = 10  # not folded yet: the scrape folds it
    from natsalon.stun import Class, Method

    svc.state.messages[(Method.JOIN, Class.REQUEST)] += 3
    svc.state.messages[(0x3FF, Class.INDICATION)] += 2  # a method nobody defines: "other"
    s = samples(exposition(c))
    assert value(s, "natsalon_answers_total", code="success") == 17
    assert value(s, "natsalon_answers_total", code="400") == 2
    assert value(s, "natsalon_messages_total", method="binding", **{"class": "request"}) == 10
    assert value(s, "natsalon_messages_total", method="join", **{"class": "request"}) == 3
    assert value(s, "natsalon_messages_total", method="other", **{"class": "indication"}) == 2
    assert value(s, "natsalon_dropped_total", reason="malformed") == 3
    assert value(s, "natsalon_dropped_total", reason="rate_limited") == 4
    assert value(s, "natsalon_joins_total", outcome="introduced") == 1
    assert value(s, "natsalon_introductions_total") == 1
    assert value(s, "natsalon_members_expired_total") == 5
    assert value(s, "natsalon_leaves_total", result="accepted") == 3
    assert value(s, "natsalon_leaves_total", result="refused") == 1
    assert value(s, "natsalon_turn_errors_total", code="401") == 6
    assert value(s, "natsalon_turn_refusals_total", reason="user_quota") == 1
    assert value(s, "natsalon_turn_refusals_total", reason="source_quota") == 1
    assert value(s, "natsalon_turn_errors_total", code="486") == 2
    assert value(s, "natsalon_turn_packets_total", direction="client_to_peer") == 3
    assert value(s, "natsalon_turn_packets_total", direction="peer_to_client") == 4
    assert value(s, "natsalon_turn_bytes_total", direction="client_to_peer") == 300
    assert value(s, "natsalon_turn_bytes_total", direction="peer_to_client") == 440
    assert value(s, "natsalon_turn_relayed_bytes_total") == 740
    assert value(s, "natsalon_turn_limit_drops_total", limit="bandwidth") == 5
    assert value(s, "natsalon_turn_limit_drops_total", limit="byte_quota") == 6
    assert value(s, "natsalon_turn_allocations_created_total") == 2
    assert value(s, "natsalon_rate_limit") == 200
    assert value(s, "natsalon_turn_enabled") == 1
    assert value(s, "natsalon_events_total", event="join_waiting") == 2
    assert value(s, "natsalon_build_info", version="0.1.0") == 1
    assert value(s, "process_start_time_seconds") is not None
    # another scrape reads the counters again (nothing is cached)
    stats["answered"] += 1
    assert value(exposition(c), "natsalon_answers_total", code="success") == 18


def test_salon_exposition_passes_promtool():
    svc = salon("--turn-secret", "s")
    svc.state.stats.update({"answered": 1, "turn_401": 1, "join_waiting": 1})
    totals = metrics.TurnTotals(task.Clock())
    promtool_check(exposition(metrics.SalonCollector(svc, task.Clock(), totals)))


def test_turn_lifetime_histogram_and_totals():
    clock = task.Clock()
    totals = metrics.TurnTotals(clock)
    for lived in (5, 50, 4000, 10 ** 6):
        clock.advance(lived)
        totals.ended(SimpleNamespace(started=clock.seconds() - lived, relayed_bytes=100, dropped=1))
    s = samples(totals_exposition(totals))
    name = "natsalon_turn_allocation_lifetime_seconds"
    assert value(s, name + "_bucket", le="10.0") == 1
    assert value(s, name + "_bucket", le="60.0") == 2
    assert value(s, name + "_bucket", le="7200.0") == 3
    assert value(s, name + "_bucket", le="+Inf") == 4
    assert value(s, name + "_count") == 4
    assert value(s, name + "_sum") == 5 + 50 + 4000 + 10 ** 6
    assert (totals.relayed_bytes, totals.dropped) == (400, 4)


def totals_exposition(totals) -> str:
    class One:
        def collect(self):
            yield totals.histogram("natsalon_turn_allocation_lifetime_seconds", "test")

    return exposition(One())


def test_turn_core_reports_ended_allocations_to_the_collector():
    svc = salon("--turn-secret", "s")
    assert svc.turn.core.on_delete, "attach_salon registers the totals"


def fake_client(phase=Phase.CONNECTED, path=True):
    clock = task.Clock()
    clock.advance(100)
    p = SimpleNamespace(kind="direct", rtt=0.012, address=("198.51.100.7", 4000)) if path else None
    conn = SimpleNamespace(path=p, sent=5, received=6, rejected=1, sent_bytes=500, received_bytes=600,
                           puncher=SimpleNamespace(last_heard=lambda addr: 97.5))
    core = SimpleNamespace(phase=phase, connects=3, failures=0)
    fwd = SimpleNamespace(protocol=SimpleNamespace(to_peer=5, from_peer=6, dropped=2))
    svc = SimpleNamespace(client=SimpleNamespace(core=core, connection=conn), forward_port=fwd, running=True,
                          reactor=clock)
    return svc, clock


def test_client_collector():
    svc, clock = fake_client()
    events = metrics.EventCounts()
    for e in ("joined", "waiting", "joined", "path-lost", "joined", "upgraded"):
        events({"event": e, "peer": "198.51.100.7:4000"})
    text = exposition(metrics.ClientCollector(svc, events, clock))
    s = samples(text)
    assert value(s, "natclient_state", state="connected") == 1
    assert sum(value(s, "natclient_state", state=p.value) for p in Phase) == 1
    assert value(s, "natclient_path", kind="direct") == 1 and value(s, "natclient_path", kind="lan") == 0
    assert value(s, "natclient_rtt_seconds") == pytest.approx(0.012)
    assert value(s, "natclient_peer_silence_seconds") == pytest.approx(2.5)
    assert value(s, "natclient_payload_bytes_total", direction="sent") == 500
    assert value(s, "natclient_frames_total", direction="received") == 6
    assert value(s, "natclient_frames_rejected_total", reason="auth_or_source") == 1
    assert value(s, "natclient_forwarded_datagrams_total", direction="to_peer") == 5
    assert value(s, "natclient_repunches_total") == 2
    assert value(s, "natclient_rejoins_total") == 2
    assert value(s, "natclient_upgrades_total") == 1
    assert value(s, "natclient_events_total", event="path-lost") == 1
    assert "198.51.100.7" not in text  # no peer address in any label
    promtool_check(text)


def test_client_collector_before_the_client_opens():
    svc, clock = fake_client()
    svc.client, svc.forward_port = None, None
    s = samples(exposition(metrics.ClientCollector(svc, metrics.EventCounts(), clock)))
    assert value(s, "natclient_state", state="idle") == 1
    assert value(s, "natclient_rtt_seconds") is None


def test_event_names_are_bounded():
    events = metrics.EventCounts()
    for n in range(1000):
        events({"event": "e%d" % n})
    assert len(events.counts) <= metrics.EventCounts.LIMIT + 1


def binding_request() -> bytes:
    return struct.pack("!HHI", 1, 0, 0x2112A442) + os.urandom(12)


def free_udp_ports(n: int):
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_twistd_natsalon_serves_metrics(tmp_path):
    stun, alt = free_udp_ports(2)
    mport = free_tcp_port()
    proc = subprocess.Popen([TWISTD, "-n", "--pidfile=", "natsalon", "--interface", "127.0.0.1", "--port", str(stun),
                             "--alt-port", str(alt), "--metrics", str(mport)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        url = "http://127.0.0.1:%d/metrics" % mport
        wait_scrape(url, proc=proc)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(2)
        for _ in range(5):
            s.sendto(binding_request(), ("127.0.0.1", stun))
            s.recvfrom(2048)
        s.sendto(b"\x00\x01\x00\x08" + b"\x21\x12\xa4\x42" + b"x" * 12, ("127.0.0.1", stun))  # length lies
        time.sleep(0.2)
        text = wait_scrape(url)
        assert value(text, "natsalon_answers_total", code="success") == 5
        assert value(text, "natsalon_dropped_total", reason="malformed") == 1
        assert value(text, "natsalon_sockets") == 2
        assert value(text, "process_resident_memory_bytes") > 0
        assert "127.0.0.1" not in "".join(line for line in text.splitlines() if not line.startswith("#"))
        promtool_check(text)
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0].decode()
    assert "metrics on http://127.0.0.1:%d/metrics" % mport in out
    assert "Traceback" not in out


def test_metrics_port_in_use_is_one_line(tmp_path):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    try:
        r = subprocess.run([TWISTD, "-n", "--pidfile=", "natsalon", "--interface", "127.0.0.1", "--port", "0",
                            "--alt-port", "0", "--metrics", str(port)], capture_output=True, text=True,
                           cwd=tmp_path, timeout=60)
    finally:
        busy.close()
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert "cannot listen for metrics on 127.0.0.1:%d" % port in out
    assert "Traceback" not in out
