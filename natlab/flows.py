"""Background flows through a site's NAT: a host that opens ``rate`` new
UDP flows per second (a fresh socket each, one datagram to a public
address), so a sequential NAT hands out ports in between those of the
host under test.

    proc = start_flows(site.hosts[1], rate=20)

The process is spawned through ``Host.spawn``, so the lab ends it at close.
"""
from __future__ import annotations

import subprocess
import sys

from .lab import THIRD_IP, Host

_FLOWS = r"""
import socket, sys, time
host, port, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
print("flowing", flush=True)
n, start = 0, time.monotonic()
while True:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(b"flow %d" % n, (host, port))
    s.close()
    n += 1
    time.sleep(max(0.0, start + n / rate - time.monotonic()))
"""


def start_flows(host: Host, rate: float = 20.0, to: str = THIRD_IP, port: int = 9) -> subprocess.Popen:
    """Start ``rate`` new flows per second from ``host`` to ``to:port``;
    returns once the first is sent."""
    proc = host.spawn([sys.executable, "-c", _FLOWS, to, str(port), str(rate)], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    if "flowing" not in line:
        raise RuntimeError("background flows did not start on %s" % host.name)
    return proc
