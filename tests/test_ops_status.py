"""A real salon (with TURN) and two real ``twistd natclient`` on loopback
that meet through it: their scrapes pass promtool, ``natsalon status``
reads them, and every metric the Grafana dashboard queries is in them."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from natsalon.cli import main as cli_main
from natsalon.cli.status import metrics_url
from natsalon.ops import status
from natsalon.ops.testing import free_tcp_port, require_tool, samples, value, wait_scrape

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
DASHBOARD = Path(__file__).resolve().parent.parent / "contrib" / "grafana" / "natsalon.json"

#: PromQL words that are not metric names
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                "offset", "inf", "nan"}


def metric_names(expr: str):
    """The metric names a PromQL expression reads."""
    e = re.sub(r'"[^"]*"', '""', expr)
    e = re.sub(r"label_values\(\s*([a-zA-Z_:][\w:]*)[^)]*\)", r"\1", e)
    e = re.sub(r"\{[^}]*\}", "", e)
    e = re.sub(r"\[[^\]]*\]", "", e)
    e = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", e)
    names = set()
    for m in re.finditer(r"(?<![\w$.])([a-zA-Z_:][\w:]*)\s*(\()?", e):
        if m.group(2) is None and m.group(1).lower() not in PROMQL_WORDS:
            names.add(m.group(1))
    return names


def dashboard_exprs():
    dash = json.loads(DASHBOARD.read_text())
    exprs = []

    def walk(panels):
        for p in panels:
            exprs.extend(t["expr"] for t in p.get("targets", []))
            walk(p.get("panels", []))

    walk(dash["panels"])
    for v in dash["templating"]["list"]:
        q = v.get("query")
        if isinstance(q, dict):
            exprs.append(q["query"])
    return exprs


def test_metric_names_of_an_expression():
    assert metric_names('histogram_quantile(0.9, sum by (le) (rate(a_bucket{x="y"}[1h])))') == {"a_bucket"}
    assert metric_names('sum(rate(a_total{instance=~"$salon"}[$__rate_interval])) * 60 / b') == {"a_total", "b"}
    assert metric_names("label_values(natsalon_build_info, instance)") == {"natsalon_build_info"}
    assert metric_names("max by (instance, state) (natclient_state) == 1") == {"natclient_state"}


def test_metrics_url():
    assert metrics_url("9479") == "http://127.0.0.1:9479/metrics"
    assert metrics_url("host:9478") == "http://host:9478/metrics"
    assert metrics_url("http://h:1/m") == "http://h:1/m"


def test_status_refuses_what_is_not_ours():
    with pytest.raises(ValueError):
        status.report("# HELP x y\n# TYPE x gauge\nx 1\n")


def test_status_of_an_unreachable_daemon(capsys):
    port = free_tcp_port()
    assert cli_main(["status", "--metrics", str(port), "--timeout", "2"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("natsalon status: error: cannot read http://127.0.0.1:%d/metrics" % port)
    assert err.count("\n") == 1


def free_udp_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture
def daemons(tmp_path):
    procs = []

    def spawn(argv, name):
        log = open(tmp_path / (name + ".log"), "w")
        p = subprocess.Popen([TWISTD, "-n", "--pidfile="] + argv, stdout=log, stderr=subprocess.STDOUT,
                             cwd=tmp_path)
        procs.append(p)
        return p

    yield spawn
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def wait_value(url, name, want, timeout=90.0, **labels):
    deadline = time.monotonic() + timeout
    got = None
    while time.monotonic() < deadline:
        got = value(wait_scrape(url), name, **labels)
        if got == want:
            return
        time.sleep(0.2)
    raise AssertionError("%s%s is %r, not %r" % (name, labels, got, want))


def test_real_daemons_status_and_dashboard(tmp_path, daemons, capsys):
    stun, alt = free_udp_port(), free_udp_port()
    ports = [free_tcp_port() for _ in range(3)]
    secret = tmp_path / "secret"
    secret.write_text("a long shared secret for the status test\n")
    secret.chmod(0o600)
    daemons(["natsalon", "--interface", "127.0.0.1", "--port", str(stun), "--alt-port", str(alt),
             "--metrics", str(ports[0]), "--turn-secret", "turn-secret", "--relay-ports", "50000-50100"], "salon")
    urls = ["http://127.0.0.1:%d/metrics" % p for p in ports]
    wait_scrape(urls[0])
    for n in (1, 2):
        cfg = tmp_path / ("client%d.toml" % n)
        cfg.write_text('server = "127.0.0.1:%d"\nroom = "status-test"\nsecret-file = "%s"\nmetrics = %d\n'
                       'interface = "127.0.0.1"\nno-lan = true\n' % (stun, secret, ports[n]))
        daemons(["natclient", "--config", str(cfg)], "client%d" % n)
    for url in urls[1:]:
        wait_value(url, "natclient_state", 1, state="connected")
    salon_text = wait_scrape(urls[0])
    client_texts = [wait_scrape(u) for u in urls[1:]]
    promtool = require_tool("promtool", "prometheus")
    for text in [salon_text] + client_texts:
        r = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
    assert value(salon_text, "natsalon_joins_total", outcome="introduced") >= 1
    assert value(salon_text, "natsalon_introductions_total") == 1

    # natsalon status, both kinds, table and JSON
    assert cli_main(["status", "--metrics", str(ports[0])]) == 0
    table = capsys.readouterr().out
    assert table.startswith("daemon ") and "salon" in table and "introductions  1" in table and "TURN" in table
    assert cli_main(["status", "--metrics", urls[1], "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["daemon"] == "client" and r["state"] == "connected" and r["path"] in ("direct", "lan")
    assert r["rtt_ms"] is not None and r["uptime_s"] > 0
    assert cli_main(["status", "--metrics", urls[2]]) == 0
    assert "connected" in capsys.readouterr().out

    # every metric the dashboard reads is exported
    exported = set()
    for text in [salon_text] + client_texts:
        exported |= {name for name, _ in samples(text)}
    wanted = set()
    for expr in dashboard_exprs():
        wanted |= metric_names(expr)
    assert wanted, "no expression found in the dashboard"
    missing = sorted(wanted - exported)
    assert not missing, "dashboard queries metrics nobody exports: %s" % missing
