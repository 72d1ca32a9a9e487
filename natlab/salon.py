"""Start the real ``twistd -n natsalon`` daemon on the lab's server host.

    proc = start_salon(lab)            # two IPs, ports 3478/3479
    ... clients use "203.0.113.10:3478" ...

The process is spawned through ``Host.spawn``, so the lab ends it at close.
``start_salon`` returns once the daemon answers a Binding request on every
socket (checked from the server namespace with a raw stdlib client), or
raises :class:`natlab.LabError` with the daemon's output.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from typing import Sequence

from .lab import Lab, LabError

_READY_CHECK = r"""
import os, socket, struct, sys
addrs = [(a.rsplit(":", 1)[0].strip("[]"), int(a.rsplit(":", 1)[1])) for a in sys.argv[1:]]
for host, port in addrs:
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(0.2)
    txid = os.urandom(12)
    s.sendto(struct.pack("!HHI", 1, 0, 0x2112A442) + txid, (host, port))
    try:
        data, _ = s.recvfrom(2048)
    except OSError:
        sys.exit(1)
    if data[8:20] != txid:
        sys.exit(1)
"""


def start_salon(lab: Lab, extra_args: Sequence[str] = (), port: int = 3478, alt_port: int = 3479,
                two_ips: bool = True, timeout: float = 20.0, ipv6: bool = False) -> subprocess.Popen:
    """``ipv6``: serve IPv6 too, on the server's IPv6 addresses (an RFC 5780
    grid per family; the lab gets IPv6 if it has none yet)."""
    ip1, ip2 = lab.server.ips[0], lab.server.ips[1]
    argv = [Lab.bin("twistd"), "-n", "--pidfile=", "natsalon", "--interface", ip1,
            "--port", str(port), "--alt-port", str(alt_port)]
    if two_ips:
        argv += ["--alt-ip", ip2]
    grids = [(ip1, ip2)]
    if ipv6:
        lab.enable_ipv6()
        v6_1, v6_2 = lab.server.ips6[0], lab.server.ips6[1]
        argv += ["--interface", v6_1] + (["--alt-ip", v6_2] if two_ips else [])
        grids.append(("[%s]" % v6_1, "[%s]" % v6_2))
    argv += list(extra_args)
    log = tempfile.TemporaryFile()
    proc = lab.server.spawn(argv, stdout=log, stderr=subprocess.STDOUT)
    sockets = ["%s:%d" % (ip, p) for ips in grids for ip in (ips if two_ips else ips[:1]) for p in (port, alt_port)]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        if lab.server.run([sys.executable, "-c", _READY_CHECK] + sockets, timeout=10).returncode == 0:
            proc.salon_log = log
            return proc
        time.sleep(0.1)
    log.seek(0)
    raise LabError("natsalon did not come up on %s:\n%s" % (sockets, log.read().decode(errors="replace")))
