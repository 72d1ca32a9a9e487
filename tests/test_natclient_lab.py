"""`twistd -n natclient` as users run it (the systemd unit's command line),
in the NAT lab: it meets a `natsalon connect` peer through the real salon
and forwards a local UDP port both ways."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from natlab import Lab, Nat
from natlab.apps import ECHO, PINGER
from natlab.salon import start_salon

SERVER = "203.0.113.10:3478"




@pytest.mark.nat
def test_twistd_natclient_forwards_to_connect_peer(natlab: Lab, tmp_path) -> None:
    lab = natlab
    a = lab.add_site("a", Nat.RESTRICTED_CONE).hosts[0]
    b = lab.add_site("b", Nat.SYMMETRIC_RANDOM).hosts[0]
    start_salon(lab)
    secret = tmp_path / "secret"
    secret.write_text("a long random shared secret for the natclient test\n")
    secret.chmod(0o600)
    echo = a.spawn([sys.executable, "-c", ECHO], stdout=subprocess.PIPE, text=True)
    assert echo.stdout.readline().strip() == "ready"
    log = open(tmp_path / "natclient.log", "w")
    daemon = a.spawn([Lab.bin("twistd"), "-n", "--pidfile=", "natclient", "--server", SERVER,
                      "--room", "svc", "--secret-file", str(secret), "--forward", "7000",
                      "--deliver", "127.0.0.1:7001", "--keepalive", "2"],
                     stdout=log, stderr=subprocess.STDOUT, cwd=str(tmp_path))
    peer = b.spawn([Lab.bin("natsalon"), "connect", "--server", SERVER, "--room", "svc",
                    "--secret-file", str(secret), "--json", "--timeout", "30", "--forward", "7000"],
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        events = []
        while not any(e.get("event") == "forwarding" for e in events):
            line = peer.stdout.readline()
            assert line, "connect ended: %s %s" % (events, peer.stderr.read())
            events.append(json.loads(line))
        assert any(e.get("event") == "connected" and e["path"] == "direct" for e in events), events
        r = b.run([sys.executable, "-c", PINGER, "200"], capture_output=True, text=True, timeout=60)
        result = json.loads(r.stdout.strip().splitlines()[-1])
        assert result == {"sent": 200, "echoed": 200}, (result, r.stderr)
        assert daemon.poll() is None, "twistd natclient exited"
    finally:
        peer.terminate()
        daemon.terminate()
        daemon.wait(10)
        log.close()
    text = (tmp_path / "natclient.log").read_text()
    assert "Traceback" not in text, text
